"""python -m fuzz {run,check,init,merge,build,list} [harness or prefix ...]

  run    fuzz each harness for --seconds (FUZZ_SECONDS, default 60); findings are kept in
         fuzz/regressions/<harness>/; prints iterations and coverage per harness
  check  one pass over each harness's corpus and regressions (what `make test` does)
  init   regenerate the initial inputs of the corpora from the vectors
  merge  add the inputs of the last runs that reach new coverage to fuzz/corpus/
  build  compile the C harnesses
  list   the harnesses
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from fuzz import harnesses as hz


def _table(results: list[hz.Result]) -> str:
    rows = ["| harness | iterations | cov | ft | corpus | seconds | result |",
            "|---|---:|---:|---:|---:|---:|---|"]
    for r in results:
        verdict = "ok" if r.ok else \
            "finding: " + ", ".join(Path(a).name for a in r.artifacts) if r.artifacts else "failed"
        rows.append(f"| {r.harness.name} | {r.execs} | {r.cov} | {r.ft} | {r.corpus} | "
                    f"{r.seconds:.0f} | {verdict} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fuzz", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("action", choices=("run", "check", "init", "merge", "build", "list"))
    ap.add_argument("names", nargs="*", help="harness names or prefixes (c_, py_); default all")
    ap.add_argument("--seconds", type=int, default=int(os.environ.get("FUZZ_SECONDS", "60")),
                    help="per harness, for run (default $FUZZ_SECONDS or 60)")
    args = ap.parse_args(argv)
    chosen = hz.select(args.names)
    if args.action == "list":
        for h in chosen:
            print(f"{h.name:18} {h.what}")
        return 0
    if args.action == "init":
        from fuzz import initial
        for h in chosen:
            print(f"{h.name}: {initial.write(h.name)} initial inputs")
        return 0
    if any(h.kind == "c" for h in chosen):
        why = hz.can_build()
        if why:
            print(f"cannot build the C harnesses: {why}", file=sys.stderr)
            return 2
    if args.action == "build":
        for h in chosen:
            if h.kind == "c":
                print(hz.build(h))
        return 0
    if args.action == "merge":
        for h in chosen:
            print(f"{h.name}: {hz.merge(h)} inputs added to the corpus")
        return 0
    results = []
    for h in chosen:
        if h.needs_root and os.geteuid() != 0:
            print(f"{h.name}: skipped (needs root)", file=sys.stderr)
            continue
        r = hz.fuzz(h, args.seconds) if args.action == "run" else hz.check(h)
        print(f"{h.name}: {'ok' if r.ok else 'FAILED'} ({r.execs} inputs, cov {r.cov}, "
              f"ft {r.ft}, {r.seconds:.0f} s)", flush=True)
        if not r.ok:
            print(r.tail[-2500:], file=sys.stderr)
        results.append(r)
    print(_table(results))
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except subprocess.CalledProcessError as exc:
        sys.exit(f"failed: {' '.join(map(str, exc.cmd))}")
