"""aarp-responder: answer AARP probes for this server's anycast addresses."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(
        prog="aarp-responder",
        description="Answer AARP probes (ICMP echo and UDP) for this server's anycast addresses "
        "with this server's unicast address, from the anycast address itself.",
    )


def main(argv: list[str] | None = None) -> int:
    build_parser().parse_args(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
