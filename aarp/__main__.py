"""python -m aarp resolve|responder|shim ...: the same as aarp-resolve, aarp-responder and
aarp-shim."""

import sys

from aarp.cli import resolve, responder, shim

COMMANDS = {"resolve": resolve.main, "responder": responder.main, "shim": shim.main}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in COMMANDS:
        out = sys.stdout if argv[:1] in (["-h"], ["--help"]) else sys.stderr
        print("usage: python -m aarp {resolve,responder,shim} [ARGS...]   (see each --help)",
              file=out)
        return 0 if out is sys.stdout else 2
    return COMMANDS[argv[0]](argv[1:])


sys.exit(main(sys.argv[1:]))
