"""anytun-relay: the command line of the daemon.

The parser is composed of anytun's process options (here) and the options of each mode
(relay.tunnel.cli, relay.rtpproxy.cli, relay.cluster.cli); each mode reads its options into
its settings, raising ConfigError on a user mistake. relay.node turns the settings into
services, and relay.runtime runs them.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from aarp.ops_http import ListenError, parse_listen
from relay import __version__, node, status
from relay.announce import cli as announce_cli
from relay.cluster import cli as cluster_cli
from relay.rtpproxy import cli as rtpproxy_cli
from relay.runtime import process
from relay.runtime.daemon import Service, run_services
from relay.runtime.errors import ConfigError
from relay.runtime.logtargets import LogTarget
from relay.tunnel import cli as tunnel_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="anytun-relay",
        description="Anycast tunnel endpoint speaking SATP (wire-compatible with anytun and "
        "uanytun, and accepting their options), anycast tunnel server, rtpproxy-protocol "
        "media relay, with state sync between the servers of one anycast address.",
    )
    p = parser.add_argument_group("process (as anytun)")
    p.add_argument("-v", "--version", action="version",
                   version=f"anytun-relay {__version__} (SATP as anytun 0.3.8 / uanytun 0.3.7)")
    p.add_argument("-D", "--nodaemonize", action="store_true",
                   help="don't run in background")
    p.add_argument("-u", "--username", help="change to this user after setup")
    p.add_argument("-g", "--groupname", help="change to this group (with -u)")
    p.add_argument("-C", "--chroot", metavar="PATH", help="chroot to this directory")
    p.add_argument("-P", "--write-pid", metavar="PATH", help="write pid to this file")
    p.add_argument("-L", "--log", action="append", default=[],
                   metavar="TARGET:LEVEL[,PARAM...]",
                   help="add a log target: syslog|file|stdout|stderr, level 0..5 "
                   "(e.g. stdout:5); default syslog:3,anytun-relay,daemon")
    p.add_argument("-U", "--debug", action="store_true",
                   help="don't daemonize and log to stdout with maximum log level")
    h = parser.add_argument_group("health (for announcers and routers)")
    h.add_argument("--http-listen", metavar="HOST:PORT",
                   help="serve GET /health here: 200 when this node should carry the "
                   "anycast address, 503 when not or while draining, with a JSON body "
                   "(e.g. 127.0.0.1:9180)")
    tunnel_cli.add_arguments(parser)
    rtpproxy_cli.add_arguments(parser)
    cluster_cli.add_arguments(parser)
    return parser


def settings_from_args(args: argparse.Namespace) -> node.Settings:
    proc = process.ProcessSettings(
        foreground=args.nodaemonize, debug=args.debug, user=args.username,
        group=args.groupname, chroot=args.chroot, pidfile=args.write_pid,
        log=tuple(LogTarget.parse(x) for x in args.log))
    http = None
    if args.http_listen:
        try:
            http = parse_listen(args.http_listen)
        except ListenError as exc:
            raise ConfigError(f"--http-listen {exc}") from None
    return node.Settings(proc, tunnel_cli.settings_from_args(args),
                         rtpproxy_cli.settings_from_args(args),
                         cluster_cli.settings_from_args(args), args.control_socket, http)


def services_from_args(args: argparse.Namespace) -> list[Service]:
    return node.build(settings_from_args(args))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["status"]:  # anytun-relay status: ask running nodes
        return status.main(argv[1:])
    if argv[:1] == ["health"]:  # anytun-relay health: exit 0 healthy, 1 not
        return status.health_main(argv[1:])
    if argv[:1] == ["drain"]:  # anytun-relay drain: withdraw, wait for the traffic, stop
        return status.drain_main(argv[1:])
    if argv[:1] == ["exabgp"]:  # anytun-relay exabgp: the announcer ExaBGP runs
        return announce_cli.main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        settings = settings_from_args(args)
        services = node.build(settings)
        # logging targets, daemonizing, pid file (anytun's -L -D -P -u -g -C)
        if settings.tunnel is not None or args.log or args.debug:
            process.prepare(settings.process, daemonize=settings.tunnel is not None)
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
