"""Step tasks against real git: single, chain, diamond, no changes, conflicts, failures."""

from __future__ import annotations

import asyncio
from pathlib import Path

from makima.core.protocol import AgentSettings, EventType, Outcome
from makima.dataplane.runner.run import run_task
from tests.support.wait import eventually

from .conftest import files_on, git, scripted_agent, step_spec
from .doubles import RecordingReporter

SCRIPT = {
    "steps": {
        "a": {"files": {"a.txt": "from a\n"}},
        "b": {"files": {"b.txt": "from b\n"}, "expect_files": ["a.txt"]},
        "c": {"files": {"c.txt": "from c\n"}, "expect_files": ["a.txt"]},
        "d": {"files": {"d.txt": "from d\n"}, "expect_files": ["a.txt", "b.txt", "c.txt"]},
        "flaky": {"files": {"f.txt": "x\n"}, "fail_attempts": [1]},
        "left": {"files": {"shared.txt": "line 1\nleft\nline 3\n"}},
        "right": {"files": {"shared.txt": "line 1\nright\nline 3\n"}},
        "join": {"conflict": {"strategy": "union"}},
        "join-theirs": {"conflict": {"strategy": "theirs"}},
        "join-leave": {"conflict": {"strategy": "leave"}},
    }
}


async def run_step(remote: Path, tmp_path: Path, step: str, reporter: RecordingReporter, **kw):  # type: ignore[no-untyped-def]
    spec = step_spec(remote, step, kw.pop("agent", scripted_agent(SCRIPT)), **kw)
    return await run_task(spec, reporter, tmp_path / f"work-{step}-{spec.attempt}", heartbeat_seconds=0.2)


async def test_single_step(remote: Path, tmp_path: Path, reporter: RecordingReporter) -> None:
    result = await run_step(remote, tmp_path, "a", reporter)
    assert result.outcome == Outcome.SUCCEEDED, result.message
    assert result.branch == "makima/step-a"
    assert result.changed_files == 1
    assert result.commit == git("rev-parse", "makima/step-a", cwd=remote)
    assert files_on(remote, "makima/step-a")["a.txt"] == "from a"
    log = git("log", "--format=%an <%ae>|%s", "makima/step-a", "-1", cwd=remote)
    assert log == "makima <makima@localhost>|Do a"
    assert reporter.of(EventType.HEARTBEAT), "heartbeats are sent while running"
    assert reporter.of(EventType.RESULT)[-1]["outcome"] == "succeeded"
    assert any("scripted agent: step a" in line for line in reporter.output_lines())


async def test_chain_step_sees_previous_file(remote: Path, tmp_path: Path, reporter: RecordingReporter) -> None:
    assert (await run_step(remote, tmp_path, "a", reporter)).outcome == Outcome.SUCCEEDED
    result = await run_step(remote, tmp_path, "b", reporter, start_from="makima/step-a")
    assert result.outcome == Outcome.SUCCEEDED, result.message
    assert result.changed_files == 1  # only b.txt: measured from the start point
    assert set(files_on(remote, "makima/step-b")) >= {"a.txt", "b.txt", "README.md"}


async def test_diamond_merges_both_parents(remote: Path, tmp_path: Path, reporter: RecordingReporter) -> None:
    assert (await run_step(remote, tmp_path, "a", reporter)).outcome == Outcome.SUCCEEDED
    for step in ("b", "c"):
        res = await run_step(remote, tmp_path, step, reporter, start_from="makima/step-a")
        assert res.outcome == Outcome.SUCCEEDED, res.message
    result = await run_step(remote, tmp_path, "d", reporter, start_from="makima/step-b", merge=["makima/step-c"])
    assert result.outcome == Outcome.SUCCEEDED, result.message
    files = files_on(remote, "makima/step-d")
    assert {"a.txt", "b.txt", "c.txt", "d.txt"} <= set(files)
    merges = git("log", "--merges", "--format=%s", "makima/step-d", cwd=remote).splitlines()
    assert merges == ["Merge branch 'makima/step-c' into makima/step-d"]  # --no-ff merge commit


async def test_no_changes_succeeds_and_pushes(remote: Path, tmp_path: Path, reporter: RecordingReporter) -> None:
    result = await run_step(remote, tmp_path, "nothing", reporter)
    assert result.outcome == Outcome.SUCCEEDED
    assert result.message == "no changes"
    assert result.changed_files == 0
    assert git("rev-parse", "makima/step-nothing", cwd=remote) == git("rev-parse", "main", cwd=remote)


async def test_failed_attempt_then_retry(remote: Path, tmp_path: Path, reporter: RecordingReporter) -> None:
    first = await run_step(remote, tmp_path, "flaky", reporter, attempt=1)
    assert first.outcome == Outcome.FAILED
    assert "exited with code 1" in first.message and "failing attempt 1" in first.message
    assert "makima/step-flaky" not in git("branch", "--list", cwd=remote)  # nothing pushed
    second = await run_step(remote, tmp_path, "flaky", reporter, attempt=2)
    assert second.outcome == Outcome.SUCCEEDED, second.message


async def _parallel_pair(remote: Path, tmp_path: Path, reporter: RecordingReporter) -> None:
    for step in ("left", "right"):
        res = await run_step(remote, tmp_path, step, reporter)
        assert res.outcome == Outcome.SUCCEEDED, res.message


async def test_conflict_resolved_by_agent_union(remote: Path, tmp_path: Path, reporter: RecordingReporter) -> None:
    await _parallel_pair(remote, tmp_path, reporter)
    result = await run_step(
        remote, tmp_path, "join", reporter, start_from="makima/step-left", merge=["makima/step-right"]
    )
    assert result.outcome == Outcome.SUCCEEDED, result.message
    assert files_on(remote, "makima/step-join")["shared.txt"] == "line 1\nleft\nright\nline 3"
    conflicts = [p for p in reporter.of(EventType.GIT) if p.get("action") == "conflict"]
    assert conflicts and conflicts[0]["files"] == ["shared.txt"]
    modes = {p.get("mode") for p in reporter.of(EventType.OUTPUT)}
    assert "conflict" in modes


async def test_conflict_resolved_theirs(remote: Path, tmp_path: Path, reporter: RecordingReporter) -> None:
    await _parallel_pair(remote, tmp_path, reporter)
    result = await run_step(
        remote, tmp_path, "join-theirs", reporter, start_from="makima/step-left", merge=["makima/step-right"]
    )
    assert result.outcome == Outcome.SUCCEEDED, result.message
    assert files_on(remote, "makima/step-join-theirs")["shared.txt"] == "line 1\nright\nline 3"


async def test_conflict_left_unresolved_fails_listing_paths(
    remote: Path, tmp_path: Path, reporter: RecordingReporter
) -> None:
    await _parallel_pair(remote, tmp_path, reporter)
    result = await run_step(
        remote, tmp_path, "join-leave", reporter, start_from="makima/step-left", merge=["makima/step-right"]
    )
    assert result.outcome == Outcome.FAILED
    assert "unresolved conflicts in: shared.txt" in result.message
    assert "makima/step-join-leave" not in git("branch", "--list", cwd=remote)


async def test_agent_timeout(remote: Path, tmp_path: Path, reporter: RecordingReporter) -> None:
    import sys

    agent = AgentSettings(
        command=[sys.executable, "-c", "import time; print('busy', flush=True); time.sleep(30)"], timeout_seconds=0.5
    )
    result = await run_step(remote, tmp_path, "slow", reporter, agent=agent)
    assert result.outcome == Outcome.FAILED
    assert "timed out" in result.message
    assert "busy" in reporter.output_lines()


async def test_missing_start_branch_fails_clearly(remote: Path, tmp_path: Path, reporter: RecordingReporter) -> None:
    result = await run_step(remote, tmp_path, "a", reporter, start_from="makima/step-nope")
    assert result.outcome == Outcome.FAILED
    assert "start branch 'makima/step-nope' does not exist" in result.message


async def test_agent_command_not_found(remote: Path, tmp_path: Path, reporter: RecordingReporter) -> None:
    agent = AgentSettings(command=["definitely-not-an-agent-xyz"])
    result = await run_step(remote, tmp_path, "a", reporter, agent=agent)
    assert result.outcome == Outcome.FAILED
    # Checked before starting: the agent and the missing command are named, no timeout waited.
    assert "agent custom: its command 'definitely-not-an-agent-xyz' is not installed" in result.message


def gated_agent(signals: Path, name: str, content: str) -> AgentSettings:
    """An agent that says it started (a file), waits for its go file, then writes `content`."""
    started, go = signals / f"{name}.started", signals / f"{name}.go"
    script = f"touch '{started}'; while [ ! -e '{go}' ]; do sleep 0.02; done; echo {content} > {content}.txt"
    return AgentSettings(command=["sh", "-c", script], timeout_seconds=120)


async def wait_for_file(path: Path, timeout: float = 60) -> None:
    await eventually(lambda: asyncio.to_thread(path.exists), f"{path.name} written", timeout)


async def test_lost_attempt_waking_up_late_does_not_overwrite_its_retry(
    remote: Path, tmp_path: Path, reporter: RecordingReporter
) -> None:
    """Attempt 1 stalls (its daemon froze), attempt 2 runs and pushes; attempt 1 must not push over it."""
    signals = tmp_path / "signals"
    signals.mkdir()
    zombie = asyncio.create_task(
        run_step(remote, tmp_path / "a1", "z", RecordingReporter(), agent=gated_agent(signals, "a1", "one"), attempt=1)
    )
    await wait_for_file(signals / "a1.started")  # attempt 1 has cloned and is inside its agent
    fast = AgentSettings(command=["sh", "-c", "echo two > two.txt"], timeout_seconds=30)
    retry = await run_step(remote, tmp_path / "a2", "z", reporter, agent=fast, attempt=2)
    assert retry.outcome == Outcome.SUCCEEDED, retry.message
    (signals / "a1.go").touch()
    late = await zombie
    assert late.outcome == Outcome.FAILED
    assert "attempt 2 of this step already pushed" in late.message
    assert git("rev-parse", "makima/step-z", cwd=remote) == retry.commit
    assert set(files_on(remote, "makima/step-z")) >= {"two.txt"} and "one.txt" not in files_on(remote, "makima/step-z")


async def test_lost_attempt_pushing_first_does_not_make_its_retry_fail(
    remote: Path, tmp_path: Path, reporter: RecordingReporter
) -> None:
    """Issue 14, finding 5: attempt 1 (declared lost) pushes after attempt 2 cloned but before it
    pushed. The seed's lease (what attempt 2's clone saw) made the retry fail; the retry wins now."""
    signals = tmp_path / "signals"
    signals.mkdir()
    retry_task = asyncio.create_task(
        run_step(remote, tmp_path / "a2", "y", reporter, agent=gated_agent(signals, "a2", "two"), attempt=2)
    )
    await wait_for_file(signals / "a2.started")  # the retry has cloned
    lost_agent = AgentSettings(command=["sh", "-c", "echo one > one.txt"], timeout_seconds=30)
    lost = await run_step(remote, tmp_path / "a1", "y", RecordingReporter(), agent=lost_agent, attempt=1)
    assert lost.outcome == Outcome.SUCCEEDED  # nothing newer had pushed yet: its push went through
    (signals / "a2.go").touch()
    retry = await retry_task
    assert retry.outcome == Outcome.SUCCEEDED, retry.message
    assert git("rev-parse", "makima/step-y", cwd=remote) == retry.commit
    assert "two.txt" in files_on(remote, "makima/step-y") and "one.txt" not in files_on(remote, "makima/step-y")
