"""`makima demo` in-process: the quickstart ends with a pull request in its bare repository.

The test's PostgreSQL schema is passed as `--database-url` so no second server starts; the
rest (sandbox, operator, seeded bare repository, summary) is what `make demo` runs.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import re
import signal
from pathlib import Path
from typing import Any

import pytest
import yaml
from rich.console import Console
from typer.testing import CliRunner

from makima.cli.demo.cluster import connect
from makima.cli.demo.options import DemoOptions
from makima.cli.demo.run import run_demo
from makima.cli.main import app
from tests.support.wait import eventually

from .conftest import OperatorFactory, git

STEP_FILES = (
    "greeter/__init__.py",
    "greeter/core.py",
    "greeter/__main__.py",
    "tests/test_greeter.py",
    "docs/greeter.md",
    "CHANGELOG.md",
)


async def test_demo_ends_with_a_pull_request(pg_dsn: str, tmp_path: Path) -> None:
    out = io.StringIO()
    console = Console(file=out, width=120, soft_wrap=True)
    root = logging.getLogger()
    handlers_before, kubeconfig_before = root.handlers[:], os.environ.get("KUBECONFIG")

    result = await run_demo(DemoOptions(state_dir=tmp_path / "state", database_url=pg_dsn, live=False), console)

    text = out.getvalue()
    assert result.exit_code == 0, text
    assert result.directive["status"]["phase"] == "Completed"
    assert result.elapsed < 120

    # The pull request is recorded in the demo's bare repository, on a branch holding every step's file.
    repo = tmp_path / "state" / "origin.git"
    assert result.repo == repo
    assert git("--git-dir", str(repo), "for-each-ref", "refs/makima/pulls/1/meta"), text
    branch = result.directive["status"]["pullRequest"]["branch"]
    files = git("--git-dir", str(repo), "ls-tree", "-r", "--name-only", branch).splitlines()
    assert set(STEP_FILES) <= set(files), files
    assert {"README.md", "pyproject.toml", "hello/__init__.py"} <= set(files)  # the seed project is the base

    # The summary names the pull request, its branch, the diffstat and the kubectl commands.
    assert "#1 Add a greeter module with tests and docs" in text
    assert f"{repo}#pull/1" in text
    assert f"{branch} → main" in text
    assert "6 files changed" in text
    assert "kubectl get directives" in text and "kubectl describe directive greeter" in text
    assert "as above" not in text  # piped (not live): the summary does not point at a tree it never drew
    # The operator logged to its file, not to the console, and the demo put logging and KUBECONFIG back.
    assert "Handler" not in text
    assert (tmp_path / "state" / "operator.log").stat().st_size > 0
    assert root.handlers == handlers_before
    assert os.environ.get("KUBECONFIG") == kubeconfig_before


async def test_demo_times_out_with_the_directive_status(pg_dsn: str, tmp_path: Path) -> None:
    out = io.StringIO()
    opts = DemoOptions(state_dir=tmp_path / "state", database_url=pg_dsn, live=False, timeout=0.5)

    result = await run_demo(opts, Console(file=out, width=120, soft_wrap=True))

    text = out.getvalue()
    assert result.exit_code == 1, text
    assert "no Completed phase within 0.5 s (--timeout)" in text
    assert "phase:" in text
    assert f"operator log: {tmp_path / 'state' / 'operator.log'}" in text


async def test_cluster_mode_applies_the_example_where_kubeconfig_points(
    start_operator: OperatorFactory, origin: Path, tmp_path: Path
) -> None:
    """--cluster starts nothing: here the "cluster" is a sandbox with the CRDs and an operator."""
    await start_operator()  # also points KUBECONFIG at the sandbox
    out = io.StringIO()
    opts = DemoOptions(state_dir=tmp_path / "demo", cluster=True, repo_url=f"file://{origin}", live=False)

    result = await run_demo(opts, Console(file=out, width=120, soft_wrap=True))

    text = out.getvalue()
    assert result.exit_code == 0, text
    assert result.repo == origin
    assert "PostgreSQL" not in text and "sandbox cluster" not in text  # nothing was started
    assert f"{origin}#pull/1" in text and "6 files changed" in text
    assert "export KUBECONFIG" not in text  # the person's own cluster: no kubeconfig to hand out
    assert not (tmp_path / "demo" / "origin.git").exists()


def test_cluster_mode_needs_a_repository_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "nowhere"))
    result = CliRunner().invoke(app, ["demo", "--cluster", "--state-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "--cluster needs --repo-url" in result.output


def _exported(pasted: list[str]) -> dict[str, str]:
    """The `export` lines, as a shell would evaluate them (`$(cat FILE)` included)."""
    env: dict[str, str] = {}
    for line in pasted:
        if line.startswith("export "):
            key, value = line.removeprefix("export ").split("=", 1)
            if value.startswith("$(cat "):
                value = Path(value.removeprefix("$(cat ").removesuffix(")")).read_text().strip()
            env[key] = value
    return env


async def test_demo_keep_prints_lines_that_work_as_written(pg_dsn: str, tmp_path: Path) -> None:
    """`--keep`: the pasted lines work: kubectl, `makima logs`, and a second directive."""
    out = io.StringIO()
    state = tmp_path / "state"
    opts = DemoOptions(state_dir=state, database_url=pg_dsn, live=False, keep=True)
    demo = asyncio.create_task(run_demo(opts, Console(file=out, width=120, soft_wrap=True)))
    await eventually(lambda: "Press Ctrl-C" in out.getvalue() or demo.done(), "the demo keeps running", 180)
    assert not demo.done(), out.getvalue()
    try:
        text = out.getvalue()
        assert "the same with kubectl" not in text  # no empty header: the lines come under "keep running"
        assert "as above" not in text  # not live: no tree was drawn above
        pasted = [line.strip() for line in text.split("keep running", 1)[1].splitlines()]
        env = _exported(pasted)
        assert set(env) == {"KUBECONFIG", "MAKIMA_API_URL", "MAKIMA_READER_TOKEN"}
        assert env["MAKIMA_READER_TOKEN"] not in text  # the token itself is not printed
        assert ((state / "reader-token").stat().st_mode & 0o077) == 0

        logs = next(line for line in pasted if line.startswith("makima logs"))
        args = logs.split("#")[0].split()[1:]
        result = await asyncio.to_thread(CliRunner().invoke, app, args, env=env)
        assert result.exit_code == 0, result.output
        assert re.search(r"^\d\d:\d\d:\d\d  output    ", result.output, re.M), result.output
        assert re.search(r"^\d\d:\d\d:\d\d  result    succeeded", result.output, re.M), result.output

        apply = next(line for line in pasted if line.startswith("kubectl apply -f "))
        second = Path(apply.split("#")[0].split()[-1])
        body = yaml.safe_load(await asyncio.to_thread(second.read_text))
        assert body["metadata"]["name"] == "greeter-2"
        assert body["spec"]["repository"]["url"] == f"file://{state / 'origin.git'}"
        kube = connect(env["KUBECONFIG"])
        try:
            await asyncio.to_thread(kube.create_directive, "default", body)

            async def second_directive() -> dict[str, Any] | None:
                return await asyncio.to_thread(kube.get_directive, "default", "greeter-2")

            async def planned() -> bool:
                phase = ((await second_directive()) or {}).get("status", {}).get("phase")
                return phase in ("Executing", "Completing", "Completed")

            # a placeholder URL would pause here instead
            await eventually(planned, "the second directive planned", 180, 0.2, second_directive)
        finally:
            kube.close()
    finally:
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C, as the person would
        result_code = (await asyncio.wait_for(demo, 120)).exit_code
    assert result_code == 0, out.getvalue()
