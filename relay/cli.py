"""anytun-relay: command line of the daemon.

The parser is composed from the modes: each mode module contributes its options
(`add_arguments(parser)`) and turns parsed options into services
(`services_from_args(args) -> list[Service]`, raising ConfigError on a user mistake).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import sys

from relay.daemon import ConfigError, run_services

# Each module provides add_arguments() and services_from_args(); missing ones are skipped
# so that a partial checkout still starts.
MODE_MODULES = ("relay.tunnel_cli", "relay.rtpproxy.cli", "relay.cluster.cli", "relay.health")


def _modes() -> list:
    mods = []
    for name in MODE_MODULES:
        try:
            mods.append(importlib.import_module(name))
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
    return mods


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="anytun-relay",
        description="Anycast tunnel endpoint speaking SATP (wire-compatible with anytun and "
        "uanytun, and accepting their options), anycast tunnel server, rtpproxy-protocol "
        "media relay, with state sync between the servers of one anycast address.",
    )
    for mod in _modes():
        mod.add_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["status"]:  # anytun-relay status: ask running nodes
        from relay.server.control import status_main
        return status_main(argv[1:])
    if argv[:1] == ["health"]:  # anytun-relay health: exit 0 healthy, 1 not
        from relay.server.control import health_main
        return health_main(argv[1:])
    if argv[:1] == ["drain"]:  # anytun-relay drain: withdraw, wait for the traffic, stop
        from relay.server.control import drain_main
        return drain_main(argv[1:])
    if argv[:1] == ["exabgp"]:  # anytun-relay exabgp: the announcer ExaBGP runs
        from relay.announce.cli import main as exabgp_main
        return exabgp_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        services = [svc for mod in _modes() for svc in mod.services_from_args(args)]
        for mod in _modes():  # services that bind to others' (e.g. the cluster sync)
            if hasattr(mod, "extend_services"):
                services = mod.extend_services(args, services)
        if not services:
            raise ConfigError("nothing to do: configure a tunnel or relay mode (--rtpproxy)")
        for mod in _modes():  # logging targets, daemonizing, pid file (e.g. anytun's -L -D -P)
            if hasattr(mod, "prepare_process"):
                mod.prepare_process(args, services)
    except ConfigError as exc:
        print(f"anytun-relay: {exc}", file=sys.stderr)
        return 2
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        return asyncio.run(run_services(services))
    except ConfigError as exc:
        print(f"anytun-relay: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
