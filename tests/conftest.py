"""Shared fixtures live in tests/support/; each area registers its plugin here."""

pytest_plugins = [
    "tests.support.pg",
    "tests.support.sandbox",
    "tests.support.realcluster",
]
