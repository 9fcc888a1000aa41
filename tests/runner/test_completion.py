"""Completion: directive branch, merges, local pull request; re-completion merges only new branches."""

from __future__ import annotations

import json
from pathlib import Path

from makima.core.protocol import Outcome
from makima.dataplane.runner.run import run_task

from .conftest import completion_spec, files_on, git, scripted_agent, step_spec
from .doubles import RecordingReporter

SCRIPT = {
    "steps": {
        "a": {"files": {"a.txt": "a\n"}},
        "b": {"files": {"b.txt": "b\n"}},
        "c": {"files": {"c.txt": "c\n"}},
        "left": {"files": {"shared.txt": "line 1\nleft\nline 3\n"}},
        "right": {"files": {"shared.txt": "line 1\nright\nline 3\n"}},
    },
    "conflict": {"strategy": "union"},
}


async def _steps(remote: Path, tmp_path: Path, *names: str, start_from: str | None = None) -> None:
    for name in names:
        spec = step_spec(remote, name, scripted_agent(SCRIPT), start_from=start_from)
        res = await run_task(spec, RecordingReporter(), tmp_path / name)
        assert res.outcome == Outcome.SUCCEEDED, res.message


async def _complete(remote: Path, tmp_path: Path, merge: list[str], generation: int, reporter: RecordingReporter):  # type: ignore[no-untyped-def]
    spec = completion_spec(remote, merge, scripted_agent(SCRIPT), generation=generation)
    return await run_task(spec, reporter, tmp_path / f"completion-{generation}")


def _merged_branches(remote: Path) -> list[str]:
    return git("log", "--merges", "--format=%s", "--reverse", "makima/demo", cwd=remote).splitlines()


async def test_completion_then_recompletion(remote: Path, tmp_path: Path, reporter: RecordingReporter) -> None:
    await _steps(remote, tmp_path, "a", "b")
    result = await _complete(remote, tmp_path, ["makima/step-a", "makima/step-b"], 1, reporter)
    assert result.outcome == Outcome.SUCCEEDED, result.message
    assert result.branch == "makima/demo"
    assert result.commit == git("rev-parse", "makima/demo", cwd=remote)
    assert {"a.txt", "b.txt", "README.md"} <= set(files_on(remote, "makima/demo"))
    assert _merged_branches(remote) == [
        "Merge branch 'makima/step-a' into makima/demo",
        "Merge branch 'makima/step-b' into makima/demo",
    ]
    url = f"{remote.as_uri()}#pull/1"
    assert result.pull_request_url == url
    assert reporter.pull_requests == [(url, "makima/demo")]
    meta = json.loads(git("cat-file", "blob", "refs/makima/pulls/1/meta", cwd=remote))
    assert meta["title"] == "Demo directive"
    assert meta["head"] == "makima/demo" and meta["base"] == "main" and meta["state"] == "open"
    assert meta["headCommit"] == result.commit
    assert git("rev-parse", "refs/makima/pulls/1/head", cwd=remote) == result.commit

    # A re-plan adds step c (built on the directive branch); re-completion merges only it.
    await _steps(remote, tmp_path / "gen2", "c", start_from="makima/demo")
    reporter2 = RecordingReporter()
    again = await _complete(remote, tmp_path, ["makima/step-a", "makima/step-b", "makima/step-c"], 2, reporter2)
    assert again.outcome == Outcome.SUCCEEDED, again.message
    assert "merged 1 branch(es); 2 already merged" in again.message
    assert _merged_branches(remote) == [
        "Merge branch 'makima/step-a' into makima/demo",
        "Merge branch 'makima/step-b' into makima/demo",
        "Merge branch 'makima/step-c' into makima/demo",
    ]
    assert git("merge-base", "--is-ancestor", result.commit, again.commit, cwd=remote) == ""  # fast-forward
    assert again.pull_request_url == url  # the same pull request, updated
    assert git("for-each-ref", "--format=%(refname)", "refs/makima/pulls/", cwd=remote).splitlines() == [
        "refs/makima/pulls/1/head",
        "refs/makima/pulls/1/meta",
    ]
    meta = json.loads(git("cat-file", "blob", "refs/makima/pulls/1/meta", cwd=remote))
    assert meta["body"] == "generation 2" and meta["headCommit"] == again.commit


async def test_completion_conflict_goes_to_agent(remote: Path, tmp_path: Path, reporter: RecordingReporter) -> None:
    await _steps(remote, tmp_path, "left", "right")
    result = await _complete(remote, tmp_path, ["makima/step-left", "makima/step-right"], 1, reporter)
    assert result.outcome == Outcome.SUCCEEDED, result.message
    assert files_on(remote, "makima/demo")["shared.txt"] == "line 1\nleft\nright\nline 3"


async def test_completion_missing_step_branch_fails(remote: Path, tmp_path: Path, reporter: RecordingReporter) -> None:
    result = await _complete(remote, tmp_path, ["makima/step-ghost"], 1, reporter)
    assert result.outcome == Outcome.FAILED
    assert "makima/step-ghost" in result.message and "does not exist" in result.message


async def test_completion_merges_only_the_sinks(remote: Path, tmp_path: Path, reporter: RecordingReporter) -> None:
    """Issue 14, finding 9: `join` depends on `left` and `right`, which conflict, and resolved that
    conflict itself. Completion has no conflict strategy (`leave`): re-merging `left` and `right`
    brought the conflict back and failed; merging only the sink (`join`) succeeds."""
    script = {
        "steps": {
            "left": {"files": {"shared.txt": "line 1\nleft\nline 3\n"}},
            "right": {"files": {"shared.txt": "line 1\nright\nline 3\n"}},
            "join": {"files": {"join.txt": "joined\n"}, "conflict": {"strategy": "union"}},
            "other": {"files": {"other.txt": "other\n"}},
        },
        "conflict": {"strategy": "leave"},
    }
    built: list[tuple[str, str | None, list[str]]] = [
        ("left", None, []),
        ("right", None, []),
        ("other", None, []),
        ("join", "makima/step-left", ["makima/step-right"]),
    ]
    for name, start, merge in built:
        spec = step_spec(remote, name, scripted_agent(script), start_from=start, merge=merge)
        res = await run_task(spec, RecordingReporter(), tmp_path / name)
        assert res.outcome == Outcome.SUCCEEDED, res.message
    order = ["makima/step-left", "makima/step-right", "makima/step-other", "makima/step-join"]
    spec = completion_spec(remote, order, scripted_agent(script))
    result = await run_task(spec, reporter, tmp_path / "completion")
    assert result.outcome == Outcome.SUCCEEDED, result.message
    assert "merged 2 branch(es)" in result.message and "2 contained in another step branch" in result.message
    merges = git("log", "--merges", "--first-parent", "--format=%s", "--reverse", "makima/demo", cwd=remote)
    assert merges.splitlines() == [
        "Merge branch 'makima/step-other' into makima/demo",
        "Merge branch 'makima/step-join' into makima/demo",
    ]
    files = files_on(remote, "makima/demo")
    assert {"join.txt", "other.txt"} <= set(files) and "left" in files["shared.txt"] and "right" in files["shared.txt"]
