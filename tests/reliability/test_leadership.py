"""The Lease election (control/leadership.py) against the sandbox's Lease API (finding 10 of
issue 14): one active replica; a dead one is replaced within the bound and not before its
Lease ran out; a clean stop hands over at once; a holder cut off from the API stops acting
before anyone may take over. The last test runs it against the real kube-apiserver with
the chart's RBAC for `replicas: 2`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import pytest

from makima.control.kube import Kube, KubeError, load_kubeconfig
from makima.control.leadership import Leadership, LeaseElector
from makima.core.lease import LeaseTimings
from makima_testing.sandbox.server import SandboxThread, kubeconfig_text
from tests.integration.realenv import operator_install
from tests.support.realcluster import RealCluster

from .conftest import free_port
from .proxy import CutProxy

# Short timings so a test takes seconds: lease 4 s, renew deadline 2.7 s, a look every 0.53 s.
TIMINGS = LeaseTimings.for_duration(4)
LOADED = 120.0  # a deadline for a slow, shared machine, not an expected duration


@dataclass
class Replica:
    name: str
    kube: Kube
    leadership: Leadership
    elector: LeaseElector
    task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self.elector.run())

    async def die(self) -> None:
        """Stop as a SIGKILL would: no release."""
        assert self.task is not None
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task

    async def stop(self) -> None:
        """Stop cleanly: release the Lease."""
        await self.die()
        await self.elector.release()


@contextlib.asynccontextmanager
async def replicas(kubeconfigs: list[Path], namespace: str = "default") -> AsyncIterator[list[Replica]]:
    made = []
    for i, kubeconfig in enumerate(kubeconfigs):
        kube = Kube(load_kubeconfig(str(kubeconfig)))
        leadership = Leadership(f"replica-{i}")
        kube.may_write = lambda leadership=leadership: leadership.active
        elector = LeaseElector(kube, leadership, namespace, "ops", TIMINGS)
        made.append(Replica(f"replica-{i}", kube, leadership, elector))
    try:
        async with asyncio.timeout(3 * LOADED):  # a hang fails the test, showing where it waited
            yield made
    finally:
        for r in made:
            if r.task is not None:
                await r.die()
            r.kube.close()


async def until(predicate: Callable[[], bool], what: str, timeout: float = LOADED) -> float:
    """Wait for `predicate`; returns how long it took."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not predicate():
        assert loop.time() - start < timeout, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)
    return loop.time() - start


def holder(sandbox: SandboxThread) -> str | None:
    lease = sandbox.get("coordination.k8s.io/v1", "Lease", "ops", "default")
    return (lease.get("spec") or {}).get("holderIdentity")


@pytest.fixture
def sandbox() -> Iterator[SandboxThread]:
    with SandboxThread() as sb:
        yield sb


async def test_one_replica_is_active_and_the_lease_names_it(sandbox: SandboxThread) -> None:
    async with replicas([sandbox.kubeconfig] * 3) as rs:
        for r in rs:
            r.start()
        await until(lambda: any(r.leadership.active for r in rs), "a replica to become active")
        # Each replica looks twice more: still exactly one active (the others saw it and waited).
        seen = [r.elector.looks for r in rs]
        await until(lambda: all(r.elector.looks >= n + 2 for r, n in zip(rs, seen, strict=True)), "two more looks")
        active = [r for r in rs if r.leadership.active]
        assert len(active) == 1
        assert holder(sandbox) == active[0].leadership.identity


async def test_a_dead_holder_is_replaced_within_the_bound_and_not_before_its_lease_ran_out(
    sandbox: SandboxThread,
) -> None:
    async with replicas([sandbox.kubeconfig] * 2) as (a, b):
        a.start()
        await until(lambda: a.leadership.active, "a to become active")
        b.start()
        await until(lambda: b.elector.looks > 0, "b to have looked")
        assert not b.leadership.active
        await a.die()
        waited = await until(lambda: b.leadership.active, "b to take over")
        # a's last renewal was at most a period before it died, and b waits a full lease after seeing it
        assert waited >= TIMINGS.duration - TIMINGS.retry_period, waited
        assert waited <= TIMINGS.takeover_bound + 5.0, waited  # (slack for a loaded machine)
        assert holder(sandbox) == b.leadership.identity


async def test_a_clean_stop_hands_over_at_the_next_look(sandbox: SandboxThread) -> None:
    async with replicas([sandbox.kubeconfig] * 2) as (a, b):
        a.start()
        await until(lambda: a.leadership.active, "a to become active")
        b.start()
        await until(lambda: b.elector.looks > 0, "b to have looked")
        await a.stop()
        assert not a.leadership.active and not a.leadership.lost.is_set()
        waited = await until(lambda: b.leadership.active, "b to take over")
        assert waited < TIMINGS.duration - TIMINGS.retry_period, waited  # did not wait for the lease to run out


async def test_a_holder_cut_off_from_the_api_stops_acting_before_anyone_takes_over(
    sandbox: SandboxThread, tmp_path: Path
) -> None:
    url = urlsplit(sandbox.url)
    with CutProxy(url.hostname or "127.0.0.1", url.port or 80) as path:
        cut_config = tmp_path / "kubeconfig-via-proxy"
        cut_config.write_text(kubeconfig_text(f"http://127.0.0.1:{path.port}"))
        async with replicas([cut_config, sandbox.kubeconfig]) as (a, b):
            a.start()
            await until(lambda: a.leadership.active, "a to become active")
            b.start()
            await until(lambda: b.elector.looks > 0, "b to have looked")
            path.cut()
            await until(lambda: a.leadership.lost.is_set(), "a to stop acting")
            # a stopped before b could take over: b waits the whole lease after a's last renewal.
            assert not b.leadership.active
            assert not a.leadership.active and not a.kube.may_write()
            with pytest.raises(KubeError, match="not the active one"):
                await a.kube.delete_job("default", "anything")  # the gateway refuses its writes
            await until(lambda: b.leadership.active, "b to take over")
            path.heal()
            # a does not come back by itself: its process ends and starts again as a standby.
            assert a.task is not None
            await asyncio.wait_for(a.task, LOADED)
            assert not a.leadership.active and holder(sandbox) == b.leadership.identity


async def test_the_election_on_the_real_api_server_with_the_charts_rbac(
    real_cluster: RealCluster, tmp_path: Path
) -> None:
    """The operator's own ServiceAccount, bound to what the chart grants with `replicas: 2`, in
    the release namespace: a Lease created, renewed (MicroTime written back as the API wants),
    released, taken over after a holder died."""
    with operator_install(real_cluster, tmp_path, replicas=2) as (_watched, kubeconfig):
        from makima.control.kube import context_namespace

        release_ns = context_namespace(str(kubeconfig))
        async with replicas([kubeconfig, kubeconfig], release_ns) as (a, b):
            a.start()
            await until(lambda: a.leadership.active, "a to become active")
            b.start()
            await until(lambda: a.elector.looks >= 5 and b.elector.looks >= 2, "a few renewals")
            assert a.leadership.active and not b.leadership.active and not a.leadership.lost.is_set()
            path = f"/apis/coordination.k8s.io/v1/namespaces/{release_ns}/leases/ops"
            lease = real_cluster.ok("GET", path)
            assert lease["spec"]["holderIdentity"] == a.leadership.identity
            assert lease["spec"]["renewTime"] > lease["spec"]["acquireTime"]  # renewed, acquisition kept
            await a.stop()
            await until(lambda: b.leadership.active, "b to take over the released lease")
            a.start()  # back as a standby
            await until(lambda: a.elector.looks >= 2, "a to look")
            assert not a.leadership.active
            await b.die()
            waited = await until(lambda: a.leadership.active, "a to take over from the dead b")
            assert waited >= TIMINGS.duration - TIMINGS.retry_period, waited
            assert real_cluster.ok("GET", path)["spec"]["leaseTransitions"] == 2


class HeldElsewhere:
    """Test double of the Kubernetes gateway's Lease calls: each read waits for the test to
    answer it, with a Lease some other replica holds."""

    def __init__(self) -> None:
        self.reads: asyncio.Queue[asyncio.Future[dict[str, object]]] = asyncio.Queue()

    async def get_lease(self, namespace: str, name: str, timeout: float) -> dict[str, object]:
        answer: asyncio.Future[dict[str, object]] = asyncio.get_running_loop().create_future()
        await self.reads.put(answer)
        return await answer


async def test_stopping_the_election_as_a_look_ends_stops_it() -> None:
    """The operator's shutdown cancels the election and waits for it: a cancellation that lands
    just as a look returns must still end it (asyncio.wait_for on 3.11 would swallow it)."""
    kube = HeldElsewhere()
    elector = LeaseElector(kube, Leadership("me"), "default", "ops", TIMINGS)  # type: ignore[arg-type]
    run = asyncio.create_task(elector.run())
    answer = await asyncio.wait_for(kube.reads.get(), LOADED)
    lease = {"metadata": {"resourceVersion": "1"}, "spec": {"holderIdentity": "other", "leaseDurationSeconds": 4}}
    answer.set_result(lease)
    run.cancel()  # in the same step: the look completes and the cancellation arrive together
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(run, 10)


async def test_an_operator_that_loses_its_lease_stops_and_says_so(
    sandbox: SandboxThread, pg_dsn: str, tmp_path: Path
) -> None:
    """The whole operator, in this process: active, then cut off from the API server. It stops
    being ready and `run_operator` raises `LeadershipLost` (the process would exit and come
    back as a standby) before the Lease could be taken by another replica."""
    from makima.control.config import OperatorSettings
    from makima.control.leadership import LeadershipLost
    from makima.control.runtime import Operator, run_operator
    from makima.core.crds import all_crds

    for crd in all_crds().values():
        sandbox.apply(crd)
    url = urlsplit(sandbox.url)
    with CutProxy(url.hostname or "127.0.0.1", url.port or 80) as path:
        kubeconfig = tmp_path / "kubeconfig-via-proxy"
        kubeconfig.write_text(kubeconfig_text(f"http://127.0.0.1:{path.port}"))
        port = free_port()
        settings = OperatorSettings(
            database_url=pg_dsn,
            api_listen=f"127.0.0.1:{port}",
            state_dir=tmp_path / "state",
            lease_name="ops",
            lease_namespace="default",
            lease_seconds=4,
        )
        built: list[Operator] = []
        ready = asyncio.Event()
        run = asyncio.create_task(
            run_operator(settings, kubeconfig=str(kubeconfig), ready_flag=ready, on_built=built.append)
        )
        await asyncio.wait_for(ready.wait(), LOADED)
        (op,) = built
        assert op.leadership.active and holder(sandbox) == op.leadership.identity
        path.cut()
        lost_after = await until(lambda: op.leadership.lost.is_set(), "the operator to stop acting")
        assert not op.kube.may_write()
        async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/readyz") as resp:
            assert resp.status == 503
        path.heal()  # too late: it does not come back by itself
        with pytest.raises(LeadershipLost):
            await asyncio.wait_for(run, LOADED)
        # Not before its renew deadline (counted from its last renewal, up to a look before the cut).
        assert lost_after >= TIMINGS.renew_deadline - TIMINGS.retry_period, lost_after
        print(f"\nstopped acting {lost_after:.1f} s after the cut (renew deadline {TIMINGS.renew_deadline:.1f} s)")
