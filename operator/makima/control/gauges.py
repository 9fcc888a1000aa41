"""The by-phase gauges (`makima_directives`, `makima_steps`), kept incrementally.

Each directive's own contribution is remembered, so a change to one directive moves the
totals by that directive's difference: O(its objects), never a scan of every directive.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from prometheus_client import Gauge

Key = tuple[str, str]  # (namespace, directive name)


class PhaseGauge:
    def __init__(self, gauge: Gauge, phases: Iterable[str]) -> None:
        self._gauge = gauge
        self._phases = set(phases)  # always exported, at 0 when nothing is in them
        self._by_key: dict[Key, Counter[str]] = {}
        self._totals: Counter[str] = Counter()

    def count(self, key: Key, phases: Iterable[str]) -> None:
        """The phases of `key`'s objects now (nothing: it is gone)."""
        new = Counter(phases)
        old = self._by_key.get(key) or Counter()
        if new == old:
            return
        for phase in {*old, *new}:
            self._totals[phase] += new[phase] - old[phase]
        if new:
            self._by_key[key] = new
        else:
            self._by_key.pop(key, None)
        for phase in {*self._phases, *self._totals}:
            self._gauge.labels(phase=phase).set(self._totals[phase])

    def totals(self) -> dict[str, int]:
        """Objects by phase across every directive counted (what the gauge shows)."""
        return {phase: n for phase, n in self._totals.items() if n}
