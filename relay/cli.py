"""anytun-relay: the command line of the daemon.

The parser is composed of anytun's process options (here) and the options of each mode
(relay.tunnel.cli, relay.rtpproxy.cli, relay.cluster.cli); each mode reads its options into
its settings, raising ConfigError on a user mistake. A --config file (relay.configfile) fills
the same options. relay.node turns the settings into services, and relay.runtime runs them;
every mode and combination gets the same process behaviour (relay.runtime.process).

Commands beside the daemon: `anytun-relay status`, `health` and `drain` (relay.status),
`anytun-relay check-config FILE`, and `anytun-relay exabgp` (relay.announce).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable
from typing import Any

from aarp.ops import cli as opscli
from relay import __version__, configfile, node
from relay.cluster import cli as cluster_cli
from relay.rtpproxy import cli as rtpproxy_cli
from relay.runtime import process
from relay.runtime.daemon import Service, run_services
from relay.runtime.errors import ConfigError
from relay.runtime.logtargets import LogTarget
from relay.tunnel import cli as tunnel_cli
from relay.tunnel.settings import PeerSettings, ServerSettings

VERSION_DETAIL = "SATP as anytun 0.3.8 / uanytun 0.3.7"


def _process_arguments(parser: argparse.ArgumentParser) -> None:
    p = parser.add_argument_group("process (as anytun)")
    opscli.add_version(p, __version__, "-v", "--version", detail=lambda: VERSION_DETAIL)
    p.add_argument("-D", "--nodaemonize", action="store_true",
                   help="don't run in background (as systemd units run it)")
    p.add_argument("-u", "--username", help="change to this user after setup")
    p.add_argument("-g", "--groupname", help="change to this group (with -u)")
    p.add_argument("-C", "--chroot", metavar="PATH", help="chroot to this directory")
    p.add_argument("-P", "--write-pid", metavar="PATH", help="write pid to this file")
    p.add_argument("-L", "--log", action="append", default=[],
                   metavar="TARGET:LEVEL[,PARAM...]",
                   help="add a log target: syslog|file|stdout|stderr, level 0..5 "
                   "(e.g. stdout:5); default syslog:3,anytun-relay,daemon, and the journal "
                   "under systemd")
    p.add_argument("-U", "--debug", action="store_true",
                   help="don't daemonize and log to stdout with maximum log level")
    p.add_argument("--http-listen", metavar="HOST:PORT",
                   help="serve GET /health (200 when this node should carry the anycast "
                   "address, 503 when not or while draining), /metrics (Prometheus) and "
                   "/status (JSON) on this address, e.g. 127.0.0.1:9180")


SECTIONS: tuple[tuple[str, Callable[[argparse.ArgumentParser], None]], ...] = (
    ("process", _process_arguments), ("tunnel", tunnel_cli.add_arguments),
    ("relay", rtpproxy_cli.add_arguments), ("cluster", cluster_cli.add_arguments))


class _HelpFormatter(argparse.HelpFormatter):
    """argparse's own, with the terminal width found without shutil (argparse would import it,
    and with it the compression modules, only for that)."""

    def __init__(self, prog: str, **kwargs: Any) -> None:
        if kwargs.get("width") is None:
            try:
                columns = int(os.environ["COLUMNS"])
            except (KeyError, ValueError):
                try:
                    columns = os.get_terminal_size(sys.__stdout__.fileno()).columns
                except (AttributeError, ValueError, OSError):
                    columns = 80
            kwargs["width"] = columns - 2
        super().__init__(prog, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="anytun-relay", formatter_class=_HelpFormatter,
        description="Anycast tunnel endpoint speaking SATP (wire-compatible with anytun and "
        "uanytun, and accepting their options), anycast tunnel server, rtpproxy-protocol "
        "media relay, with state sync between the servers of one anycast address.",
        epilog="Commands: 'anytun-relay status [--json] [DEVICE]' shows running nodes, "
        "'anytun-relay health' and 'anytun-relay drain' ask and withdraw them, "
        "'anytun-relay exabgp' is the announcer ExaBGP runs, 'anytun-relay check-config FILE' "
        "checks a configuration file. Every option also "
        "has a place in the --config file: its long name with _ for -, in the section "
        "[process], [tunnel], [relay] or [cluster] of its group. Environment: "
        "ANYTUN_RELAY_CRYPTO=openssl runs the C data plane's crypto on OpenSSL instead of "
        "the CPU's AES-NI/SHA-NI.",
    )
    sections: dict[str, str] = {}
    for section, add in SECTIONS:
        before = len(parser._actions)
        add(parser)
        for action in parser._actions[before:]:
            sections[action.dest] = section
    parser.file_sections = sections  # type: ignore[attr-defined]  # for relay.configfile
    return parser


def settings_from_args(args: argparse.Namespace) -> node.Settings:
    proc = process.ProcessSettings(
        foreground=args.nodaemonize, debug=args.debug, user=args.username,
        group=args.groupname, chroot=args.chroot, pidfile=args.write_pid,
        log=tuple(LogTarget.parse(x) for x in args.log))
    http = None
    if args.http_listen:
        from relay.runtime.http import listen_address
        http = listen_address(args.http_listen)
    return node.Settings(proc, tunnel_cli.settings_from_args(args),
                         rtpproxy_cli.settings_from_args(args),
                         cluster_cli.settings_from_args(args), args.control_socket, http)


def parse(argv: list[str]) -> node.Settings:
    """The settings of the command line and its --config file (ConfigError on a mistake)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.config or args.control_host:   # (-X with --config: refused as usual)
        return settings_from_args(args)
    tunnel_cli.refuse_node_options(args)
    loaded = configfile.load(parser, args, args.config)
    try:
        settings = settings_from_args(loaded.args)
        process.check(settings.process)   # users, groups, chroot: named by the file's line
        return settings
    except ConfigError as exc:
        raise ConfigError(loaded.explain(parser, str(exc))) from None


def services_from_args(args: argparse.Namespace) -> list[Service]:
    return node.build(settings_from_args(args))


def check_config_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="anytun-relay check-config",
        description="Check an anytun-relay configuration file as the daemon would read it "
        "(every section, the keys, files it names, users, groups), without opening devices "
        "or sockets. Prints what the node would run.",
        epilog="Exit status: 0 the file is good, 2 it is not (the first mistake, with its "
        "line, on stderr).")
    p.add_argument("file", metavar="FILE")
    opscli.add_version(p, __version__)
    return p


def check_config(argv: list[str]) -> int:
    """anytun-relay check-config FILE: parse and check a configuration, open nothing."""
    args = check_config_parser().parse_args(argv)
    try:
        settings = parse(["--config", args.file])   # (users and groups checked there too)
        if settings.tunnel is None and settings.relay is None:
            raise ConfigError(f"{args.file}: nothing to do: no tunnel ([tunnel] or [node]) "
                              "and no relay mode ([relay])")
    except ConfigError as exc:
        print(f"anytun-relay: {exc}", file=sys.stderr)
        return 2
    print(f"{args.file}: ok")
    for line in node.describe(settings):
        print(f"  {line}")
    if configfile.readable_by_others(args.file) and _holds_keys(settings):
        print(f"  warning: {args.file} holds keys and is readable by every user: "
              "chmod 640, group of the daemon's user")
    return 0


def _holds_keys(settings: node.Settings) -> bool:
    t = settings.tunnel
    if isinstance(t, PeerSettings):
        return t.connection.master is not None
    return isinstance(t, ServerSettings) and any(c.master for c in t.connections)


# The commands' modules are imported when one runs: the daemon never loads them.
def _status(argv: list[str]) -> int:
    from relay import status
    return status.main(argv)


def _health(argv: list[str]) -> int:
    from relay import status
    return status.health_main(argv)


def _drain(argv: list[str]) -> int:
    from relay import status
    return status.drain_main(argv)


def _exabgp(argv: list[str]) -> int:
    from relay.announce import cli as announce_cli
    return announce_cli.main(argv)


COMMANDS: dict[str, Callable[[list[str]], int]] = {
    "status": _status, "health": _health, "drain": _drain, "exabgp": _exabgp,
    "check-config": lambda a: opscli.run(lambda: check_config(a))}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] and argv[0] in COMMANDS:
        return COMMANDS[argv[0]](argv[1:])
    try:
        settings = parse(argv)
        process.prepare_files(settings.process, node.files(settings))
        services = node.build(settings)
        # logging targets, daemonizing, pid file, privileges (anytun's -L -D -P -u -g -C)
        process.prepare(settings.process, capabilities=node.capabilities(settings))
    except ConfigError as exc:
        print(f"anytun-relay: {exc}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(run_services(services))
    except ConfigError as exc:
        print(f"anytun-relay: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
