"""Shared fixtures live in tests/support/; each area registers its plugin here."""

pytest_plugins = [
    "tests.support.pg",
    "tests.support.sandbox",
    "tests.support.realcluster",
]


import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _no_process_hardening_in_pytest(monkeypatch: pytest.MonkeyPatch) -> None:
    """`makima task run` and `makima daemon run` harden their own process (non-dumpable, child
    subreaper). Tests that invoke those commands in-process (typer's CliRunner) would harden
    pytest itself, so here that one call is a no-op; the hardening is exercised for real by the
    tests that start the runner as its own process (tests/runner/test_hostile_agent.py)."""
    from makima.dataplane.runner import proctree

    monkeypatch.setattr(proctree, "harden_runner", lambda **_: False)
