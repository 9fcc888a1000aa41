"""values.yaml is documented field by field and values.schema.json rejects bad values with a
message naming the offending key."""

from __future__ import annotations

import re
from typing import Any

import helm_python as helm
import pytest
import yaml

from .chart import CHART_DIR, chart, render

BAD_VALUES: list[tuple[dict[str, Any], str]] = [
    ({"replicas": 0}, r"/replicas.*minimum"),
    ({"replicas": "two"}, r"/replicas.*want integer"),
    ({"image": {"repository": "x", "pullPolicy": "Sometimes"}}, r"/image/pullPolicy.*Always"),
    ({"postgresql": {"bundled": {"pullPolicy": "always"}}}, r"/postgresql/bundled/pullPolicy"),
    ({"unknownTopLevel": True}, r"additional properties 'unknownTopLevel' not allowed"),
    ({"operator": {"apiPrt": 8080}}, r"/operator.*additional properties 'apiPrt'"),
    ({"operator": {"apiPort": 70000}}, r"/operator/apiPort.*maximum"),
    ({"operator": {"tickSeconds": 0}}, r"/operator/tickSeconds"),
    ({"operator": {"apiUrl": "makima:8080"}}, r"/operator/apiUrl"),
    ({"watchNamespaces": ["Team_A"]}, r"/watchNamespaces/0"),
    ({"watchNamespaces": "team-a"}, r"/watchNamespaces.*want array"),
    ({"service": {"type": "Ingress"}}, r"/service/type"),
    ({"serviceMonitor": {"interval": "often"}}, r"/serviceMonitor/interval"),
    ({"networkPolicy": {"gitHost": {"ports": []}}}, r"/networkPolicy/gitHost/ports"),
    ({"daemon": {"enabled": "yes"}}, r"/daemon/enabled.*want boolean"),
    ({"daemon": {"replicas": 0}}, r"/daemon/replicas.*minimum"),
    ({"daemon": {"capacity": 1000}}, r"/daemon/capacity.*maximum"),
    ({"postgresql": {"bundled": {"storage": "lots"}}}, r"/postgresql/bundled/storage"),
    ({"agent": {"command": "claude -p"}}, r"/agent/command.*want array"),
]


@pytest.mark.parametrize(("values", "message"), BAD_VALUES, ids=[str(v) for v, _ in BAD_VALUES])
def test_bad_values_are_rejected_with_a_clear_message(values: dict[str, Any], message: str) -> None:
    # validate_schema is what install/upgrade/template run first; render must refuse too.
    with pytest.raises(helm.HelmValuesError, match=message):
        chart().validate_schema(values)
    with pytest.raises(helm.HelmValuesError, match="values don't meet the specifications"):
        render(values)


def test_default_values_pass_the_schema() -> None:
    chart().validate_schema({})
    defaults = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    chart().validate_schema(defaults)


def test_schema_covers_every_top_level_value() -> None:
    defaults = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    schema = chart().schema
    assert schema is not None and schema["additionalProperties"] is False
    assert set(defaults) <= set(schema["properties"]), set(defaults) - set(schema["properties"])


KEY = re.compile(r"^(?P<indent>\s*)(?P<key>[A-Za-z][\w.-]*):(?P<rest>.*)$")


def test_values_yaml_is_documented_field_by_field() -> None:
    """Every leaf value has a comment right above it, or sits inside a documented block
    (e.g. the keys of an example `resources:` map)."""
    lines = (CHART_DIR / "values.yaml").read_text().splitlines()
    undocumented: list[str] = []
    stack: list[tuple[int, str, bool]] = []  # (indent, key, documented)
    for number, line in enumerate(lines):
        match = KEY.match(line)
        if not match:
            continue
        indent = len(match["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        previous = next((p.strip() for p in reversed(lines[:number]) if p.strip()), "")
        documented = previous.startswith("#")
        following = next((n for n in lines[number + 1 :] if n.strip() and not n.strip().startswith("#")), "")
        is_leaf = bool(match["rest"].strip()) or len(following) - len(following.lstrip()) <= indent
        inside_documented = any(doc for _, _, doc in stack)
        if is_leaf and not documented and not inside_documented:
            undocumented.append(".".join([k for _, k, _ in stack] + [match["key"]]))
        stack.append((indent, match["key"], documented))
    assert undocumented == [], f"values without a comment: {undocumented}"
