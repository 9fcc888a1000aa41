"""The Job path: on the sandbox a stand-in controller runs the pod as a local process."""

from __future__ import annotations

import os
import time
from typing import Any

import pytest

from tests.support.wait import eventually

from .conftest import Kube

IMAGE = "python:3.12-alpine"  # used by a real cluster only; the sandbox ignores images


def job(name: str, script: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": 0,
            **spec,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [
                        {
                            "name": "main",
                            "image": IMAGE,
                            "command": ["python", "-c", script],
                            "env": [
                                {"name": "PLAIN", "value": "plain-value"},
                                {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
                            ],
                        }
                    ],
                }
            },
        },
    }


async def _finished(kube: Kube, name: str, timeout: float = 60) -> dict[str, Any]:
    path = kube.ns("jobs", name, group_version="/apis/batch/v1")
    result: dict[str, Any] = {}

    async def done() -> bool:
        result.update(await kube.get(path))
        conditions = result.get("status", {}).get("conditions", [])
        return any(c["type"] in ("Complete", "Failed") and c["status"] == "True" for c in conditions)

    await eventually(done, f"Job {name} finished", timeout)
    return result


def _condition(obj: dict[str, Any], kind: str) -> dict[str, Any] | None:
    return next((c for c in obj["status"].get("conditions", []) if c["type"] == kind), None)


async def _secret(kube: Kube) -> None:
    await kube.post(
        kube.ns("secrets", group_version="/api/v1"), {"metadata": {"name": "creds"}, "stringData": {"token": "s3cret"}}
    )


async def test_job_completes_with_env_from_secret(kube: Kube) -> None:
    await _secret(kube)
    script = "import os; print('token=' + os.environ['TOKEN'], 'plain=' + os.environ['PLAIN'])"
    await kube.post(kube.ns("jobs", group_version="/apis/batch/v1"), job("ok", script))
    done = await _finished(kube, "ok")
    assert _condition(done, "Complete") and done["status"]["succeeded"] == 1
    assert done["status"]["startTime"] and done["status"]["completionTime"]
    pods = await kube.get(kube.ns("pods", group_version="/api/v1"), params={"labelSelector": "job-name=ok"})
    assert len(pods["items"]) == 1
    pod = pods["items"][0]
    assert pod["metadata"]["labels"]["batch.kubernetes.io/job-name"] == "ok"
    assert pod["metadata"]["ownerReferences"][0]["uid"] == done["metadata"]["uid"]
    assert pod["status"]["phase"] == "Succeeded"
    log = await kube.get(kube.ns("pods", pod["metadata"]["name"], group_version="/api/v1") + "/log", accept="*/*")
    assert "token=s3cret plain=plain-value" in log


async def test_job_fails_after_backoff_limit(kube: Kube) -> None:
    await _secret(kube)
    await kube.post(kube.ns("jobs", group_version="/apis/batch/v1"), job("bad", "raise SystemExit(3)", backoffLimit=1))
    done = await _finished(kube, "bad", timeout=120)
    failed = _condition(done, "Failed")
    assert failed and failed["reason"] == "BackoffLimitExceeded"
    assert done["status"]["failed"] == 2 and not done["status"].get("succeeded")


async def test_job_active_deadline_kills_it(kube: Kube) -> None:
    await _secret(kube)
    started = time.monotonic()
    spec = job("slow", "import time; time.sleep(60)", activeDeadlineSeconds=2)
    await kube.post(kube.ns("jobs", group_version="/apis/batch/v1"), spec)
    done = await _finished(kube, "slow")
    failed = _condition(done, "Failed")
    assert failed and failed["reason"] == "DeadlineExceeded"
    assert time.monotonic() - started < 30


async def test_job_deletion_kills_its_process(kube: Kube) -> None:
    if not kube.endpoint.local_pods:
        pytest.skip("the pod's process runs on a remote node: not observable from here")
    await _secret(kube)
    script = "import os, time; print(os.getpid(), flush=True); time.sleep(60)"
    await kube.post(kube.ns("jobs", group_version="/apis/batch/v1"), job("long", script))

    async def running() -> bool:
        pods = await kube.get(kube.ns("pods", group_version="/api/v1"), params={"labelSelector": "job-name=long"})
        return bool(pods["items"]) and pods["items"][0]["status"].get("phase") == "Running"

    await eventually(running, "the pod Running", 15)
    pods = await kube.get(kube.ns("pods", group_version="/api/v1"), params={"labelSelector": "job-name=long"})
    pod_log = kube.ns("pods", pods["items"][0]["metadata"]["name"], group_version="/api/v1") + "/log"
    pid = 0

    async def printed() -> bool:
        nonlocal pid
        text = await kube.get(pod_log, accept="*/*")
        pid = int(text.split()[0]) if text.strip() else 0
        return pid > 0

    await eventually(printed, "the pod printed its pid", 15)
    await kube.delete(kube.ns("jobs", "long", group_version="/apis/batch/v1"), {"propagationPolicy": "Background"})

    async def pods_gone() -> bool:
        pods = await kube.get(kube.ns("pods", group_version="/api/v1"), params={"labelSelector": "job-name=long"})
        return not pods["items"]

    await eventually(pods_gone, "the pods of the deleted Job gone", 15)

    async def killed() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False

    await eventually(killed, "the pod's process ended", 15)


async def test_deleting_a_job_ends_every_process_of_its_pod(kube: Kube) -> None:
    """Issue 17 item 3, the sandbox side: a pod's processes end with it, as with a container's
    PID namespace, even one that left the pod's process group (setsid). Survivors are looked
    up in /proc by a random mark in their environment."""
    if kube.real:
        pytest.skip("what a node does with a pod's processes is not observable through the API")
    import uuid

    from tests.runner.test_process_tree import marked

    await _secret(kube)
    mark = uuid.uuid4().hex
    script = (
        "import os, subprocess, sys, time\n"
        "subprocess.Popen([sys.executable, '-c', 'import os, time; os.setsid(); time.sleep(600)'])\n"
        "subprocess.Popen(['sleep', '600'])\n"
        "time.sleep(600)\n"
    )
    spec = job("tree", script)
    spec["spec"]["template"]["spec"]["containers"][0]["env"].append({"name": "TEST_MARK", "value": mark})
    await kube.post(kube.ns("jobs", group_version="/apis/batch/v1"), spec)

    async def started() -> bool:
        return len(marked(mark)) >= 3

    await eventually(started, "the pod's three processes started", 60)
    await kube.delete(kube.ns("jobs", "tree", group_version="/apis/batch/v1"), {"propagationPolicy": "Background"})

    async def none_left() -> bool:
        return not marked(mark)

    await eventually(none_left, "no process of the pod left", 60)


async def test_a_finished_pod_leaves_no_process_behind(kube: Kube) -> None:
    if kube.real:
        pytest.skip("what a node does with a finished pod's processes is not observable through the API")
    import uuid

    from tests.runner.test_process_tree import marked

    await _secret(kube)
    mark = uuid.uuid4().hex
    script = (
        "import subprocess, sys\n"
        "subprocess.Popen([sys.executable, '-c', 'import os, time; os.setsid(); time.sleep(600)'],\n"
        "                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
        "print('left a child behind', flush=True)\n"
    )
    spec = job("leaver", script)
    spec["spec"]["template"]["spec"]["containers"][0]["env"].append({"name": "TEST_MARK", "value": mark})
    await kube.post(kube.ns("jobs", group_version="/apis/batch/v1"), spec)
    done = await _finished(kube, "leaver")
    assert _condition(done, "Complete")

    async def none_left() -> bool:
        return not marked(mark)

    await eventually(none_left, "no process of the pod left", 60)
