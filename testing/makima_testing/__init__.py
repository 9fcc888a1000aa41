"""Test doubles for makima, installed beside it for tests, the demo and benchmarks only.

- `sandbox`: an in-process stand-in for the Kubernetes API server (and a Job controller
  that runs pods as local processes); docs/sandbox.md lists where it differs from the
  real server.
- `scripted`: a deterministic agent that plans, writes files and resolves conflicts as a
  script says, so a directive can run end to end without a model.

Production code never imports this package; the import contract in pyproject.toml
checks it (only the `demo`, `sandbox` and `agent scripted` commands reach it, lazily).
"""
