"""checkov, pinned, in an environment of its own, and a scan of the chart and the Dockerfile.

checkov cannot share the test environment: it pins `packaging<24` and (through boto3's
botocore) `python-dateutil<3`, which would hold back pytest and the kubernetes client the
operator ships with. So it is installed, once per machine, into its own virtualenv under
`~/.cache/makima/checkov/<version>/` (elsewhere: MAKIMA_CHECKOV_DIR), from the requirement in
pyproject.toml's `checkov` extra, and run as a separate process. It runs offline: no
download of external checks, no mapping fetched from its vendor's API.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


class Unavailable(Exception):
    """checkov could not be installed here (no registry reachable, ...)."""


def requirement() -> str:
    """The pinned requirement, e.g. "checkov==3.3.30" (pyproject.toml, extra `checkov`)."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    (req,) = extras["checkov"]
    assert req.startswith("checkov==") and req.count("=") == 2, f"checkov must be pinned exactly: {req!r}"
    return str(req)


def home() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    version = requirement().split("==", 1)[1]
    return Path(os.environ.get("MAKIMA_CHECKOV_DIR") or base / "makima" / "checkov") / version


def install() -> Path:
    """The python of checkov's environment, installing it first if needed (serialised by a lock)."""
    target = home()
    python = target / "venv" / "bin" / "python"
    done = target / "venv" / ".installed"
    if done.is_file():
        return python
    target.mkdir(parents=True, exist_ok=True)
    with (target / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if done.is_file():
            return python
        staging = target / ".staging"
        shutil.rmtree(staging, ignore_errors=True)
        steps = [
            [sys.executable, "-m", "venv", str(staging)],
            [str(staging / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", requirement()],
        ]
        for step in steps:
            result = subprocess.run(step, capture_output=True, text=True, timeout=900)
            if result.returncode != 0:
                shutil.rmtree(staging, ignore_errors=True)
                raise Unavailable(f"{' '.join(step[-2:])} failed:\n{result.stderr[-2000:]}")
        (staging / ".installed").write_text(requirement() + "\n")
        shutil.rmtree(target / "venv", ignore_errors=True)
        os.replace(staging, target / "venv")  # run as `python -m checkov.main`: no script paths to fix
    return python


@dataclass(frozen=True)
class Finding:
    check_id: str
    name: str  # the check's title
    scenario: str  # the directory scanned: a values scenario, or "dockerfile"
    resource: str  # Kind/name (namespace dropped), or the Dockerfile's instruction


def scan(python: Path, dirs: dict[str, Path], timeout: float = 300) -> tuple[list[Finding], dict[str, int]]:
    """Run checkov (kubernetes and dockerfile frameworks) over each directory as its own graph
    (a NetworkPolicy of one scenario must not cover another's pods). Returns the failed checks
    and, per scenario, the number of passed checks (0 would mean nothing was scanned there)."""
    cmd = [str(python), "-m", "checkov.main", "--framework", "kubernetes", "dockerfile"]
    for path in dirs.values():
        cmd += ["-d", str(path)]
    cmd += ["--output", "json", "--compact", "--skip-download"]
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE", "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if result.returncode not in (0, 1):  # 1: some check failed
        raise AssertionError(f"checkov exited {result.returncode}:\n{result.stderr[-4000:]}")
    by_dir = {path.resolve(): name for name, path in dirs.items()}
    failed: set[Finding] = set()
    passed: dict[str, int] = dict.fromkeys(dirs, 0)
    # One JSON document per directory (a list when more than one framework found something);
    # each report repeats the results of the directories before it, hence the sets.
    seen_passed: set[tuple[str, str, str]] = set()
    for report in _reports(result.stdout):
        assert report["summary"]["parsing_errors"] == 0, report["summary"]
        for check in report["results"]["failed_checks"]:
            scenario = by_dir[Path(check["file_abs_path"]).parent.resolve()]
            failed.add(Finding(check["check_id"], check["check_name"], scenario, _resource(report, check)))
        for check in report["results"]["passed_checks"]:
            scenario = by_dir[Path(check["file_abs_path"]).parent.resolve()]
            key = (scenario, check["check_id"], check["resource"])
            if key not in seen_passed:
                seen_passed.add(key)
                passed[scenario] += 1
    return sorted(failed, key=lambda f: (f.check_id, f.resource, f.scenario)), passed


def _reports(stdout: str) -> list[dict[str, Any]]:
    decoder, at, reports = json.JSONDecoder(), 0, []
    while (at := _skip_space(stdout, at)) < len(stdout):
        doc, at = decoder.raw_decode(stdout, at)
        reports.extend(doc if isinstance(doc, list) else [doc])
    return reports


def _skip_space(text: str, at: int) -> int:
    while at < len(text) and text[at].isspace():
        at += 1
    return at


def _resource(report: dict[str, Any], check: dict[str, Any]) -> str:
    if report["check_type"] == "kubernetes":
        kind, _namespace, name = check["resource"].split(".", 3)[:3]  # Kind.namespace.name[.labels…]
        return f"{kind}/{name}"
    instruction = str(check["resource"]).rsplit(".", 1)[-1]  # "/Dockerfile.FROM", "/Dockerfile."
    return f"Dockerfile {instruction}".strip()
