"""Drift of soak samples: a least-squares line through (time, value) after the warm-up, its
slope per hour, and the verdict against a bound. Pure: no processes, no IO."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

HOUR = 3600.0
MIB = 1024 * 1024


@dataclass(frozen=True)
class Limit:
    """How much a metric may drift. `per_hour`: the largest slope (units per hour) allowed;
    `window`: the largest fitted growth over the measured window (catches a trend that is
    small per hour only because the run was short, e.g. one fd more); `most`: the largest
    value any sample may have (a bound by design, e.g. what a grace period keeps). None: not
    checked."""

    per_hour: float | None = None
    window: float | None = None
    most: float | None = None
    note: str = ""


@dataclass(frozen=True)
class Verdict:
    daemon: str
    metric: str
    unit: str
    samples: int
    first: float
    last: float
    low: float
    high: float
    per_hour: float        # fitted slope, units per hour
    growth: float          # fitted growth over the measured window
    limit: Limit
    ok: bool
    reason: str

    def to_json(self) -> dict:
        return {"daemon": self.daemon, "metric": self.metric, "unit": self.unit,
                "samples": self.samples, "first": self.first, "last": self.last,
                "min": self.low, "max": self.high, "drift_per_hour": self.per_hour,
                "growth_in_window": self.growth, "limit_per_hour": self.limit.per_hour,
                "limit_in_window": self.limit.window, "limit_most": self.limit.most,
                "ok": self.ok, "reason": self.reason}


def slope(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope (value per second) of (t, value) points; 0 for fewer than two
    distinct times."""
    n = len(points)
    if n < 2:
        return 0.0
    mt = sum(t for t, _ in points) / n
    mv = sum(v for _, v in points) / n
    sxx = sum((t - mt) ** 2 for t, _ in points)
    if sxx == 0:
        return 0.0
    return sum((t - mt) * (v - mv) for t, v in points) / sxx


def after_warmup(points: Sequence[tuple[float, float]], warmup: float
                 ) -> list[tuple[float, float]]:
    """The points taken `warmup` seconds or more after the first one."""
    if not points:
        return []
    t0 = points[0][0]
    return [(t, v) for t, v in points if t - t0 >= warmup]


def judge(daemon: str, metric: str, unit: str, points: Sequence[tuple[float, float]],
          limit: Limit) -> Verdict:
    """Fit the line through `points` (already past the warm-up) and compare with `limit`."""
    if len(points) < 3:
        raise ValueError(f"{daemon} {metric}: {len(points)} samples after the warm-up; "
                         "at least 3 are needed (run longer or sample more often)")
    s = slope(points)
    span = points[-1][0] - points[0][0]
    per_hour, growth = s * HOUR, s * span
    values = [v for _, v in points]
    reasons = []
    if limit.per_hour is not None and per_hour > limit.per_hour:
        reasons.append(f"drift {fmt(per_hour, unit)}/h > {fmt(limit.per_hour, unit)}/h")
    if limit.window is not None and growth >= limit.window:
        reasons.append(f"grew {fmt(growth, unit)} {unit} in {span:.0f}s (a trend; less than "
                       f"{fmt(limit.window, unit)} allowed)")
    if limit.most is not None and max(values) > limit.most:
        reasons.append(f"reached {fmt(max(values), unit)} > {fmt(limit.most, unit)}")
    return Verdict(daemon, metric, unit, len(points), values[0], values[-1], min(values),
                   max(values), per_hour, growth, limit, not reasons, "; ".join(reasons))


def fmt(value: float, unit: str) -> str:
    """A value for the table: bytes as MiB, the rest as numbers."""
    if unit == "B":
        return f"{value / MIB:.2f} MiB"
    return str(int(value)) if value == int(value) else f"{value:.3g}"


def table(verdicts: Sequence[Verdict]) -> str:
    rows = [("daemon", "metric", "n", "first", "last", "min..max", "drift/h", "limit/h",
             "verdict")]
    for v in verdicts:
        lim = "-" if v.limit.per_hour is None else fmt(v.limit.per_hour, v.unit)
        if v.limit.window is not None:
            lim += f" (<{fmt(v.limit.window, v.unit)} in run)"
        if v.limit.most is not None:
            lim += f" (at most {fmt(v.limit.most, v.unit)})"
        rows.append((v.daemon, v.metric, str(v.samples), fmt(v.first, v.unit),
                     fmt(v.last, v.unit), f"{fmt(v.low, v.unit)}..{fmt(v.high, v.unit)}",
                     fmt(v.per_hour, v.unit) if v.unit == "B" else f"{v.per_hour:+.3g}",
                     lim, "ok" if v.ok else f"FAIL: {v.reason}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = ("  ".join(c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1]
             for r in rows)
    return "\n".join(lines)
