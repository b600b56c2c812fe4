"""`python -m bench`: run every bench/bench_*.py module and print one table of ratios.

A module that raises (or returns something that is not a list of rows) becomes an error row:
one broken benchmark never hides the others and never makes the command fail.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import pkgutil
import platform
import sys
import time
import traceback
from pathlib import Path

import bench
from bench.common import machine_summary

COLUMNS = ("name", "ours", "reference", "unit", "ratio", "note")


def discover(only: list[str], path: list[str] | None = None) -> list[str]:
    names = sorted(m.name for m in pkgutil.iter_modules(path or bench.__path__)
                   if m.name.startswith("bench_"))
    if only:
        names = [n for n in names if any(o in n for o in only)]
    return names


def _fmt(value: object, column: str) -> str:
    if value is None:
        return "-"
    if column == "ratio" and isinstance(value, int | float):
        return f"{value:.2f}x"
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.3g}"
    return str(value)


def normalise(module: str, rows: object) -> list[dict]:
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        return [error_row(module, f"run() returned {type(rows).__name__}, not a list of rows")]
    out = []
    for r in rows:
        row = {c: r.get(c) for c in COLUMNS}
        row["name"] = row["name"] or module
        row["module"] = module
        out.append(row)
    return out


def error_row(module: str, message: str) -> dict:
    return {"name": module, "ours": None, "reference": None, "unit": None, "ratio": None,
            "note": f"ERROR: {message}", "module": module}


def run_module(name: str, package: str = "bench") -> list[dict]:
    t0 = time.monotonic()
    print(f"== {name} ...", file=sys.stderr, flush=True)
    try:
        mod = importlib.import_module(f"{package}.{name}")
        rows = normalise(name, mod.run())
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # a benchmark may even call sys.exit; it still gets a row
        detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        traceback.print_exc(file=sys.stderr)
        rows = [error_row(name, detail.splitlines()[-1] if detail else repr(exc))]
    print(f"== {name} done in {time.monotonic() - t0:.0f}s", file=sys.stderr, flush=True)
    return rows


def render(rows: list[dict]) -> str:
    cells = [[_fmt(r[c], c) for c in COLUMNS] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(COLUMNS)]
    widths[-1] = len(COLUMNS[-1])  # the note runs free at the end of the line
    line = "  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths, strict=True))
    out = [line, "-" * len(line)]
    module = None
    for r, row in zip(rows, cells, strict=True):
        if r["module"] != module and module is not None:
            out.append("")
        module = r["module"]
        out.append("  ".join(
            (v.rjust(w) if COLUMNS[i] in ("ours", "reference", "ratio") else v.ljust(w))
            for i, (v, w) in enumerate(zip(row, widths, strict=True))).rstrip())
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Run the benchmarks against the real peers and print ratios "
        "(ours / reference, both measured in this run; alternating runs, medians).")
    parser.add_argument("only", nargs="*",
                        help="run only modules whose name contains one of these words")
    parser.add_argument("--rounds", type=int, help="alternating rounds per figure (default 3)")
    parser.add_argument("--seconds", type=float, help="seconds per measurement (default 3)")
    parser.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    parser.add_argument("--list", action="store_true", help="list the modules and exit")
    args = parser.parse_args(argv)
    if args.rounds is not None:
        if args.rounds < 1:
            parser.error("--rounds must be at least 1")
        os.environ["BENCH_ROUNDS"] = str(args.rounds)
    if args.seconds is not None:
        if not 0.5 <= args.seconds <= 120:
            parser.error("--seconds must be between 0.5 and 120")
        os.environ["BENCH_SECONDS"] = str(args.seconds)
    names = discover(args.only)
    if args.list:
        print("\n".join(names))
        return 0
    if not names:
        print("python -m bench: no benchmark module matches", file=sys.stderr)
        return 2
    rows: list[dict] = []
    for name in names:
        rows.extend(run_module(name))
    print()
    print(f"machine: {machine_summary()}")
    print(f"python {platform.python_version()}, {time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
    print("ratio = ours / reference, both measured in this run (alternating runs, medians)")
    print()
    print(render(rows))
    if args.json:
        args.json.write_text(json.dumps({"machine": machine_summary(), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
