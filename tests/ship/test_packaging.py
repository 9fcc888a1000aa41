"""pyproject.toml: what a fresh install reads."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_license_is_an_spdx_expression_not_a_deprecated_table() -> None:
    """setuptools warns three times per install about `license = {text = …}` (PEP 639)."""
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert data["project"]["license"] == "Apache-2.0"
    # the SPDX string form needs setuptools >= 77
    requires = data["build-system"]["requires"]
    setuptools = next(r for r in requires if r.startswith("setuptools"))
    assert setuptools.replace(" ", "") == "setuptools>=77"
