"""A stand-in Job controller: runs each Job's pod as a local process (sandbox cluster, a test double).

What a pod gets, instead of a container:
- argv: the first container's `command` + `args` (`$(VAR)` expanded); the image is ignored, so
  the program must exist on this machine (the current venv's bin dir comes first in PATH);
- env: PATH, HOME (a fresh directory), HOSTNAME (the pod name), the container's `env`
  (literal values, `secretKeyRef`, `configMapKeyRef`, `fieldRef` metadata.name/namespace)
  and `envFrom` (secretRef/configMapRef) — a missing Secret keeps the pod Pending with
  CreateContainerConfigError, as on a real node;
- cwd: a fresh temporary directory;
- volumes: `emptyDir`, `secret` and `configMap` volumes become directories; mountPaths are
  NOT honoured — each volume's directory is in env `MAKIMA_SANDBOX_MOUNT_<VOLUME_NAME>`
  (upper-cased, `-` -> `_`).
One pod at a time per Job (completions/parallelism > 1 are not emulated). A failed pod is
replaced until `backoffLimit` failures; `activeDeadlineSeconds` kills the pod.
Killing a pod (Job or pod deleted, deadline) is what a kubelet does: SIGTERM to the main
process's group, a grace period, SIGKILL. And when a pod's main process ends, for whatever
reason, every process of the pod ends with it, as with a container's PID namespace: each pod
process carries `MAKIMA_SANDBOX_POD=<pod uid>` in its environment, and whatever still carries
it (an agent in its own session, its background children) is killed.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import logging
import os
import secrets
import string
import sys
import time
from pathlib import Path
from typing import Any

from makima.dataplane.runner.proctree import end_group, end_marked
from makima_testing.sandbox import podenv
from makima_testing.sandbox.cluster import Cluster, now_iso
from makima_testing.sandbox.errors import ApiError
from makima_testing.sandbox.store import Event

log = logging.getLogger(__name__)

ENV_POD = "MAKIMA_SANDBOX_POD"
JOBS = ("batch", "jobs")
PODS = ("", "pods")


class JobController:
    def __init__(
        self,
        cluster: Cluster,
        workdir: Path,
        env: dict[str, str] | None = None,
        retry_delay: float = 0.2,
        kill_grace: float = 2.0,
    ) -> None:
        self.cluster = cluster
        self.workdir = workdir
        self.env = dict(env or {})
        self.retry_delay = retry_delay
        self.kill_grace = kill_grace
        self._jobs = cluster.resource("batch", "v1", "jobs")
        self._pods = cluster.resource("", "v1", "pods")
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._procs: dict[tuple[str, str], asyncio.subprocess.Process] = {}
        self._logs: dict[tuple[str, str], tuple[Path, bool]] = {}
        cluster.store.add_listener(self._on_event)

    # -- wiring ----------------------------------------------------------------------------------

    def _on_event(self, event: Event) -> None:
        meta = event.obj["metadata"]
        if event.key == JOBS:
            uid = meta["uid"]
            if event.type == "ADDED" and uid not in self._tasks and not event.obj.get("status", {}).get("conditions"):
                task = asyncio.get_running_loop().create_task(self._run_job(meta["namespace"], meta["name"], uid))
                self._tasks[uid] = task
                task.add_done_callback(functools.partial(self._forget, uid))
            elif event.type == "DELETED" and uid in self._tasks:
                self._tasks[uid].cancel()
        elif event.key == PODS and event.type == "DELETED":
            proc = self._procs.get((meta.get("namespace", ""), meta["name"]))
            if proc is not None and proc.returncode is None:
                asyncio.get_running_loop().create_task(self._kill(proc))

    def _forget(self, uid: str, _task: asyncio.Task[None]) -> None:
        self._tasks.pop(uid, None)

    def log(self, namespace: str, pod: str) -> tuple[str, bool] | None:
        """The pod's log so far, and whether its process still runs."""
        entry = self._logs.get((namespace, pod))
        if entry is None:
            return None
        path, running = entry
        return path.read_text(errors="replace") if path.exists() else "", running

    async def stop(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- one Job -------------------------------------------------------------------------------

    def _status(self, namespace: str, name: str, status: dict[str, Any]) -> bool:
        """Merge into the Job's status; False when the Job is gone."""
        try:
            self.cluster.patch(
                self._jobs, namespace, name, "application/merge-patch+json", {"status": status}, "status"
            )
        except ApiError as exc:
            if exc.code == 404:
                return False
            raise
        return True

    @staticmethod
    def _condition(kind: str, reason: str, message: str) -> dict[str, Any]:
        at = now_iso()
        return {
            "type": kind,
            "status": "True",
            "reason": reason,
            "message": message,
            "lastProbeTime": at,
            "lastTransitionTime": at,
        }

    async def _run_job(self, namespace: str, name: str, uid: str) -> None:
        job = self.cluster.get(self._jobs, namespace, name)
        spec = job["spec"]
        limit = int(spec.get("backoffLimit", 6))
        deadline_s = spec.get("activeDeadlineSeconds")
        deadline = time.monotonic() + float(deadline_s) if deadline_s is not None else None
        self._status(namespace, name, {"startTime": now_iso(), "active": 0})
        failures = 0
        while True:
            pod = self._create_pod(job)
            if not self._status(namespace, name, {"active": 1, "ready": 0}):
                return
            outcome = await self._run_pod(pod, deadline)
            if outcome == "Succeeded":
                done = now_iso()
                self._status(
                    namespace,
                    name,
                    {
                        "active": 0,
                        "ready": 0,
                        "succeeded": 1,
                        "completionTime": done,
                        "conditions": [
                            self._condition(
                                "SuccessCriteriaMet", "CompletionsReached", "Reached expected number of succeeded pods"
                            ),
                            self._condition(
                                "Complete", "CompletionsReached", "Reached expected number of succeeded pods"
                            ),
                        ],
                    },
                )
                return
            failures += 1
            if outcome == "DeadlineExceeded":
                reason, message = "DeadlineExceeded", "Job was active longer than specified deadline"
            elif failures > limit:
                reason, message = "BackoffLimitExceeded", "Job has reached the specified backoff limit"
            else:
                if not self._status(namespace, name, {"active": 0, "ready": 0, "failed": failures}):
                    return
                await asyncio.sleep(self.retry_delay)
                if deadline is not None and time.monotonic() >= deadline:
                    reason, message = "DeadlineExceeded", "Job was active longer than specified deadline"
                else:
                    continue
            self._status(
                namespace,
                name,
                {
                    "active": 0,
                    "ready": 0,
                    "failed": failures,
                    "conditions": [
                        self._condition("FailureTarget", reason, message),
                        self._condition("Failed", reason, message),
                    ],
                },
            )
            return

    def _create_pod(self, job: dict[str, Any]) -> dict[str, Any]:
        meta = job["metadata"]
        template = job["spec"].get("template", {})
        suffix = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(5))
        pod = {
            "metadata": {
                "name": f"{meta['name']}-{suffix}",
                "namespace": meta["namespace"],
                "labels": dict(template.get("metadata", {}).get("labels") or {}),
                "annotations": dict(template.get("metadata", {}).get("annotations") or {}),
                "ownerReferences": [
                    {
                        "apiVersion": "batch/v1",
                        "kind": "Job",
                        "name": meta["name"],
                        "uid": meta["uid"],
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
            },
            "spec": {**template.get("spec", {}), "nodeName": "sandbox"},
        }
        return self.cluster.create(self._pods, meta["namespace"], pod)

    def _pod_status(self, pod: dict[str, Any], status: dict[str, Any]) -> None:
        meta = pod["metadata"]
        with contextlib.suppress(ApiError):  # the pod may be gone already
            self.cluster.patch(
                self._pods,
                meta["namespace"],
                meta["name"],
                "application/merge-patch+json",
                {"status": status},
                "status",
            )

    # -- one pod -------------------------------------------------------------------------------

    async def _run_pod(self, pod: dict[str, Any], deadline: float | None) -> str:
        ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
        container = (pod["spec"].get("containers") or [{}])[0]
        cname = container.get("name", "main")
        root = self.workdir / ns / name
        (root / "work").mkdir(parents=True, exist_ok=True)
        (root / "home").mkdir(exist_ok=True)
        logfile = root / "log"
        logfile.touch()
        self._logs[(ns, name)] = (logfile, False)
        started = now_iso()
        while True:  # a missing Secret/ConfigMap keeps the pod waiting, as on a node
            try:
                env = self._env(pod, root)
                break
            except podenv.ConfigError as exc:
                self._pod_status(
                    pod,
                    {
                        "phase": "Pending",
                        "containerStatuses": [
                            {
                                "name": cname,
                                "ready": False,
                                "restartCount": 0,
                                "image": container.get("image", ""),
                                "state": {"waiting": {"reason": "CreateContainerConfigError", "message": str(exc)}},
                            }
                        ],
                    },
                )
                if deadline is not None and time.monotonic() >= deadline:
                    return "DeadlineExceeded"
                await asyncio.sleep(0.3)
        argv = [podenv.expand(a, env) for a in [*(container.get("command") or []), *(container.get("args") or [])]]
        if not container.get("command"):
            return self._finish(
                pod,
                cname,
                container,
                started,
                128,
                "StartError",
                "the sandbox ignores images: the container needs a `command`",
                logfile,
            )
        try:
            with logfile.open("ab") as out:
                proc = await asyncio.create_subprocess_exec(
                    *argv,
                    cwd=root / "work",
                    env=env,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=out,
                    stderr=asyncio.subprocess.STDOUT,
                    start_new_session=True,
                )
        except OSError as exc:
            return self._finish(pod, cname, container, started, 128, "StartError", str(exc), logfile)
        self._procs[(ns, name)] = proc
        self._logs[(ns, name)] = (logfile, True)
        self._pod_status(
            pod,
            {
                "phase": "Running",
                "startTime": started,
                "containerStatuses": [
                    {
                        "name": cname,
                        "ready": True,
                        "restartCount": 0,
                        "image": container.get("image", ""),
                        "started": True,
                        "state": {"running": {"startedAt": started}},
                    }
                ],
            },
        )
        try:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                code = await asyncio.wait_for(proc.wait(), timeout)
            except TimeoutError:
                await self._kill(proc)
                self._finish(
                    pod,
                    cname,
                    container,
                    started,
                    proc.returncode or 137,
                    "DeadlineExceeded",
                    "Pod was active on the node longer than the specified deadline",
                    logfile,
                )
                return "DeadlineExceeded"
        except asyncio.CancelledError:
            await asyncio.shield(self._kill(proc))
            self._logs[(ns, name)] = (logfile, False)
            raise
        finally:
            self._procs.pop((ns, name), None)
            await asyncio.shield(self._teardown(pod))
        reason = "Completed" if code == 0 else "Error"
        return self._finish(pod, cname, container, started, code, reason, "", logfile)

    def _finish(
        self,
        pod: dict[str, Any],
        cname: str,
        container: dict[str, Any],
        started: str,
        code: int,
        reason: str,
        message: str,
        logfile: Path,
    ) -> str:
        ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
        if message and reason == "StartError":
            with logfile.open("a") as out:
                out.write(f"sandbox: {message}\n")
        self._logs[(ns, name)] = (logfile, False)
        phase = "Succeeded" if code == 0 else "Failed"
        terminated = {"exitCode": code, "reason": reason, "startedAt": started, "finishedAt": now_iso()}
        if message:
            terminated["message"] = message
        self._pod_status(
            pod,
            {
                "phase": phase,
                "containerStatuses": [
                    {
                        "name": cname,
                        "ready": False,
                        "restartCount": 0,
                        "image": container.get("image", ""),
                        "started": False,
                        "state": {"terminated": terminated},
                    }
                ],
            },
        )
        return phase

    async def _teardown(self, pod: dict[str, Any]) -> None:
        """The pod's main process is gone: nothing else of the pod may live on."""
        survivors = await end_marked(ENV_POD, pod["metadata"]["uid"], grace=self.kill_grace)
        if survivors:
            log.warning("pod %s: processes survived SIGKILL: %s", pod["metadata"]["name"], sorted(survivors))

    async def _kill(self, proc: asyncio.subprocess.Process) -> None:
        """SIGTERM the process group, then SIGKILL after a short grace."""
        await end_group(proc, self.kill_grace)

    # -- env and volumes -------------------------------------------------------------------------

    def _data(self, pod: dict[str, Any]) -> dict[podenv.Ref, dict[str, str] | None]:
        """The decoded data of every Secret/ConfigMap the pod names (None where one is missing)."""
        ns = pod["metadata"]["namespace"]
        found: dict[podenv.Ref, dict[str, str] | None] = {}
        for kind, name in podenv.references(pod):
            try:
                obj = self.cluster.get(self.cluster.resource("", "v1", kind), ns, name)
            except ApiError:
                found[(kind, name)] = None
                continue
            raw = obj.get("data") or {}
            if kind == "secrets":
                found[(kind, name)] = {k: base64.b64decode(v).decode(errors="replace") for k, v in raw.items()}
            else:
                found[(kind, name)] = dict(raw)
        return found

    def _env(self, pod: dict[str, Any], root: Path) -> dict[str, str]:
        base = {
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "/usr/bin:/bin")]),
            "HOME": str(root / "home"),
            "HOSTNAME": pod["metadata"]["name"],
            "LANG": os.environ.get("LANG", "C.UTF-8"),
            **self.env,
            ENV_POD: pod["metadata"]["uid"],
        }
        data = self._data(pod)
        volumes = podenv.write_volumes(pod, data, root / "volumes")
        return podenv.environment(pod, data, base, "sandbox", volumes)
