"""What the demo tells the person instead of a traceback."""

from __future__ import annotations


class DemoError(RuntimeError):
    """Something the person can fix (missing git, no CRD on the cluster, ...)."""


class Interrupted(DemoError):
    """Ctrl-C (or SIGTERM) while the demo ran: everything it started is stopped."""
