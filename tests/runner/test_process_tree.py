"""Cancelling a task ends the agent's whole process tree (issue 17, item 3).

The agent here starts a background child in its own process group, one in a new session
(`setsid`, out of reach of a process-group kill) and a sub-shell orphan. Every process of it
carries a random mark in its environment; survivors are looked up in /proc by that mark,
independently of the runner's own bookkeeping, waiting for the condition with a deadline.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid
from pathlib import Path

import pytest

from makima.core.protocol import AgentSettings, Outcome
from makima.dataplane.runner.agent import AgentContext, run_agent
from tests.support.wait import eventually

from .conftest import step_spec
from .doubles import FakeOperatorApi, RecordingReporter

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

RUNNER = str(Path(sys.executable).parent / "makima")
DETACHED = f"{sys.executable} -c 'import os, time; os.setsid(); time.sleep(600)'"
# A foreground sleeper, a background one, a setsid'd one and a sub-shell orphan.
TREE = f"sleep 600 & {DETACHED} & (sleep 600 &) ; sleep 600"
# Exits at once, leaving a setsid'd child (holding its stdout) and a background one behind.
LEAVER = f"{DETACHED} & sleep 600 & echo started; exit 0"


def marked(mark: str) -> set[int]:
    """Live (non-zombie) processes whose environment holds TEST_MARK=<mark>."""
    needle = f"TEST_MARK={mark}".encode()
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = (entry / "environ").read_bytes()
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if needle in env.split(b"\0") and stat[stat.rfind(")") + 2] not in "ZX":
            found.add(int(entry.name))
    return found


def describe(pids: set[int]) -> str:
    out = []
    for pid in sorted(pids):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            out.append(f"{pid} [{stat[stat.rfind(')') + 2 :].split()[:3]}] {cmd}")
        except OSError:
            out.append(f"{pid} (gone)")
    return "; ".join(out)


def _agent(script: str, mark: str, timeout: float = 300) -> AgentSettings:
    return AgentSettings(command=["sh", "-c", script], env={"TEST_MARK": mark}, timeout_seconds=timeout)


def _context() -> AgentContext:
    return AgentContext(task_id="t-tree", kind="step", directive="d", step="s")


async def test_cancelling_the_agent_ends_its_whole_tree(tmp_path: Path, reporter: RecordingReporter) -> None:
    mark = uuid.uuid4().hex
    run = asyncio.create_task(run_agent(_agent(TREE, mark), tmp_path, "", _context(), reporter))
    try:
        # sh, sleep x3 and the detached python: five processes before we cancel.
        await eventually(lambda: len(marked(mark)) >= 5, "five marked processes", detail=lambda: marked(mark))
    finally:
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run
    await eventually(lambda: not marked(mark), "no survivor", detail=lambda: describe(marked(mark)))


async def test_what_an_agent_leaves_behind_ends_with_it(tmp_path: Path, reporter: RecordingReporter) -> None:
    mark = uuid.uuid4().hex
    outcome = await asyncio.wait_for(run_agent(_agent(LEAVER, mark), tmp_path, "", _context(), reporter), 120)
    assert outcome.ok, outcome.describe()
    await eventually(lambda: not marked(mark), "no survivor", detail=lambda: describe(marked(mark)))


async def test_timed_out_agent_ends_with_its_tree(tmp_path: Path, reporter: RecordingReporter) -> None:
    mark = uuid.uuid4().hex
    settings = _agent(TREE, mark, timeout=1)
    outcome = await asyncio.wait_for(run_agent(settings, tmp_path, "", _context(), reporter), 120)
    assert outcome.timed_out
    await eventually(lambda: not marked(mark), "no survivor", detail=lambda: describe(marked(mark)))


async def test_sigterm_to_task_run_ends_the_agent_tree(remote: Path, tmp_path: Path, fake_api: FakeOperatorApi) -> None:
    """A pod being deleted: the kubelet sends SIGTERM to the runner (PID 1) only."""
    mark = uuid.uuid4().hex
    spec = step_spec(remote, "tree", _agent(TREE, mark))
    fake_api.specs[spec.task_id] = spec
    env = {**os.environ, **fake_api.env(spec.task_id)}
    proc = await asyncio.create_subprocess_exec(
        RUNNER,
        "task",
        "run",
        "--workdir",
        str(tmp_path / "work"),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        await eventually(lambda: len(marked(mark)) >= 5, "five marked processes", 120, detail=lambda: marked(mark))
        proc.send_signal(signal.SIGTERM)
        output, _ = await asyncio.wait_for(proc.communicate(), 120)
    finally:
        if proc.returncode is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, output.decode(errors="replace")
    await eventually(lambda: not marked(mark), "no survivor", detail=lambda: describe(marked(mark)))
    assert spec.task_id not in fake_api.results or fake_api.results[spec.task_id].outcome != Outcome.SUCCEEDED
