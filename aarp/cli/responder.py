"""aarp-responder: answer AARP probes for this server's anycast addresses.

As a daemon: foreground (systemd Type=notify: READY=1, STOPPING=1, watchdog pings), logs in
the distribution's format (journald's under systemd), CAP_NET_RAW given up once the raw
sockets are open, and with --http-listen GET /metrics and /status.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import logging
import signal
import sys

from aarp import __version__
from aarp import config as aconfig
from aarp.ops import caps, logfmt, sdnotify
from aarp.ops import cli as opscli
from aarp.ops.http import ListenError, OpsHttpServer, Reply, parse_listen
from aarp.responder import DEFAULT_BURST, DEFAULT_RATE, DEFAULT_TTL
from aarp.responder_service import ResponderError, ResponderService, check_address

LOG_LEVELS = {"off": logging.CRITICAL + 10, "error": logging.ERROR, "info": logging.INFO,
              "debug": logging.DEBUG}


MAX_RATE = 1e6


class UsageError(Exception):
    pass


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="aarp-responder",
        description="Answer AARP probes (ICMP echo and UDP) for this server's anycast addresses "
        "with this server's unicast address, from the anycast address itself. Runs in the "
        "foreground until SIGTERM/SIGINT.",
        epilog="Keys, port and log level default to /etc/aarp.conf (AARP_CONF) and AARP_* "
        "variables.",
    )
    p.add_argument("--anycast", action="append", default=[], metavar="ADDR",
                   help="an anycast address to serve (repeatable, or comma-separated); default: "
                   "the single-address 'anycast' entries of the configuration")
    p.add_argument("--unicast", action="append", default=[], metavar="ADDR",
                   help="the unicast address to announce, one per family (repeatable); default: "
                   "a global address of that family on a non-loopback interface")
    p.add_argument("--port", type=int, help="UDP port (default: config 'port', 4445)")
    p.add_argument("--ttl", type=int, default=DEFAULT_TTL,
                   help=f"seconds clients may cache the answer (default {DEFAULT_TTL})")
    p.add_argument("--key", metavar="HEX", help="sign answers with this HMAC-SHA256 key "
                   "(16-64 bytes in hex; default: config 'key')")
    p.add_argument("--key-id", type=int, metavar="N", help="key identifier 0-255 sent with "
                   "signed answers (default: config 'key_id', 0)")
    p.add_argument("--no-icmp", action="store_true", help="do not answer ICMP echo queries "
                   "(then no raw socket and no privilege is needed)")
    p.add_argument("--no-udp", action="store_true", help="do not answer UDP queries")
    p.add_argument("--rate", type=float, default=DEFAULT_RATE,
                   help=f"answers per second per source (default {DEFAULT_RATE:g})")
    p.add_argument("--burst", type=int, default=DEFAULT_BURST,
                   help=f"burst of answers per source (default {DEFAULT_BURST})")
    p.add_argument("--config", metavar="PATH", help="configuration file (default: $AARP_CONF "
                   "or /etc/aarp.conf)")
    p.add_argument("--log", choices=tuple(LOG_LEVELS), help="log level on stderr "
                   "(default: config 'log', else error)")
    p.add_argument("-v", "--verbose", action="store_true", help="same as --log info")
    p.add_argument("--status", action="store_true", help="print the status as JSON on exit")
    p.add_argument("--http-listen", metavar="HOST:PORT",
                   help="serve GET /health (200 healthy, 503 not; a JSON body with the "
                   "reasons), /metrics (Prometheus) and /status (JSON) here, e.g. "
                   "127.0.0.1:9181; for a router's health checks and monitoring")
    p.add_argument("--check", action="store_true",
                   help="do not serve: probe the anycast addresses from this host and exit 0 "
                   "if the responder running here answers each with this host's unicast "
                   "address, 1 if not (for health checks and ExaBGP's announcer)")
    opscli.add_version(p, __version__)
    return p


def _addresses(values: list[str], what: str) -> list[str]:
    out = []
    for value in values:
        for item in value.replace(",", " ").split():
            try:
                out.append(str(ipaddress.ip_address(item)))
            except ValueError:
                raise UsageError(f"{what} '{item}' is not an IP address") from None
    return out


def service_from_args(args: argparse.Namespace, cfg: aconfig.Config) -> ResponderService:
    anycast = _addresses(args.anycast, "--anycast")
    if not anycast:
        anycast = [str(p.network_address) for p in cfg.anycast
                   if p.prefixlen == p.max_prefixlen]
    if not anycast:
        raise UsageError("no anycast address to serve: give --anycast ADDR (or single "
                         "addresses in the configuration's 'anycast')")
    unicast = _addresses(args.unicast, "--unicast")
    if set(unicast) & set(anycast):
        raise UsageError("--unicast must not be one of the anycast addresses")
    if len({ipaddress.ip_address(u).version for u in unicast}) != len(unicast):
        raise UsageError("--unicast takes at most one address per family")
    key = cfg.key
    if args.key is not None:
        try:
            key = bytes.fromhex(args.key)
        except ValueError:
            raise UsageError("--key must be hex") from None
        if not 16 <= len(key) <= 64:
            raise UsageError("--key must be 16-64 bytes (32-128 hex digits)")
    key_id = cfg.key_id if args.key_id is None else args.key_id
    port = cfg.port if args.port is None else args.port
    for name, value, lo, hi in (("--key-id", key_id, 0, 255), ("--port", port, 1, 65535),
                                ("--ttl", args.ttl, 0, 0xFFFFFFFF), ("--burst", args.burst, 1,
                                                                     10**6)):
        if not lo <= value <= hi:
            raise UsageError(f"{name} must be {lo}-{hi}")
    if not 0 < args.rate <= MAX_RATE:  # also refuses nan and inf
        raise UsageError(f"--rate must be above 0 and at most {MAX_RATE:g} answers per second")
    return ResponderService.from_options(
        anycast, unicast, ttl=args.ttl, key=key, key_id=key_id, port=port,
        icmp=not args.no_icmp, udp=not args.no_udp, rate=args.rate, burst=args.burst)


def http_endpoints(service: ResponderService, http: OpsHttpServer) -> None:
    """GET /health, /metrics and /status."""
    async def health() -> Reply:
        doc = await service.health()
        return Reply.json(200 if doc["healthy"] else 503, doc)

    async def metrics() -> Reply:
        from aarp.metrics import responder_metrics  # only when scraped: idle memory
        from aarp.ops import exposition

        m = exposition.Metrics("")
        responder_metrics(m, service.status())
        return Reply(200, m.render(), exposition.CONTENT_TYPE)

    async def status() -> Reply:
        return Reply.json(200, service.status())

    http.route("/health", health)
    http.route("/metrics", metrics)
    http.route("/status", status)


def _give_up_privileges() -> None:
    """The raw sockets are open: nothing the responder does later needs a capability."""
    if caps.read()["permitted"]:
        caps.restrict(())
        logging.getLogger("aarp.responder").info("sockets open; capabilities given up")


async def _serve(service: ResponderService, http: OpsHttpServer | None) -> None:
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await service.start()
    watchdog = sdnotify.Watchdog()
    try:
        if http is not None:
            http_endpoints(service, http)
            await http.start()
        _give_up_privileges()
        sdnotify.ready(f"answering for {', '.join(service.status()['anycast'])}")
        watchdog.start()
        await stopping.wait()
        sdnotify.stopping()
    finally:
        await watchdog.stop()
        if http is not None:
            await http.stop()
        await service.stop()
        logging.getLogger("aarp.responder").info("stopped: %s",
                                                 json.dumps(service.status()["counters"]))


def check(service: ResponderService) -> int:
    """--check: one line per anycast address; 0 when every one is answered by us."""
    rc = 0
    for aa in service.config.anycast:
        why = check_address(service.config, aa, timeout_ms=500)
        if why:
            print(f"aarp-responder: {why}", file=sys.stderr)
            rc = 1
        else:
            print(f"{aa}: ok, unicast {service.config.unicast_for(aa.version)}")
    return rc


def main(argv: list[str] | None = None) -> int:
    return opscli.run(lambda: _main(argv))


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = aconfig.load(args.config)
    except aconfig.ConfigError as exc:
        print(f"aarp-responder: {exc}", file=sys.stderr)
        return 2
    level = "info" if args.verbose else (args.log or cfg.log or "error")
    logfmt.to_stderr(LOG_LEVELS[level])
    try:
        service = service_from_args(args, cfg)
    except UsageError as exc:
        print(f"aarp-responder: {exc}", file=sys.stderr)
        return 2
    except ResponderError as exc:
        print(f"aarp-responder: {exc}", file=sys.stderr)
        return 1
    if args.check:
        return check(service)
    http = None
    if args.http_listen:
        try:
            http = OpsHttpServer(*parse_listen(args.http_listen))
        except ListenError as exc:
            print(f"aarp-responder: --http-listen {exc}", file=sys.stderr)
            return 2
    try:
        asyncio.run(_serve(service, http))
    except (ResponderError, ListenError) as exc:
        print(f"aarp-responder: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    if args.status:
        print(json.dumps(service.status()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
