"""aarp-shim: run a program with libaarp.so preloaded, or print the library's path."""

from __future__ import annotations

import argparse
import os
import sys

from aarp import __version__, shim
from opskit import cli as opscli


def _library_version() -> str:
    try:
        return f"libaarp {shim.version()}"
    except shim.ShimNotBuilt:
        return "libaarp not built"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="aarp-shim",
        description=(
            "Run a program with the AARP preload library (libaarp.so), so its connections to "
            "anycast addresses go to the unicast address of the server that answers them. "
            "Like proxychains4: 'aarp-shim -- curl http://[AA]/'."
        ),
        epilog="Configuration: /etc/aarp.conf (AARP_CONF) and AARP_* environment variables.",
    )
    p.add_argument("--path", action="store_true", help="print the absolute path of libaarp.so")
    opscli.add_version(p, __version__, detail=_library_version)
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD [ARGS...] to run")
    return p


def main(argv: list[str] | None = None) -> int:
    return opscli.run(lambda: _main(argv))


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    try:
        if args.path:
            print(shim.library_path())
            return 0
        if not command:
            print("aarp-shim: nothing to run; usage: aarp-shim -- CMD [ARGS...]", file=sys.stderr)
            return 2
        env = shim.preload_env()
    except shim.ShimNotBuilt as exc:
        print(f"aarp-shim: {exc}", file=sys.stderr)
        return 1
    try:
        os.execvpe(command[0], command, env)
    except OSError as exc:
        print(f"aarp-shim: cannot run {command[0]!r}: {exc.strerror}", file=sys.stderr)
        return 127
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
