"""Prometheus series the operator exposes on `/metrics`.

One registry per process; tests read values from it. Names follow Prometheus
conventions (`_total` for counters, `_seconds` for durations).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

RECONCILE_SECONDS = Histogram(
    "makima_reconcile_duration_seconds",
    "Time spent in one reconcile of a directive (snapshot, decide, apply).",
    registry=REGISTRY,
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
RECONCILES = Counter("makima_reconciles_total", "Reconciles by what triggered them.", ["trigger"], registry=REGISTRY)
DIRECTIVES_BY_PHASE = Gauge("makima_directives", "Directives by phase.", ["phase"], registry=REGISTRY)
STEPS_BY_PHASE = Gauge("makima_steps", "Directive steps by phase.", ["phase"], registry=REGISTRY)
TASKS_DISPATCHED = Counter(
    "makima_tasks_dispatched_total", "Tasks handed to an executor, by route.", ["kind", "route"], registry=REGISTRY
)
HANDOFF_SECONDS = Histogram(
    "makima_handoff_latency_seconds",
    "From a task report received to the next step dispatched.",
    registry=REGISTRY,
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 30),
)
API_CALLS = Counter(
    "makima_kube_api_calls_total", "Kubernetes API calls by verb and resource.", ["verb", "resource"], registry=REGISTRY
)
STORE_ERRORS = Counter("makima_store_errors_total", "Task store operations that failed.", ["op"], registry=REGISTRY)
TASK_REPORTS = Counter(
    "makima_task_reports_total", "Reports received from tasks, by kind of report.", ["report"], registry=REGISTRY
)
DAEMONS_CONNECTED = Gauge("makima_daemons_connected", "Daemons connected to this operator.", registry=REGISTRY)
ACTIVE_REPLICA = Gauge(
    "makima_active_replica", "1 while this replica is the active one (holds the Lease), else 0.", registry=REGISTRY
)
AGENT_TOKENS = Counter(
    "makima_agent_tokens_total",
    "Tokens the coding agents reported, by agent profile, namespace and direction (input|output).",
    ["agent", "namespace", "direction"],
    registry=REGISTRY,
)
AGENT_COST = Counter(
    "makima_agent_cost_usd_total",
    "Cost in US dollars the coding agents reported (CLIs that report none add nothing).",
    ["agent", "namespace"],
    registry=REGISTRY,
)
