"""The anytun-relay program (`anytun-relay ...`, `python -m relay`): relay.cli's command line,
started so that it loads only what the configured modes use.

asyncio imports the ssl module, and with it libssl (about 4 MiB resident), for TLS that only
the cluster's Redis link (`--sync rediss://...`) can need; without --sync the program runs
without TLS support. Everything else a mode needs is imported by that mode (relay.node).
"""

from __future__ import annotations

import sys


def needs_tls(argv: list[str]) -> bool:
    return any(a == "--sync" or a.startswith("--sync=") for a in argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not needs_tls(argv) and "ssl" not in sys.modules:
        sys.modules["ssl"] = None  # type: ignore[assignment]  # asyncio then skips TLS
    from relay.cli import main as cli_main
    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
