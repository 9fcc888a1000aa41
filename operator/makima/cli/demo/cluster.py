"""The demo as a client of a cluster: the person's `UserKube`, as `makima get` and the dashboard use it.

Only what the demo adds to those calls lives here: the CRD check with the install hint, and
applying the example over an earlier run's directive of the same name. The calls are
blocking (the official client): run them with `asyncio.to_thread`.
"""

from __future__ import annotations

import time
from typing import Any

from makima.cli.demo.errors import DemoError
from makima.control.kube import DIRECTIVES, STEPS, UserKube, load_kubeconfig
from makima.core.models import GROUP

GONE_POLL_SECONDS = 0.2


def connect(kubeconfig: str | None) -> UserKube:
    """The person's client from a kubeconfig file only (the sandbox's, or KUBECONFIG for --cluster),
    never an in-cluster service account."""
    return UserKube(load_kubeconfig(kubeconfig))


def check_crds(kube: UserKube) -> None:
    missing = kube.missing_crds([f"{plural}.{GROUP}" for plural in (DIRECTIVES, STEPS)])
    if missing:
        raise DemoError(
            f"the cluster at {kube.host} has no {', '.join(missing)} CRD: install the chart first "
            "(helm install makima charts/makima -n makima-system --create-namespace)"
        )


def replace_directive(kube: UserKube, namespace: str, body: dict[str, Any], wait: float = 60.0) -> bool:
    """Create the directive; an existing one of that name is deleted first (and waited for, its
    finalizer ends its tasks). Returns whether one was replaced."""
    name = body["metadata"]["name"]
    existed = kube.delete_directive(namespace, name)
    if existed:
        deadline = time.monotonic() + wait
        while kube.get_directive(namespace, name) is not None:
            if time.monotonic() > deadline:
                raise DemoError(f"directive {namespace}/{name} still exists {wait:.0f} s after deleting it")
            time.sleep(GONE_POLL_SECONDS)
    kube.create_directive(namespace, body)
    return existed
