"""The chaos harness (`harness.py`): a directive surviving operator kills and a cut
runner↔operator path with no human action, no work redone, no attempt doubled, no event lost.

`make test` runs a small run (a handful of steps, a few SIGKILLs of the operator process, one
cut). `make chaos` runs the long one (`MAKIMA_CHAOS=1`, sizes from `MAKIMA_CHAOS_STEPS`,
`MAKIMA_CHAOS_KILLS`, `MAKIMA_CHAOS_CUTS`) and prints its figures.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from makima_testing.sandbox import SandboxThread

from .conftest import free_port
from .harness import ChaosConfig, chaos_plan, run_chaos

pytestmark = pytest.mark.slow


def test_plan_has_diamonds_a_conflict_and_a_flaky_step() -> None:
    plan, scripts, expected = chaos_plan(6)
    names = [p["name"] for p in plan]
    assert {"root-1", "left-1", "right-1", "join-1"} <= set(names)
    join = next(p for p in plan if p["name"] == "join-1")
    assert sorted(join["dependsOn"]) == ["left-1", "right-1"]
    assert scripts["left-1"]["files"]["shared-1.txt"] != scripts["right-1"]["files"]["shared-1.txt"]
    assert sorted(expected.values()).count(2) == 1  # one step fails its first attempt


async def _run(config: ChaosConfig, tmp_path: Path, pg_dsn: str, sandbox: SandboxThread, origin: Path) -> None:
    report = await run_chaos(
        config,
        workdir=tmp_path,
        dsn=pg_dsn,
        sandbox_url=sandbox.url,
        kubeconfig=sandbox.kubeconfig,
        origin=origin,
        api_port=free_port(),
    )
    print(f"\nchaos: {report.figures()}")
    log = tmp_path / "operator.log"
    tail = log.read_text()[-4000:] if log.exists() else ""
    assert report.problems == [], f"{report.figures()}\n" + "\n".join(report.problems) + f"\n--- operator log\n{tail}"
    assert report.kills == config.kills or report.completed


async def test_a_directive_survives_operator_kills_and_a_cut_path(
    tmp_path: Path, pg_dsn: str, sandbox: SandboxThread, origin: Path
) -> None:
    await _run(ChaosConfig(steps=6, kills=3, cuts=1), tmp_path, pg_dsn, sandbox, origin)


@pytest.mark.skipif(os.environ.get("MAKIMA_CHAOS") != "1", reason="the long chaos run is `make chaos` (MAKIMA_CHAOS=1)")
async def test_chaos_long(tmp_path: Path, pg_dsn: str, sandbox: SandboxThread, origin: Path) -> None:
    config = ChaosConfig(
        steps=int(os.environ.get("MAKIMA_CHAOS_STEPS", "30")),
        kills=int(os.environ.get("MAKIMA_CHAOS_KILLS", "200")),
        cuts=int(os.environ.get("MAKIMA_CHAOS_CUTS", "10")),
        timeout=float(os.environ.get("MAKIMA_CHAOS_TIMEOUT", "7200")),
    )
    await _run(config, tmp_path, pg_dsn, sandbox, origin)
