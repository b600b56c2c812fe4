"""`anytun-relay exabgp`: announce the node's anycast prefixes through ExaBGP while it is
healthy. Put it in ExaBGP's configuration:

    process anycast {
        run /usr/local/bin/anytun-relay exabgp --prefix 192.0.2.0/24 --check-relay;
        encoder text;
    }
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import re
import signal
import sys
import threading

from relay.announce.checks import Check, CommandCheck, HttpCheck, MaintenanceFile, RelayCheck
from relay.announce.dampen import Dampener
from relay.announce.exabgp import Announcer

_ATTRIBUTES = re.compile(r"^[A-Za-z0-9:.\[\]/ -]*$")
LOG_LEVELS = {"error": logging.ERROR, "warning": logging.WARNING, "info": logging.INFO,
              "debug": logging.DEBUG}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="anytun-relay exabgp",
        description="Run by ExaBGP (a 'process' with 'encoder text'): checks this node's "
        "health every --interval and prints 'announce route PREFIX next-hop self' after "
        "--rise good checks in a row, 'withdraw route ...' after --fall bad ones or at once "
        "when the node drains. Every check must pass.",
        epilog="Exit status: 0 when ExaBGP stops it, 2 on a usage error.")
    p.add_argument("--prefix", action="append", default=[], required=True, metavar="NET/LEN",
                   help="an anycast prefix to announce (repeatable)")
    p.add_argument("--check-relay", action="append", nargs="?", const="", metavar="DEVICE|PATH",
                   help="ask anytun-relay's control socket (a device name, a socket path, or "
                   "nothing for the only node in this network namespace)")
    p.add_argument("--check-http", action="append", default=[], metavar="URL",
                   help="GET this URL: 200 is healthy, a JSON body with \"draining\": true "
                   "drains (anytun-relay's or aarp-responder's /health)")
    p.add_argument("--check-command", action="append", default=[], metavar="CMD",
                   help="run this shell command: exit status 0 is healthy")
    p.add_argument("--maintenance-file", action="append", default=[], metavar="PATH",
                   help="drain while this file exists")
    p.add_argument("--rise", type=int, default=3,
                   help="good checks in a row before announcing (default 3)")
    p.add_argument("--fall", type=int, default=3,
                   help="bad checks in a row before withdrawing (default 3)")
    p.add_argument("--interval", type=float, default=1.0,
                   help="seconds between checks (default 1)")
    p.add_argument("--timeout", type=float, default=1.0,
                   help="seconds one check may take (default 1)")
    p.add_argument("--attributes", default="", metavar="TEXT",
                   help="ExaBGP attributes added to each announcement, e.g. "
                   "'community [65000:1] med 10'")
    p.add_argument("--log", choices=tuple(LOG_LEVELS), default="warning",
                   help="log level on stderr, which ExaBGP passes on (default warning)")
    return p


def announcer_from_args(args: argparse.Namespace, out) -> Announcer:
    """Raises ValueError with a one-line message on a usage error."""
    prefixes = []
    for text in args.prefix:
        try:
            prefixes.append(str(ipaddress.ip_network(text, strict=True)))
        except ValueError as exc:
            raise ValueError(f"--prefix {text}: {exc}") from None
    checks: list[Check] = [RelayCheck(t or None) for t in (args.check_relay or [])]
    for url in args.check_http:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"--check-http {url}: not an http:// or https:// URL")
        checks.append(HttpCheck(url))
    checks += [CommandCheck(c) for c in args.check_command]
    checks += [MaintenanceFile(f) for f in args.maintenance_file]
    if not checks:
        raise ValueError("give at least one check (--check-relay, --check-http, "
                         "--check-command or --maintenance-file)")
    for name in ("rise", "fall"):
        if not 1 <= getattr(args, name) <= 1000:
            raise ValueError(f"--{name} must be 1-1000")
    if not 0.05 <= args.interval <= 3600:
        raise ValueError("--interval must be 0.05-3600 seconds")
    if not 0.05 <= args.timeout <= 60:
        raise ValueError("--timeout must be 0.05-60 seconds")
    if not _ATTRIBUTES.match(args.attributes):
        raise ValueError("--attributes may hold letters, digits, spaces and : . [ ] / - only")
    return Announcer(checks, Dampener(args.rise, args.fall), prefixes, out,
                     attributes=args.attributes.strip(), interval=args.interval,
                     timeout=args.timeout)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        announcer = announcer_from_args(args, sys.stdout)
    except ValueError as exc:
        print(f"anytun-relay exabgp: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=LOG_LEVELS[args.log], stream=sys.stderr,
                        format="anytun-relay exabgp: %(message)s")
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: announcer.stop())
    threading.Thread(target=announcer.follow, args=(sys.stdin,), daemon=True).start()
    announcer.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
