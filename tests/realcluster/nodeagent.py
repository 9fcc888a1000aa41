"""A node agent for the local control plane: pods run as local processes (a test double of a kubelet).

It registers one Node, binds every unscheduled pod to it (there is no scheduler), and for each
pod bound to it runs the first container's `command` + `args` (with `$(VAR)` expanded) as a local
process in its own session, with the container's env resolved through the API (literal values,
`secretKeyRef`, `configMapKeyRef`, `fieldRef` for the pod's name, namespace, uid and node; `envFrom`).
It reports phase, conditions and container state through `pods/status`, kills the process group
when the pod is deleted and then removes the pod (a kubelet's final delete), and keeps each pod's
output in `<pod-dir>/<namespace>/<pod>/log`.

What it does not do, unlike a kubelet: images are ignored (the program must exist on this
machine; the Python environment's bin directory comes first in PATH); mountPaths are not honoured
(each volume is a directory, named in env `MAKIMA_SANDBOX_MOUNT_<VOLUME>`, and a container whose
workingDir is a volume's mountPath starts in that directory); one container per pod (init and
sidecar containers are ignored); the process runs as this user, not `runAsUser`; no probes, no
restarts (`restartPolicy` is treated as Never), no resource limits, no `kubectl exec`/`port-forward`.
`kubectl logs` works: the agent serves the kubelet's `containerLogs` endpoint (with `follow` and
`tailLines`) over TLS to the API server, which it authenticates by client certificate.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime
import json
import logging
import os
import signal
import ssl
import sys
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web

from makima.dataplane.runner.proctree import end_group, end_marked
from makima_testing.sandbox import podenv
from makima_testing.sandbox.jobs import ENV_POD

log = logging.getLogger("node-agent")


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def connection(kubeconfig: Path) -> tuple[str, ssl.SSLContext]:
    cfg = yaml.safe_load(kubeconfig.read_text())
    cluster = cfg["clusters"][0]["cluster"]
    user = cfg["users"][0]["user"]
    ctx = ssl.create_default_context(cafile=cluster["certificate-authority"])
    ctx.load_cert_chain(user["client-certificate"], user["client-key"])
    return cluster["server"], ctx


class NodeAgent:
    def __init__(
        self, server: str, ctx: ssl.SSLContext, node: str, pod_dir: Path, kill_grace: float = 5.0, log_port: int = 0
    ) -> None:
        self.log_port = log_port
        self.server = server
        self.ctx = ctx
        self.node = node
        self.pod_dir = pod_dir
        self.kill_grace = kill_grace
        self.session: aiohttp.ClientSession | None = None
        self.running: dict[str, asyncio.Task[None]] = {}  # pod uid -> its task
        self.procs: dict[str, asyncio.subprocess.Process] = {}
        self.names: dict[str, tuple[str, str]] = {}  # uid -> (namespace, name) of a running process
        self.finished: set[str] = set()
        self.killing: dict[str, asyncio.Task[None]] = {}

    # -- API ---------------------------------------------------------------------------------

    async def call(self, method: str, path: str, body: Any = None, ctype: str = "application/json") -> tuple[int, Any]:
        assert self.session is not None
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            headers["Content-Type"] = ctype
            data = json.dumps(body)
        async with self.session.request(method, self.server + path, data=data, headers=headers, ssl=self.ctx) as rsp:
            text = await rsp.text()
            return rsp.status, json.loads(text) if text.startswith("{") else text

    async def register(self) -> None:
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.node,
                "labels": {"kubernetes.io/hostname": self.node, "kubernetes.io/os": "linux"},
            },
        }
        status, body = await self.call("POST", "/api/v1/nodes", node)
        if status not in (201, 409):
            raise RuntimeError(f"cannot register node: {status} {body}")
        ready = {
            "type": "Ready",
            "status": "True",
            "reason": "KubeletReady",
            "message": "makima node agent (pods run as local processes)",
            "lastHeartbeatTime": now(),
            "lastTransitionTime": now(),
        }
        capacity = {"cpu": str(os.cpu_count() or 2), "memory": "16Gi", "pods": "500"}
        patch = {
            "status": {
                "conditions": [ready],
                "capacity": capacity,
                "allocatable": capacity,
                "daemonEndpoints": {"kubeletEndpoint": {"Port": self.log_port}},
                "addresses": [
                    {"type": "InternalIP", "address": "127.0.0.1"},
                    {"type": "Hostname", "address": self.node},
                ],
                "nodeInfo": {
                    "machineID": "",
                    "systemUUID": "",
                    "bootID": "",
                    "kernelVersion": os.uname().release,
                    "osImage": "local processes",
                    "containerRuntimeVersion": "makima-node-agent://0",
                    "kubeletVersion": "",
                    "kubeProxyVersion": "",
                    "operatingSystem": "linux",
                    "architecture": "amd64",
                },
            }
        }
        status, body = await self.call(
            "PATCH", f"/api/v1/nodes/{self.node}/status", patch, "application/strategic-merge-patch+json"
        )
        if status != 200:
            raise RuntimeError(f"cannot set node status: {status} {body}")

    # -- the pod loop -------------------------------------------------------------------------

    async def run(self) -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=10)) as session:
            self.session = session
            await self.register()
            while True:
                try:
                    await self._list_and_watch()
                except (aiohttp.ClientError, TimeoutError, json.JSONDecodeError) as exc:
                    log.warning("pod watch interrupted (%s); listing again", exc)
                    await asyncio.sleep(0.5)

    async def _list_and_watch(self) -> None:
        status, listing = await self.call("GET", "/api/v1/pods")
        if status != 200:
            raise aiohttp.ClientError(f"list pods: {status}")
        for pod in listing["items"]:
            await self.handle(pod)
        rv = listing["metadata"]["resourceVersion"]
        assert self.session is not None
        params = {"watch": "1", "resourceVersion": rv, "allowWatchBookmarks": "true", "timeoutSeconds": "300"}
        async with self.session.get(self.server + "/api/v1/pods", params=params, ssl=self.ctx) as rsp:
            if rsp.status != 200:
                raise aiohttp.ClientError(f"watch pods: {rsp.status}")
            async for line in rsp.content:
                if not line.strip():
                    continue
                event = json.loads(line)
                if event["type"] == "ERROR":
                    return  # 410 Gone and the like: list again
                if event["type"] in ("ADDED", "MODIFIED"):
                    await self.handle(event["object"])

    async def handle(self, pod: dict[str, Any]) -> None:
        meta, spec = pod["metadata"], pod["spec"]
        uid = meta["uid"]
        node = spec.get("nodeName")
        if not node:
            if not meta.get("deletionTimestamp"):
                await self.bind(pod)
            return
        if node != self.node:
            return
        if meta.get("deletionTimestamp"):
            if uid not in self.running:
                await self.remove(pod)
            else:
                proc = self.procs.get(uid)
                if proc is not None and uid not in self.killing:
                    self.killing[uid] = asyncio.create_task(self.kill(proc))
                    self.killing[uid].add_done_callback(lambda _t: self.killing.pop(uid, None))
            return
        phase = pod.get("status", {}).get("phase", "Pending")
        if uid in self.running or uid in self.finished or phase in ("Succeeded", "Failed"):
            return
        task = asyncio.create_task(self.run_pod(pod))
        self.running[uid] = task
        task.add_done_callback(lambda _t: self.running.pop(uid, None))

    async def bind(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        binding = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
            "target": {"apiVersion": "v1", "kind": "Node", "name": self.node},
        }
        status, body = await self.call(
            "POST", f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/binding", binding
        )
        if status not in (201, 409, 404):
            log.warning("cannot bind %s/%s: %s %s", meta["namespace"], meta["name"], status, body)

    async def remove(self, pod: dict[str, Any]) -> None:
        """The kubelet's final delete, once the containers are gone."""
        meta = pod["metadata"]
        body = {"gracePeriodSeconds": 0, "preconditions": {"uid": meta["uid"]}}
        await self.call("DELETE", f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}", body)

    async def set_status(self, pod: dict[str, Any], status: dict[str, Any]) -> None:
        meta = pod["metadata"]
        path = f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/status"
        code, body = await self.call("PATCH", path, {"status": status}, "application/merge-patch+json")
        if code not in (200, 404):
            log.warning("pod status %s/%s: %s %s", meta["namespace"], meta["name"], code, body)

    # -- one pod ------------------------------------------------------------------------------

    async def run_pod(self, pod: dict[str, Any]) -> None:
        meta, spec = pod["metadata"], pod["spec"]
        uid = meta["uid"]
        container = (spec.get("containers") or [{}])[0]
        root = self.pod_dir / meta["namespace"] / meta["name"]
        (root / "home").mkdir(parents=True, exist_ok=True)
        logfile = root / "log"
        logfile.touch()
        started = now()
        while True:
            try:
                env, volumes = await self.environment(pod, root)
                break
            except podenv.ConfigError as exc:
                await self.set_status(
                    pod,
                    self._container_status(pod, container, started, waiting=("CreateContainerConfigError", str(exc))),
                )
                status, current = await self.call("GET", f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}")
                if status == 404 or (status == 200 and current["metadata"].get("deletionTimestamp")):
                    self.finished.add(uid)
                    if status == 200:
                        await self.remove(current)
                    return
                await asyncio.sleep(0.5)
        argv = [podenv.expand(a, env) for a in [*(container.get("command") or []), *(container.get("args") or [])]]
        cwd = podenv.working_dir(pod, volumes, root / "work")
        cwd.mkdir(parents=True, exist_ok=True)
        if not container.get("command"):
            await self.finish(
                pod, container, started, 128, "StartError", "the node agent ignores images: set a command"
            )
            return
        try:
            with logfile.open("ab") as out:
                proc = await asyncio.create_subprocess_exec(
                    *argv,
                    cwd=cwd,
                    env=env,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=out,
                    stderr=asyncio.subprocess.STDOUT,
                    start_new_session=True,
                )
        except OSError as exc:
            await self.finish(pod, container, started, 128, "StartError", str(exc))
            return
        self.procs[uid] = proc
        self.names[uid] = (meta["namespace"], meta["name"])
        try:
            await self.set_status(pod, self._container_status(pod, container, started, running=True))
            code = await proc.wait()
        finally:
            self.procs.pop(uid, None)
            self.names.pop(uid, None)
            # Nothing of a pod outlives its main process (a container's PID namespace ends with it).
            survivors = await end_marked(ENV_POD, uid, grace=self.kill_grace)
            if survivors:
                log.warning("pod %s: processes survived SIGKILL: %s", meta["name"], sorted(survivors))
        reason = "Completed" if code == 0 else "Error"
        await self.finish(pod, container, started, 128 - code if code < 0 else code, reason, "")

    async def finish(
        self, pod: dict[str, Any], container: dict[str, Any], started: str, code: int, reason: str, message: str
    ) -> None:
        self.finished.add(pod["metadata"]["uid"])
        await self.set_status(pod, self._container_status(pod, container, started, terminated=(code, reason, message)))
        # A pod deleted while it ran is removed now that its process is gone.
        status, current = await self.call(
            "GET", f"/api/v1/namespaces/{pod['metadata']['namespace']}/pods/{pod['metadata']['name']}"
        )
        if status == 200 and current["metadata"].get("deletionTimestamp"):
            await self.remove(current)

    def _container_status(
        self,
        pod: dict[str, Any],
        container: dict[str, Any],
        started: str,
        *,
        waiting: tuple[str, str] | None = None,
        running: bool = False,
        terminated: tuple[int, str, str] | None = None,
    ) -> dict[str, Any]:
        name = container.get("name", "main")
        state: dict[str, Any]
        phase = "Pending"
        if waiting:
            state = {"waiting": {"reason": waiting[0], "message": waiting[1]}}
        elif running:
            state, phase = {"running": {"startedAt": started}}, "Running"
        else:
            assert terminated is not None
            code, reason, message = terminated
            state = {"terminated": {"exitCode": code, "reason": reason, "startedAt": started, "finishedAt": now()}}
            if message:
                state["terminated"]["message"] = message
            phase = "Succeeded" if code == 0 else "Failed"

        def cond(kind: str, ok: bool) -> dict[str, Any]:
            return {"type": kind, "status": "True" if ok else "False", "lastTransitionTime": now()}

        return {
            "phase": phase,
            "hostIP": "127.0.0.1",
            "podIP": "127.0.0.1",
            "startTime": started,
            "conditions": [
                cond("PodScheduled", True),
                cond("Initialized", True),
                cond("ContainersReady", running),
                cond("Ready", running),
            ],
            "containerStatuses": [
                {
                    "name": name,
                    "image": container.get("image", ""),
                    "imageID": "",
                    "ready": running,
                    "started": running,
                    "restartCount": 0,
                    "state": state,
                }
            ],
        }

    async def kill(self, proc: asyncio.subprocess.Process) -> None:
        """SIGTERM the process group, SIGKILL after the grace period."""
        await end_group(proc, self.kill_grace)

    # -- env and volumes ----------------------------------------------------------------------

    async def data(self, pod: dict[str, Any]) -> dict[podenv.Ref, dict[str, str] | None]:
        """The decoded data of every Secret/ConfigMap the pod names (None where one is missing)."""
        ns = pod["metadata"]["namespace"]
        found: dict[podenv.Ref, dict[str, str] | None] = {}
        for kind, name in podenv.references(pod):
            status, obj = await self.call("GET", f"/api/v1/namespaces/{ns}/{kind}/{name}")
            raw = (obj.get("data") or {}) if status == 200 else None
            if raw is not None and kind == "secrets":
                raw = {k: base64.b64decode(v).decode(errors="replace") for k, v in raw.items()}
            found[(kind, name)] = raw
        return found

    async def environment(self, pod: dict[str, Any], root: Path) -> tuple[dict[str, str], dict[str, Path]]:
        base = {
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "/usr/bin:/bin")]),
            "HOME": str(root / "home"),
            "HOSTNAME": pod["metadata"]["name"],
            "LANG": os.environ.get("LANG", "C.UTF-8"),
            ENV_POD: pod["metadata"]["uid"],  # marks every process of the pod, for its teardown
        }
        data = await self.data(pod)
        volumes = podenv.write_volumes(pod, data, root / "volumes")
        return podenv.environment(pod, data, base, self.node, volumes), volumes


def log_app(agent: NodeAgent) -> web.Application:
    """The kubelet's `containerLogs` endpoint, which the API server proxies `kubectl logs` to."""

    async def container_logs(request: web.Request) -> web.StreamResponse:
        ns, pod = request.match_info["namespace"], request.match_info["pod"]
        path = agent.pod_dir / ns / pod / "log"
        if not path.exists():
            raise web.HTTPNotFound(text=f"no log for {ns}/{pod} on this node")
        rsp = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await rsp.prepare(request)
        text = path.read_bytes()
        tail = request.query.get("tailLines")
        if tail is not None:
            lines = text.splitlines(keepends=True)
            text = b"".join(lines[-int(tail) :]) if int(tail) > 0 else b""
        await rsp.write(text)
        offset = path.stat().st_size
        if request.query.get("follow") == "true":
            while True:
                running = _pod_running(agent, ns, pod)
                size = path.stat().st_size
                if size > offset:
                    with path.open("rb") as f:
                        f.seek(offset)
                        await rsp.write(f.read(size - offset))
                    offset = size
                elif not running:
                    break
                await asyncio.sleep(0.2)
        await rsp.write_eof()
        return rsp

    app = web.Application()
    app.router.add_get("/containerLogs/{namespace}/{pod}/{container}", container_logs)
    return app


def _pod_running(agent: NodeAgent, namespace: str, pod: str) -> bool:
    return any(key == (namespace, pod) for key in agent.names.values())


def pod_log(pod_dir: Path, namespace: str, pod: str) -> str:
    """A pod's output so far ('' when it has not started)."""
    path = pod_dir / namespace / pod / "log"
    return path.read_text(errors="replace") if path.exists() else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubeconfig", type=Path, required=True)
    parser.add_argument("--node", default="makima-node")
    parser.add_argument("--pod-dir", type=Path, required=True)
    parser.add_argument("--serving-cert", type=Path, required=True)
    parser.add_argument("--serving-key", type=Path, required=True)
    parser.add_argument("--client-ca", type=Path, required=True, help="CA of the API server's client certificate")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    server, ctx = connection(args.kubeconfig)

    async def serve() -> None:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(args.client_ca))
        tls.load_cert_chain(str(args.serving_cert), str(args.serving_key))
        tls.verify_mode = ssl.CERT_REQUIRED
        agent = NodeAgent(server, ctx, args.node, args.pod_dir)
        runner_app = web.AppRunner(log_app(agent), access_log=None)
        await runner_app.setup()
        site = web.TCPSite(runner_app, "127.0.0.1", 0, ssl_context=tls)
        await site.start()
        agent.log_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        runner = asyncio.create_task(agent.run())
        await asyncio.wait({runner, asyncio.create_task(stop.wait())}, return_when=asyncio.FIRST_COMPLETED)
        for proc in list(agent.procs.values()):
            await agent.kill(proc)
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
        if runner.done() and not runner.cancelled() and runner.exception():
            raise runner.exception()  # type: ignore[misc]

    asyncio.run(serve())


if __name__ == "__main__":
    main()
