"""The upstream Kubernetes control plane, built from the Go module proxy and run on loopback.

`build()` compiles kube-apiserver, kube-controller-manager and etcd from the Go module in
`controlplane/` (k8s.io/kubernetes at the release pinned in its go.mod; etcd at the version that
release requires) into `~/.cache/makima/control-plane/<release>/`, once per machine.
`ControlPlane` starts etcd, the API server (serving certificates, a service-account signing key,
`--authorization-mode=Node,RBAC`, the default admission plugins, which include PodSecurity) and
the controller manager (Job, garbage-collector, namespace, service-account controllers among
the defaults), writes an admin kubeconfig and starts the node agent that runs pods as local
processes. No kubelet, no scheduler, no container runtime: see docs/realcluster.md.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .pki import Pki, make_pki

MODULE = Path(__file__).resolve().parent / "controlplane"  # the Go module
BINARIES = ("kube-apiserver", "kube-controller-manager", "etcd")
SERVICE_CIDR = "10.0.0.0/24"
NODE_NAME = "makima-node"


class Unavailable(RuntimeError):
    """The control plane cannot be built or started on this machine (the message says why)."""


def release() -> str:
    """The Kubernetes release pinned in the Go module, e.g. `v1.36.3`."""
    match = re.search(r"^\s*k8s\.io/kubernetes (v\S+)", (MODULE / "go.mod").read_text(), re.M)
    if not match:
        raise Unavailable(f"no k8s.io/kubernetes requirement in {MODULE / 'go.mod'}")
    return match.group(1)


def cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return Path(os.environ.get("MAKIMA_CONTROL_PLANE_DIR") or base / "makima" / "control-plane") / release()


def built() -> Path | None:
    target = cache_dir()
    return target if all((target / b).is_file() for b in BINARIES) else None


def build(log: Any = None) -> Path:
    """Build the binaries into the cache (or reuse them); serialised by a lock file."""
    if (ready := built()) is not None:
        return ready
    go = shutil.which("go")
    if go is None:
        raise Unavailable("Go is not installed (needed once to build kube-apiserver, kube-controller-manager, etcd)")
    target = cache_dir()
    target.mkdir(parents=True, exist_ok=True)
    with (target / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (ready := built()) is not None:
            return ready
        staging = target / ".staging"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        env = {**os.environ, "GOTOOLCHAIN": "local", "GOFLAGS": "-mod=mod -buildvcs=false"}
        cmd = [
            go,
            "build",
            "-trimpath",
            "-ldflags=-s -w",
            "-o",
            str(staging) + "/",
            "k8s.io/kubernetes/cmd/kube-apiserver",
            "k8s.io/kubernetes/cmd/kube-controller-manager",
            "./etcd",
        ]
        started = time.monotonic()
        if log:
            log(f"building the control plane {release()} from the Go module proxy (once per machine) ...")
        done = subprocess.run(cmd, cwd=MODULE, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise Unavailable(f"go build failed:\n{done.stderr[-4000:]}")
        for name in BINARIES:
            os.replace(staging / name, target / name)
        staging.rmdir()
        if log:
            log(f"built in {time.monotonic() - started:.0f} s into {target}")
    return target


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def kubeconfig(server: str, ca: Path, user: dict[str, Any], namespace: str = "default", name: str = "local") -> str:
    """A kubeconfig (YAML text) for `server` with the given `user` entry."""
    return yaml.safe_dump(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": name, "cluster": {"server": server, "certificate-authority": str(ca)}}],
            "users": [{"name": name, "user": user}],
            "contexts": [{"name": name, "context": {"cluster": name, "user": name, "namespace": namespace}}],
            "current-context": name,
        }
    )


@dataclass
class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager + node agent under `root`."""

    root: Path
    bins: Path
    node_agent: bool = True
    # End with the process that started them (a killed pytest leaves no control plane behind);
    # `python -m tests.realcluster up` turns this off to leave them running.
    tied: bool = True
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    url: str = ""
    pki: Pki | None = None

    @property
    def kubeconfig(self) -> Path:
        return self.root / "admin.kubeconfig"

    @property
    def pod_dir(self) -> Path:
        return self.root / "pods"

    def ssl_context(self) -> ssl.SSLContext:
        assert self.pki is not None
        ctx = ssl.create_default_context(cafile=str(self.pki.ca.cert))
        ctx.load_cert_chain(str(self.pki.admin.cert), str(self.pki.admin.key))
        return ctx

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        logfile = (self.root / f"{name}.log").open("ab")
        self.procs[name] = subprocess.Popen(
            argv,
            stdout=logfile,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
            preexec_fn=_die_with_parent if self.tied else None,
        )
        logfile.close()
        (self.root / f"{name}.pid").write_text(str(self.procs[name].pid))

    def _log_tail(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def _wait(self, what: str, check: Any, timeout: float, procs: tuple[str, ...]) -> None:
        deadline = time.monotonic() + timeout
        while True:
            for name in procs:
                if self.procs[name].poll() is not None:
                    raise Unavailable(f"{name} exited ({self.procs[name].returncode}):\n{self._log_tail(name)}")
            if check():
                return
            if time.monotonic() > deadline:
                raise Unavailable(f"{what} not ready in {timeout:.0f} s:\n{self._log_tail(procs[-1])}")
            time.sleep(0.1)

    def get(self, path: str) -> tuple[int, Any]:
        req = urllib.request.Request(self.url + path, headers={"Accept": "application/json"})
        try:
            with urllib.request.urlopen(req, context=self.ssl_context(), timeout=5) as rsp:
                body = rsp.read()
                return rsp.status, json.loads(body) if body.startswith(b"{") else body.decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(errors="replace")
        except (OSError, urllib.error.URLError):
            return 0, None

    def start(self, timeout: float = 180.0) -> ControlPlane:
        self.root.mkdir(parents=True, exist_ok=True)
        self.pki = pki = make_pki(self.root / "pki")
        etcd_port, peer_port, api_port, kcm_port = free_port(), free_port(), free_port(), free_port()
        etcd_url = f"http://127.0.0.1:{etcd_port}"
        self._spawn(
            "etcd",
            [
                str(self.bins / "etcd"),
                "--name=local",
                f"--data-dir={self.root / 'etcd'}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-cluster=local=http://127.0.0.1:{peer_port}",
                "--unsafe-no-fsync",  # test data: durability is not the point, speed on busy disks is
                "--log-level=warn",
            ],
        )
        self.url = f"https://127.0.0.1:{api_port}"
        self._spawn(
            "kube-apiserver",
            [
                str(self.bins / "kube-apiserver"),
                f"--etcd-servers={etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={api_port}",
                f"--cert-dir={self.root / 'apiserver-certs'}",
                f"--tls-cert-file={pki.apiserver.cert}",
                f"--tls-private-key-file={pki.apiserver.key}",
                f"--client-ca-file={pki.ca.cert}",
                # `kubectl logs` goes through the API server to the node agent's log endpoint
                f"--kubelet-client-certificate={pki.admin.cert}",
                f"--kubelet-client-key={pki.admin.key}",
                f"--kubelet-certificate-authority={pki.ca.cert}",
                "--kubelet-preferred-address-types=InternalIP",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={pki.sa_public}",
                f"--service-account-signing-key-file={pki.sa_private}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--authorization-mode=Node,RBAC",
                "--enable-admission-plugins=NodeRestriction",  # added to the defaults (PodSecurity among them)
                "--allow-privileged=false",
                "--profiling=false",
                "--v=1",
            ],
        )
        self._write_kubeconfigs()
        self._wait("kube-apiserver", lambda: self.get("/readyz")[0] == 200, timeout, ("etcd", "kube-apiserver"))
        self._spawn(
            "kube-controller-manager",
            [
                str(self.bins / "kube-controller-manager"),
                f"--kubeconfig={self.root / 'controller-manager.kubeconfig'}",
                f"--authentication-kubeconfig={self.root / 'controller-manager.kubeconfig'}",
                f"--authorization-kubeconfig={self.root / 'controller-manager.kubeconfig'}",
                "--bind-address=127.0.0.1",
                f"--secure-port={kcm_port}",
                "--leader-elect=false",
                f"--service-account-private-key-file={pki.sa_private}",
                f"--root-ca-file={pki.ca.cert}",
                "--use-service-account-credentials=true",
                f"--cluster-signing-cert-file={pki.ca.cert}",
                f"--cluster-signing-key-file={pki.ca.key}",
                # no kubelet heartbeats here: the node agent's Node must not be tainted and evicted
                "--controllers=*,-nodelifecycle,-nodeipam",
                "--v=1",
            ],
        )
        # The service-account controller creating `default` is the sign that controllers run.
        self._wait(
            "kube-controller-manager",
            lambda: self.get("/api/v1/namespaces/default/serviceaccounts/default")[0] == 200,
            timeout,
            ("etcd", "kube-apiserver", "kube-controller-manager"),
        )
        if self.node_agent:
            self._spawn(
                "node-agent",
                [
                    sys.executable,
                    "-m",
                    "tests.realcluster.nodeagent",
                    "--kubeconfig",
                    str(self.root / "node-agent.kubeconfig"),
                    "--node",
                    NODE_NAME,
                    "--pod-dir",
                    str(self.pod_dir),
                    "--serving-cert",
                    str(pki.node.cert),
                    "--serving-key",
                    str(pki.node.key),
                    "--client-ca",
                    str(pki.ca.cert),
                ],
                env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
            )
            self._wait(
                "node agent",
                lambda: _node_ready(self.get(f"/api/v1/nodes/{NODE_NAME}")),
                timeout,
                ("kube-apiserver", "node-agent"),
            )
        return self

    def _write_kubeconfigs(self) -> None:
        assert self.pki is not None
        pki = self.pki
        admin = {"client-certificate": str(pki.admin.cert), "client-key": str(pki.admin.key)}
        kcm = {"client-certificate": str(pki.controller_manager.cert), "client-key": str(pki.controller_manager.key)}
        self.kubeconfig.write_text(kubeconfig(self.url, pki.ca.cert, admin))
        (self.root / "controller-manager.kubeconfig").write_text(kubeconfig(self.url, pki.ca.cert, kcm))
        # The node agent binds pods, reads Secrets of any namespace and writes pod status: admin rights.
        (self.root / "node-agent.kubeconfig").write_text(kubeconfig(self.url, pki.ca.cert, admin))

    def stop(self) -> None:
        for name in ("node-agent", "kube-controller-manager", "kube-apiserver", "etcd"):
            proc = self.procs.pop(name, None)
            if proc is None:
                continue
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the parent exits (Linux PR_SET_PDEATHSIG)."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG; test data only


def _node_ready(answer: tuple[int, Any]) -> bool:
    status, node = answer
    if status != 200 or not isinstance(node, dict):
        return False
    conditions = node.get("status", {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
