"""The sandbox cluster: an in-process Kubernetes API stand-in for tests and local runs.

This is a TEST DOUBLE, not Kubernetes. It serves, over plain HTTP on localhost, the part of
the API that kopf, the `kubernetes` client, `kubectl` and makima rely on (see docs/sandbox.md),
and runs Jobs as local processes. Code under test must not know it talks to the sandbox.

    async with Sandbox() as sb:          # in the running loop
        ...sb.url, sb.kubeconfig...
    with SandboxThread() as sb:          # on a loop of its own, for synchronous code
        ...

Imports are lazy so that `makima --help` does not load the server.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from makima_testing.sandbox.server import Sandbox, SandboxThread, kubeconfig_text

__all__ = ["Sandbox", "SandboxThread", "kubeconfig_text"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from makima_testing.sandbox import server

        return getattr(server, name)
    raise AttributeError(name)
