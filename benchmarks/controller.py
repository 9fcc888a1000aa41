"""The controller's own cost per directive as the number of directives grows (in-process).

No cluster, no database: the Kubernetes gateway and the task store are test doubles that
answer at once (they count their calls), so what is measured is only the controller's
bookkeeping — the part that was quadratic. For N directives of `--steps` Succeeded steps
each (their Completed status already written), it measures:

- `ingest`: one event reconcile per directive, each writing one step status (the
  controller's own write, then the watch's copy of it arriving), CPU seconds per directive;
- `idle`: one timer tick over every directive, CPU seconds per directive, and the store
  queries and Kubernetes calls made by it.

    python benchmarks/controller.py [--sizes 100 500 2000] [--steps 25] [--profile]

`--profile` runs the largest size under pyinstrument and prints where the time goes.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from makima.control.controller import Controller
from makima.core import naming
from makima.core.reconcile import ReconcileConfig
from makima.core.tasks import Task, TaskKind, TaskState

NOW = datetime(2026, 1, 1, tzinfo=UTC)


class FakeKube:
    """Test double of `Kube`: status patches return the patched object with a new resourceVersion."""

    directive: Any  # set by build(): the controller's copy of a directive

    def __init__(self, objects: dict[tuple[str, str], dict[str, Any]]) -> None:
        self.objects = objects
        self.calls = 0
        self.rv = 10_000_000

    async def patch_status(self, plural: str, namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
        self.calls += 1
        self.rv += 1
        obj = (
            copy.deepcopy(self.objects[(namespace, name)])
            if plural != "directives"
            else copy.deepcopy(self.directive(namespace, name))
        )
        obj.setdefault("status", {}).update({k: v for k, v in status.items() if v is not None})
        obj["metadata"]["resourceVersion"] = str(self.rv)
        self.objects[(namespace, name)] = obj
        return obj

    async def emit_event(self, obj: dict[str, Any], type_: str, reason: str, message: str) -> None:
        self.calls += 1


class FakeDispatcher:
    """Test double of `TaskDispatcher`: a completion task is stored as running, not launched."""

    def __init__(self, tasks: dict[str, list[Task]]) -> None:
        self.tasks = tasks

    async def start_completion(self, directive: Any, action: Any) -> None:
        uid = directive.metadata.uid
        task = Task(
            id=action.task_id,
            kind=TaskKind.COMPLETION,
            namespace=directive.metadata.namespace,
            directive_uid=uid,
            directive_name=directive.metadata.name,
            attempt=action.attempt,
            generation=action.generation,
            state=TaskState.RUNNING,
            version=3,
            created_at=NOW,
            started_at=NOW,
            heartbeat_at=NOW,
        )
        self.tasks[uid] = [*self.tasks[uid], task]


class FakeStore:
    """Test double of `TaskStore`: each directive's tasks from memory, queries counted."""

    def __init__(self, tasks: dict[str, list[Task]]) -> None:
        self.tasks = tasks
        self.queries = 0

    async def tasks_for_directive(self, uid: str) -> list[Task]:
        self.queries += 1
        return self.tasks.get(uid, [])


def build(n: int, steps: int) -> tuple[Controller, dict[tuple[str, str], list[dict[str, Any]]], FakeKube, FakeStore]:
    index: dict[tuple[str, str], list[dict[str, Any]]] = {}
    objects: dict[tuple[str, str], dict[str, Any]] = {}
    tasks: dict[str, list[Task]] = {}
    rv = 1
    directives = []
    for d in range(n):
        name, uid = f"d{d}", f"uid-{d}"
        plan_id = naming.planning_task_id(uid, 1)
        done = NOW.isoformat()
        tasks[uid] = [
            Task(
                id=plan_id,
                kind=TaskKind.PLANNING,
                namespace="bench",
                directive_uid=uid,
                directive_name=name,
                state=TaskState.SUCCEEDED,
                version=3,
                created_at=NOW,
                finished_at=NOW,
            )
        ]
        body = {
            "apiVersion": "makima.dev/v1alpha1",
            "kind": "Directive",
            "metadata": {"name": name, "namespace": "bench", "uid": uid, "generation": 1, "resourceVersion": str(rv)},
            "spec": {"title": "t", "goal": "g", "repository": {"url": "https://example.com/r.git"}},
            "status": {"phase": "Executing", "planGeneration": 1, "planningTask": plan_id},
        }
        rv += 1
        directives.append(body)
        for s in range(steps):
            obj_name = naming.step_object_name(name, f"s{s}")
            last = s == steps - 1  # its task succeeded; the step still says Running (one write to do)
            status: dict[str, Any] = {"phase": "Succeeded", "attempts": 1, "finishedAt": done}
            if last:
                tid = naming.step_task_id(f"{uid}-s{s}", 1)
                status = {"phase": "Running", "attempts": 1, "task": {"id": tid, "executor": "job"}}
                tasks[uid].append(
                    Task(
                        id=tid,
                        kind=TaskKind.STEP,
                        namespace="bench",
                        directive_uid=uid,
                        directive_name=name,
                        step_uid=f"{uid}-s{s}",
                        step_name=f"s{s}",
                        state=TaskState.SUCCEEDED,
                        version=4,
                        created_at=NOW,
                        finished_at=NOW,
                        result={"outcome": "succeeded", "branch": f"b{s}", "commit": "c" * 40},
                    )
                )
            obj = {
                "apiVersion": "makima.dev/v1alpha1",
                "kind": "DirectiveStep",
                "metadata": {
                    "name": obj_name,
                    "namespace": "bench",
                    "uid": f"{uid}-s{s}",
                    "resourceVersion": str(rv),
                    "labels": naming.step_labels(name, f"s{s}"),
                },
                "spec": {"directive": name, "title": f"s{s}", "orderIndex": s, "generation": 1},
                "status": status,
            }
            rv += 1
            index.setdefault(("bench", name), []).append(obj)
            objects[("bench", obj_name)] = obj
    kube, store = FakeKube(objects), FakeStore(tasks)
    c = Controller(
        kube,
        store,
        FakeDispatcher(tasks),
        ReconcileConfig(),
        steps_source=lambda key: index.get(key, []),
        clock=lambda: NOW,
    )  # type: ignore[arg-type]
    c.steps_index = index
    for body in directives:
        c.observe_directive(body)
    kube.directive = lambda ns, name: c.directives[(ns, name)]
    return c, index, kube, store


async def measure(n: int, steps: int) -> dict[str, float]:
    c, index, kube, store = build(n, steps)
    keys = list(c.directives)
    # Ingest: every directive reconciles once on an event and writes its status; the watch
    # then delivers the controller's own writes (the step objects it patched).
    cpu0 = time.process_time()
    for key in keys:
        await c.trigger(key, "event")
    for key in keys:  # the watch catches up: index copies replace the objects
        index[key] = [kube.objects[(key[0], o["metadata"]["name"])] for o in index[key]]
        if hasattr(c, "step_seen"):
            for o in index[key]:
                c.step_seen(o)
    ingest = time.process_time() - cpu0
    # One full timer tick to settle (each directive's first quiet check), then the measured one.
    for key in keys:
        await c.trigger(key, "timer")
    q0, k0 = store.queries, kube.calls
    cpu0 = time.process_time()
    for key in keys:
        await c.trigger(key, "timer")
    idle = time.process_time() - cpu0
    for state in c._keys.values():  # retry wake-ups scheduled by the runs: not part of this
        if state.wakeup is not None:
            state.wakeup.cancel()
    for job in list(c._background):
        job.cancel()
    await asyncio.gather(*c._background, return_exceptions=True)
    return {
        "n": n,
        "ingest_cpu_per_directive_ms": 1000 * ingest / n,
        "idle_cpu_per_directive_ms": 1000 * idle / n,
        "idle_queries_per_directive": (store.queries - q0) / n,
        "idle_kube_calls_per_directive": (kube.calls - k0) / n,
        "kube_calls_ingest": k0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 500, 2000])
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    rows = []
    for n in args.sizes:
        if args.profile and n == max(args.sizes):
            from pyinstrument import Profiler

            with Profiler() as profiler:
                rows.append(asyncio.run(measure(n, args.steps)))
            print(profiler.output_text(unicode=False, color=False, show_all=False))
        else:
            rows.append(asyncio.run(measure(n, args.steps)))
    if args.json:
        args.json.write_text(json.dumps({"rows": rows}, indent=2))
    print(f"{'directives':>10} {'ingest ms/dir':>14} {'idle ms/dir':>12} {'idle SQL/dir':>13} {'idle API/dir':>13}")
    for r in rows:
        print(
            f"{r['n']:>10} {r['ingest_cpu_per_directive_ms']:>14.3f} {r['idle_cpu_per_directive_ms']:>12.3f} "
            f"{r['idle_queries_per_directive']:>13.2f} {r['idle_kube_calls_per_directive']:>13.2f}"
        )


if __name__ == "__main__":
    main()
