"""Process hygiene for the runner: hide its memory, confine the agent, end whole process trees.

Linux only where it matters (prctl, /proc); elsewhere each call is a no-op.

- `harden_runner()` makes the calling process non-dumpable (`PR_SET_DUMPABLE` 0): its
  `/proc/<pid>/environ`, `/proc/<pid>/mem` and ptrace become unavailable to other processes of
  the same UID that lack `CAP_SYS_PTRACE` — the agent. `makima task run` and `makima daemon`
  call it first thing, before any agent exists. With `subreaper=True` the process also becomes
  a child subreaper: an agent's descendant that double-forks away from its parent is re-parented
  to the runner instead of init, where `orphans()` finds it.
- `agent_preexec()` runs in the agent's child between fork and exec: it empties the capability
  bounding set (so an agent started by a root runner gets no capabilities, in particular not
  `CAP_SYS_PTRACE`) and sets `PR_SET_NO_NEW_PRIVS`.
- `end_tree()` ends every process of one agent run: its process group, its descendants, any
  process carrying the run's marker in its environment, and (in a subreaper runner) orphans
  re-parented to the runner. SIGTERM, a grace period, then SIGKILL until none is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
import os
import signal
import sys
import time
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_GET_DUMPABLE = 3
PR_CAPBSET_DROP = 24
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
CAP_LAST_CAP_FILE = Path("/proc/sys/kernel/cap_last_cap")

ENV_AGENT_RUN = "MAKIMA_AGENT_RUN"  # marker every agent process inherits: the run's random id

_PROC = Path("/proc")
_state: dict[str, object] = {"subreaper": False}
_spawned: set[int] = set()  # pids the runner started itself (agents, git); never "orphans"


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None


_LIBC = _libc()


def _prctl(option: int, arg: int = 0) -> bool:
    if _LIBC is None:
        return False
    return int(_LIBC.prctl(option, ctypes.c_ulong(arg), 0, 0, 0)) == 0


def harden_runner(*, subreaper: bool = False) -> bool:
    """Make this process non-dumpable (and optionally a child subreaper). True if it worked."""
    ok = _prctl(PR_SET_DUMPABLE, 0)
    if not ok:
        log.warning("could not make the runner non-dumpable: same-UID processes may read its memory")
    if subreaper and _prctl(PR_SET_CHILD_SUBREAPER, 1):
        _state["subreaper"] = True
    return ok


def is_dumpable() -> bool:
    if _LIBC is None:
        return True
    return int(_LIBC.prctl(PR_GET_DUMPABLE, 0, 0, 0, 0)) != 0


def _cap_last() -> int:
    try:
        return int(CAP_LAST_CAP_FILE.read_text())
    except (OSError, ValueError):
        return 40


_CAP_LAST = _cap_last()


def agent_preexec() -> None:
    """In the agent's child before exec: no capabilities, no privilege gain, die with the runner."""
    if _LIBC is None:
        return
    for cap in range(_CAP_LAST + 1):  # needs CAP_SETPCAP; without it the set is already what exec grants
        _LIBC.prctl(PR_CAPBSET_DROP, ctypes.c_ulong(cap), 0, 0, 0)
    _LIBC.prctl(PR_SET_NO_NEW_PRIVS, ctypes.c_ulong(1), 0, 0, 0)


def track(pid: int) -> None:
    _spawned.add(pid)


def untrack(pid: int) -> None:
    _spawned.discard(pid)


# ---- reading /proc ---------------------------------------------------------------------------


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, pgid) of a process, or None when it is gone."""
    try:
        raw = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rfind(")") + 2 :].split()
    return fields[0], int(fields[1]), int(fields[2])


def _pids() -> list[int]:
    try:
        return [int(p.name) for p in _PROC.iterdir() if p.name.isdigit()]
    except OSError:
        return []


def alive(pid: int) -> bool:
    st = _stat(pid)
    return st is not None and st[0] not in ("Z", "X")


def _table() -> dict[int, tuple[str, int, int]]:
    table = {}
    for pid in _pids():
        st = _stat(pid)
        if st is not None:
            table[pid] = st
    return table


def descendants(roots: Iterable[int], table: dict[int, tuple[str, int, int]] | None = None) -> set[int]:
    """Every process below `roots` (not the roots themselves)."""
    table = _table() if table is None else table
    children: dict[int, list[int]] = {}
    for pid, (_s, ppid, _g) in table.items():
        children.setdefault(ppid, []).append(pid)
    found: set[int] = set()
    todo = list(roots)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def with_marker(name: str, value: str) -> set[int]:
    """Processes (readable by us) whose environment holds `name=value`."""
    needle = f"{name}={value}".encode()
    me = os.getpid()
    found = set()
    for pid in _pids():
        if pid == me:
            continue
        try:
            env = (_PROC / str(pid) / "environ").read_bytes()
        except OSError:
            continue
        if needle in env.split(b"\0"):
            found.add(pid)
    return found


def orphans() -> set[int]:
    """In a subreaper runner: children of ours we did not start (re-parented leftovers), and below."""
    if not _state["subreaper"]:
        return set()
    table = _table()
    me = os.getpid()
    roots = {pid for pid, (_s, ppid, _g) in table.items() if ppid == me and pid not in _spawned}
    return roots | descendants(roots, table)


def tree(pgid: int | None, root: int | None, marker: str | None) -> set[int]:
    """The processes of one agent run still alive (zombies excluded)."""
    table = _table()
    found: set[int] = set()
    if pgid is not None:
        found |= {pid for pid, (_s, _p, g) in table.items() if g == pgid}
    if root is not None:
        found |= {root} | descendants([root], table)
    if marker is not None:
        found |= with_marker(ENV_AGENT_RUN, marker)
    found |= orphans()
    found.discard(os.getpid())
    return {pid for pid in found if pid in table and table[pid][0] not in ("Z", "X")}


def _signal(pids: Iterable[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _reap(pids: Iterable[int]) -> None:
    """Collect zombies that became our children (subreaper); never touches pids we started."""
    for pid in pids:
        if pid in _spawned:
            continue
        st = _stat(pid)
        if st is not None and st[0] == "Z" and st[1] == os.getpid():
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, os.WNOHANG)


async def end_group(proc: asyncio.subprocess.Process, grace: float) -> None:
    """SIGTERM the process group led by `proc`, then SIGKILL it if `proc` outlives `grace`."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        try:
            await asyncio.wait_for(asyncio.shield(proc.wait()), grace)
            return
        except TimeoutError:
            continue


async def end_marked(name: str, value: str, *, grace: float = 2.0, kill_deadline: float = 10.0) -> set[int]:
    """End every process whose environment holds `name=value` (e.g. all processes of a sandbox
    pod, as a container runtime ends a pod's PID namespace). Returns survivors (normally none)."""
    found = with_marker(name, value)
    _signal(found, signal.SIGTERM)
    end = time.monotonic() + grace
    while found and time.monotonic() < end:
        await asyncio.sleep(0.05)
        found = {pid for pid in with_marker(name, value) if alive(pid)}
    end = time.monotonic() + kill_deadline
    while found and time.monotonic() < end:
        _signal(found, signal.SIGKILL)
        await asyncio.sleep(0.05)
        found = {pid for pid in with_marker(name, value) if alive(pid)}
    return found


async def end_tree(
    pgid: int | None,
    root: int | None,
    marker: str | None,
    *,
    grace: float = 5.0,
    kill_deadline: float = 10.0,
    poll: float = 0.05,
) -> set[int]:
    """SIGTERM the run's processes, wait up to `grace`, then SIGKILL until none is left.

    Returns the pids still alive after `kill_deadline` (empty unless something is unkillable).
    """
    seen: set[int] = set()
    found = tree(pgid, root, marker)
    if not found:
        return set()
    if pgid is not None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGTERM)
    _signal(found, signal.SIGTERM)
    seen |= found
    end = time.monotonic() + grace
    while found and time.monotonic() < end:
        await asyncio.sleep(poll)
        _reap(seen)
        found = tree(pgid, root, marker)
        seen |= found
    end = time.monotonic() + kill_deadline
    while found and time.monotonic() < end:
        if pgid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
        _signal(found, signal.SIGKILL)
        await asyncio.sleep(poll)
        _reap(seen)
        found = tree(pgid, root, marker)
        seen |= found
    if found:
        log.warning("processes of the agent survived SIGKILL: %s", sorted(found))
    return found
