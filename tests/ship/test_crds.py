"""The chart ships the generated CRDs unchanged (charts/makima/crds/ == crds/).

`make crds` regenerates crds/ and copies it into the chart, which ships nothing else there
(kopf's peering CRDs are gone: one active replica is decided by a Lease, a built-in kind).
"""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
GENERATED = ROOT / "crds"
IN_CHART = ROOT / "charts" / "makima" / "crds"


def _yaml_files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.glob("*.yaml"))}


def test_generated_crds_exist() -> None:
    generated = _yaml_files(GENERATED) if GENERATED.is_dir() else {}
    assert generated, f"no CRDs in {GENERATED}: run `makima crds --out crds/`"
    kinds = {yaml.safe_load(text)["spec"]["names"]["kind"] for text in generated.values()}
    assert {"Directive", "DirectiveStep"} <= kinds


def test_chart_crds_are_identical_to_generated_crds() -> None:
    generated = _yaml_files(GENERATED)
    in_chart = _yaml_files(IN_CHART)
    missing = sorted(set(generated) - set(in_chart))
    extra = sorted(set(in_chart) - set(generated))
    differ = sorted(name for name in set(generated) & set(in_chart) if generated[name] != in_chart[name])
    fix = "run `make crds` (or cp crds/*.yaml charts/makima/crds/)"
    assert not missing, f"missing from the chart: {missing}; {fix}"
    assert not extra, f"in the chart but not generated: {extra}; remove them or regenerate"
    assert not differ, f"chart copies differ from crds/: {differ}; {fix}"
