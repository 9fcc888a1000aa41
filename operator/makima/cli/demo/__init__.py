"""`makima demo`: the quickstart — the example directive, from goal to pull request, locally.

What it starts, all in this process unless `--cluster` is given (`stack.local_stack`):

- the **sandbox cluster** (`makima_testing.sandbox`, a test double of the Kubernetes API; its
  Jobs run as local processes), with the CRDs applied;
- the **embedded PostgreSQL** under the demo's state dir (reused by the next run; stopped at
  the end if this run started it), unless `--database-url` names a server;
- **the operator** (`makima.control.runtime.run_operator`: kopf, the task API, the store);
- a **bare git repository** seeded from `examples/demo-project/` (one commit on `main`), the
  "remote" the directive works on (`origin`).

Then it applies `examples/directive.yaml` (scripted agent, six steps, a diamond) with
`spec.repository.url` pointed at that repository, shows the step tree live (`watch`) and
ends with the pull request: URL, branch, merged commits and diffstat, read from the bare
repository, plus the `kubectl` commands that show the same (`summary`; `--keep` leaves
everything running for them until Ctrl-C).

The operator's logs go to `<state dir>/operator.log`, never over the live view (`logfile`).
The exit code is 0 only when the directive reached Completed within `--timeout`.

With `--cluster`, nothing is started: the example is applied to the cluster `KUBECONFIG`
points at (the chart must be installed) and watched there; `--repo-url` must then be a
repository the cluster's Jobs can reach.

The demo talks to the API with the person's client (`kube.UserKube`, as `makima get` and the
dashboard do; `cluster`): it is a client of the cluster, not part of the operator's gateway.

Modules: `command` (the typer command), `options`, `run` (one run, start to end), `stack`
(the local stack, shared with the integration tests and the hand-off benchmark), `origin`,
`cluster`, `watch`, `summary`, `logfile`, `errors`.
"""
