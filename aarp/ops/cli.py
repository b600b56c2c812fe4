"""What the four commands share on the command line: one --version format, and a quiet end
when the reader of their output goes away (`anytun-relay status --json | head -1`)."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

DISTRIBUTION = "anycast-toolkit"


def version_line(prog: str, version: str, detail: str | None = None) -> str:
    """`PROG VERSION (anycast-toolkit[; DETAIL])`, the same for every command."""
    extra = f"; {detail}" if detail else ""
    return f"{prog} {version} ({DISTRIBUTION}{extra})"


class VersionAction(argparse.Action):
    """--version whose detail is computed only when asked (e.g. the preload library's own
    version, which means loading it)."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, *,
                 version: str, detail: Callable[[], str | None] | None = None,
                 help: str = "print the version and exit", **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, help=help, default=argparse.SUPPRESS)
        self.version = version
        self.detail = detail

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        print(version_line(parser.prog, self.version, self.detail() if self.detail else None))
        parser.exit()


def add_version(parser: argparse.ArgumentParser, version: str, *flags: str,
                detail: Callable[[], str | None] | None = None) -> None:
    parser.add_argument(*(flags or ("--version",)), action=VersionAction, version=version,
                        detail=detail)


def run(main: Callable[[], int]) -> int:
    """Run a command's main; a closed output pipe ends it quietly with status 141 (as if by
    SIGPIPE, like C tools) instead of a BrokenPipeError traceback."""
    try:
        rc = main()
        sys.stdout.flush()
        return rc
    except BrokenPipeError:
        # nothing more can be written; make the interpreter's final flush harmless too
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return 128 + 13
