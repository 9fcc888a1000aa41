"""Label and field selectors, as the API server parses them (sandbox cluster, a test double)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from makima_testing.sandbox.errors import bad_request

Predicate = Callable[[dict[str, Any]], bool]

_SET_RE = re.compile(r"^\s*(!?)\s*([A-Za-z0-9_./-]+)\s*(?:(in|notin)\s*\(([^)]*)\))?\s*$")
_EQ_RE = re.compile(r"^\s*([A-Za-z0-9_./-]+)\s*(==|!=|=)\s*([A-Za-z0-9_.-]*)\s*$")


def _split_terms(selector: str) -> list[str]:
    """Split on commas that are not inside `in (a, b)` parentheses."""
    terms, depth, current = [], 0, ""
    for ch in selector:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            terms.append(current)
            current = ""
        else:
            current += ch
    terms.append(current)
    return [t for t in terms if t.strip()]


def label_selector(selector: str | None) -> Predicate:
    """`a=b`, `a==b`, `a!=b`, `a in (x,y)`, `a notin (x)`, `a`, `!a`, comma-separated (AND)."""
    checks: list[Callable[[dict[str, str]], bool]] = []
    for term in _split_terms(selector or ""):
        eq = _EQ_RE.match(term)
        if eq:
            key, op, value = eq.groups()
            checks.append(_compare(key, value, op != "!="))
            continue
        match = _SET_RE.match(term)
        if not match:
            raise bad_request(f"unable to parse requirement: {term!r}")
        negated, key, op, values = match.groups()
        if op:
            if negated:
                raise bad_request(f"unable to parse requirement: {term!r}")
            allowed = {v.strip() for v in values.split(",") if v.strip()}
            checks.append(_member(key, allowed, op == "in"))
        else:
            checks.append(_exists(key, not negated))

    def predicate(obj: dict[str, Any]) -> bool:
        labels = obj.get("metadata", {}).get("labels") or {}
        return all(check(labels) for check in checks)

    return predicate


def _field(obj: dict[str, Any], path: str) -> str:
    value: Any = obj
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def field_selector(selector: str | None) -> Predicate:
    """`metadata.name=x`, `metadata.namespace!=y`, and any dotted field path (e.g. `involvedObject.uid`).

    The real server only allows a per-kind list of fields; the sandbox accepts any path.
    """
    checks: list[Callable[[dict[str, Any]], bool]] = []
    for term in _split_terms(selector or ""):
        match = _EQ_RE.match(term)
        if not match:
            raise bad_request(f"invalid field selector: {term!r}")
        path, op, value = match.groups()
        checks.append(_field_equals(path, value, op != "!="))

    def predicate(obj: dict[str, Any]) -> bool:
        return all(check(obj) for check in checks)

    return predicate


def _compare(key: str, value: str, equal: bool) -> Callable[[dict[str, str]], bool]:
    return lambda labels: (labels.get(key) == value) == equal


def _member(key: str, allowed: set[str], inside: bool) -> Callable[[dict[str, str]], bool]:
    return lambda labels: (labels.get(key) in allowed) == inside


def _exists(key: str, present: bool) -> Callable[[dict[str, str]], bool]:
    return lambda labels: (key in labels) == present


def _field_equals(path: str, value: str, equal: bool) -> Callable[[dict[str, Any]], bool]:
    return lambda obj: (_field(obj, path) == value) == equal
