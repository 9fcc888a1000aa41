"""A hostile agent cannot obtain the git token (issue 15, item 1).

`makima task run` runs as its own process (as in a Job pod: the token in its initial
environment), against the task API stand-in and a git server over HTTP that requires the
token. The agent (`hostile_agent.py`) reads every process's environment and command line, the
runner's and git's memory, secret mounts, the work dir, the git config and git's credential
machinery; it plants hooks, a credential helper and fsmonitor in the clone's and the global git
config, and leaves a watcher behind (double fork, new session, empty environment) that scans
processes while the runner pushes. The push must still authenticate, and nothing may hold the
token: no hit, no loot, no survivor.

When the suite runs as root, the runner is started without any capability (`setpriv
--bounding-set=-all`), as in a pod (capabilities dropped): the runner, git and the agent then
share one UID and one (empty) capability set, so the agent has exactly a same-UID process's
rights over the others. With full capabilities the runner and git would be out of the agent's
reach anyway (the runner empties the agent's bounding set: `proctree.agent_preexec`), which
would prove less.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from makima.core.protocol import AgentSettings, Outcome
from tests.support.wait import eventually

from .conftest import files_on, step_spec
from .doubles import FakeOperatorApi
from .test_secrets import GitHttpStandIn

HOSTILE = Path(__file__).with_name("hostile_agent.py")
GIT_TOKEN = "ghp_hostileTEST0123456789abcdefXYZ"
RUNNER = str(Path(sys.executable).parent / "makima")

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and prctl are Linux-only")


def alive(pid: int) -> bool:
    """The process exists and is not a zombie (read from /proc, independently of the runner's code)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] not in "ZX"


def _without_capabilities() -> list[str]:
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: cannot start the runner without capabilities")
    return [setpriv, "--inh-caps=-all", "--bounding-set=-all", "--"]


async def test_hostile_agent_finds_no_git_token(remote: Path, tmp_path: Path, fake_api: FakeOperatorApi) -> None:
    out = tmp_path / "hostile"
    stand_in = GitHttpStandIn(remote.parent, "x-access-token", GIT_TOKEN)
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", stand_in.handle)
    server = TestServer(app)
    await server.start_server()
    try:
        agent = AgentSettings(
            command=[sys.executable, str(HOSTILE)],
            env={"HOSTILE_OUT": str(out), "HOSTILE_NEEDLE_REVERSED": GIT_TOKEN[::-1]},
            timeout_seconds=240,
        )
        spec = step_spec(remote, "hostile", agent)
        url = str(server.make_url("/remote.git"))
        spec = spec.model_copy(update={"workspace": spec.workspace.model_copy(update={"repo_url": url})})
        fake_api.specs[spec.task_id] = spec
        home = tmp_path / "home"
        home.mkdir()
        env = {
            **os.environ,
            **fake_api.env(spec.task_id),
            "HOME": str(home),
            "GIT_CONFIG_GLOBAL": str(home / ".gitconfig"),
            "MAKIMA_GIT_TOKEN": GIT_TOKEN,
        }
        proc = await asyncio.create_subprocess_exec(
            *_without_capabilities(),
            RUNNER,
            "task",
            "run",
            "--workdir",
            str(tmp_path / "work"),
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output, _ = await asyncio.wait_for(proc.communicate(), timeout=600)
    finally:
        await server.close()
    log = output.decode(errors="replace")

    # The task went through: the push after the agent authenticated with the token.
    assert proc.returncode == 0, log
    assert fake_api.results[spec.task_id].outcome == Outcome.SUCCEEDED, log
    assert "hostile.txt" in files_on(remote, "makima/step-hostile")
    assert any("git-receive-pack" in p for p in stand_in.paths) and stand_in.authorised >= 2

    report = json.loads((out / "report.json").read_text())
    # The agent's methods work (on its own child) and it really looked.
    assert report["control"] == {"environ": "read", "mem": "read"}, report["control"]
    assert any(k.startswith("environ:") for k in report["attempts"])
    assert report["files_scanned"] > 0
    assert report["trapped"] is True
    # ... and the runner (its parent) was closed to it.
    assert report["parent"] == {"environ": "denied", "mem": "denied"}, report["parent"]
    assert report["hits"] == [], report["hits"]

    # The watcher it left behind was ended before the push; it never saw the token.
    watcher = int((out / "watcher.pid").read_text())
    await eventually(lambda: not alive(watcher), "the agent's watcher gone with the task", 60)
    assert not (out / "watcher-hits.json").exists() or json.loads((out / "watcher-hits.json").read_text()) == []

    # No trap fired with the token, no file anywhere under the agent's reach holds it.
    for path in [*out.rglob("*"), *(tmp_path / "work").rglob("*"), *home.rglob("*")]:
        if path.is_file() and not path.is_symlink():
            assert GIT_TOKEN.encode() not in path.read_bytes(), path
    assert GIT_TOKEN not in json.dumps(fake_api.events[spec.task_id])
    assert GIT_TOKEN not in log
