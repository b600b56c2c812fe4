"""aarp-resolve: resolve anycast addresses (or names) to the unicast address that answers them."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(
        prog="aarp-resolve",
        description="Resolve an anycast address or host name to the unicast address of the "
        "server that currently answers it (AARP probe over ICMP echo and/or UDP).",
    )


def main(argv: list[str] | None = None) -> int:
    build_parser().parse_args(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
