"""The scripted agent on its own: script sources, conflict strategies, the CLI entry."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from makima.cli.main import app
from makima_testing.scripted import EXIT_BAD_SCRIPT, Script, load_script, run_script

from .conftest import git


@pytest.fixture
def conflicted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A work tree stopped in a merge with a conflict in f.txt (ours=left, theirs=right)."""
    repo = tmp_path / "repo"
    git("init", "-q", "-b", "main", str(repo), cwd=tmp_path)
    (repo / "f.txt").write_text("base\n")
    git("add", "-A", cwd=repo)
    git("commit", "-q", "-m", "base", cwd=repo)
    git("checkout", "-q", "-b", "other", cwd=repo)
    (repo / "f.txt").write_text("right\n")
    git("commit", "-q", "-am", "right", cwd=repo)
    git("checkout", "-q", "main", cwd=repo)
    (repo / "f.txt").write_text("left\n")
    git("commit", "-q", "-am", "left", cwd=repo)
    with pytest.raises(Exception):  # noqa: B017 - the merge stops with a conflict
        git("merge", "other", cwd=repo)
    monkeypatch.chdir(repo)
    return repo


CONFLICT_ENV = {"MAKIMA_AGENT_MODE": "conflict", "MAKIMA_CONFLICT_FILES": "f.txt", "MAKIMA_STEP": "s"}


@pytest.mark.parametrize(
    ("conflict", "expected"),
    [
        ({"strategy": "ours"}, "left\n"),
        ({"strategy": "theirs"}, "right\n"),
        ({"strategy": "union"}, "left\nright\n"),
        ({"strategy": "content", "files": {"f.txt": "chosen\n"}}, "chosen\n"),
    ],
)
def test_conflict_strategies(conflicted: Path, conflict: dict[str, object], expected: str) -> None:
    script = Script.model_validate({"steps": {"s": {"conflict": conflict}}})
    assert run_script(script, CONFLICT_ENV, conflicted) == 0
    assert (conflicted / "f.txt").read_text() == expected
    assert git("diff", "--name-only", "--diff-filter=U", cwd=conflicted) == ""  # staged


def test_leave_is_the_default(conflicted: Path) -> None:
    assert run_script(Script(), CONFLICT_ENV, conflicted) == 0
    assert "<<<<<<<" in (conflicted / "f.txt").read_text()
    assert git("diff", "--name-only", "--diff-filter=U", cwd=conflicted) == "f.txt"


def test_script_sources(tmp_path: Path) -> None:
    file = tmp_path / "s.yaml"
    file.write_text(yaml.safe_dump({"steps": {"a": {"files": {"x": "1"}}}}))
    assert "a" in load_script(file, {}).steps
    assert "b" in load_script(None, {"MAKIMA_AGENT_SCRIPT": "steps: {b: {}}"}).steps
    assert "a" in load_script(None, {"MAKIMA_AGENT_SCRIPT_FILE": str(file)}).steps


def test_cli_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    script = tmp_path / "s.yaml"
    script.write_text("steps:\n  a:\n    files: {out/x.txt: hello}\n    output: [working]\n")
    runner = CliRunner()
    res = runner.invoke(app, ["agent", "scripted", "--script", str(script)], env={"MAKIMA_STEP": "a"}, input="")
    assert res.exit_code == 0, res.output
    assert "working" in res.output
    assert (tmp_path / "out" / "x.txt").read_text() == "hello"
    res = runner.invoke(app, ["agent", "scripted"], env={"MAKIMA_AGENT_SCRIPT": "steps: {a: {typo: 1}}"}, input="")
    assert res.exit_code == EXIT_BAD_SCRIPT and "typo" in res.output


def test_an_invalid_plan_is_reported_without_a_traceback(tmp_path: Path) -> None:
    """Issue 15 item 7: the agent's last lines become the task's status message; a bad step
    name in the script must read as a problem, not as a pydantic traceback."""
    import subprocess
    import sys

    script = yaml.safe_dump({"plan": [{"name": "Bad_Name", "title": "t"}]})
    env = {"MAKIMA_AGENT_SCRIPT": script, "MAKIMA_TASK_KIND": "planning", "MAKIMA_GENERATION": "1", "PATH": ""}
    done = subprocess.run(
        [sys.executable, "-m", "makima_testing.scripted"], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert done.returncode == EXIT_BAD_SCRIPT, done.stderr
    assert "Traceback" not in done.stderr and "pydantic" not in done.stderr
    assert "step 0.name" in done.stderr, done.stderr
