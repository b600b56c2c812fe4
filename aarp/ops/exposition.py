"""The Prometheus text exposition format (version 0.0.4), written by hand: a few families of
counters and gauges per scrape do not need a client library in the daemons' memory.

    m = Metrics("anytun_relay")
    m.counter("tunnel_packets_total", "Packets per connection", [({"mux": "1"}, 42)])
    body = m.render()
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")
Sample = tuple[Mapping[str, object], float]


def _label_value(value: object) -> str:
    return str(value).replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _number(value: float) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


class Metrics:
    """Families in the order they were added; each family's samples in the order given."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self._families: dict[str, tuple[str, str, list[Sample]]] = {}

    def _add(self, kind: str, name: str, help_text: str, samples: Iterable[Sample]) -> None:
        full = f"{self.namespace}_{name}" if self.namespace else name
        if not _NAME.match(full):
            raise ValueError(f"bad metric name {full!r}")
        family = self._families.setdefault(full, (kind, help_text, []))
        if family[0] != kind:
            raise ValueError(f"{full} is a {family[0]}, not a {kind}")
        for labels, value in samples:
            for key in labels:
                if not _LABEL.match(key):
                    raise ValueError(f"bad label name {key!r} on {full}")
            family[2].append((labels, value))

    def counter(self, name: str, help_text: str, samples: Iterable[Sample]) -> None:
        self._add("counter", name, help_text, samples)

    def gauge(self, name: str, help_text: str, samples: Iterable[Sample]) -> None:
        self._add("gauge", name, help_text, samples)

    def render(self) -> bytes:
        lines: list[str] = []
        for name, (kind, help_text, samples) in self._families.items():
            lines.append(f"# HELP {name} " + help_text.replace("\\", r"\\").replace("\n", r"\n"))
            lines.append(f"# TYPE {name} {kind}")
            for labels, value in samples:
                text = ",".join(f'{k}="{_label_value(v)}"' for k, v in labels.items())
                lines.append(f"{name}{{{text}}} {_number(value)}" if text else
                             f"{name} {_number(value)}")
        return ("\n".join(lines) + "\n").encode()
