"""aarp-resolve: resolve anycast addresses (or names) to the unicast address that answers them."""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from aarp import __version__, names
from aarp import config as aconfig
from aarp.config import Config
from aarp.errors import AARPError, ResolveError
from aarp.ops import cli as opscli
from aarp.ops import logfmt
from aarp.resolver import Resolution, probe

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Prober = Callable[[IPAddress, Config], Resolution]


class UsageError(Exception):
    pass


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="aarp-resolve",
        description="Resolve an anycast address or host name to the unicast address of the "
        "server that currently answers it (AARP probe over ICMP echo and/or UDP). Prints one "
        "line per destination address, the unicast address first. Always probes afresh.",
        epilog="Exit status: 0 every destination resolved, 1 one did not (reason on stderr), "
        "2 usage or configuration error. Defaults come from /etc/aarp.conf (AARP_CONF) and "
        "AARP_* variables.",
    )
    p.add_argument("destinations", nargs="*", metavar="ADDR|NAME")
    fam = p.add_mutually_exclusive_group()
    fam.add_argument("-4", dest="version", action="store_const", const=4,
                     help="IPv4 only (A records)")
    fam.add_argument("-6", dest="version", action="store_const", const=6,
                     help="IPv6 only (AAAA records)")
    p.add_argument("--json", action="store_true", help="print details as JSON")
    p.add_argument("--method", choices=aconfig.METHODS,
                   help="auto (ICMP where possible, and UDP), icmp or udp (default: config)")
    p.add_argument("--timeout", type=int, metavar="MS", help="how long one probe waits, in ms")
    p.add_argument("--retries", type=int, metavar="N", help="extra probes after a timeout")
    p.add_argument("--count", "-c", type=int, default=1, metavar="N",
                   help="probe N times and report like ping")
    p.add_argument("--interval", "-i", type=float, default=1.0, metavar="SECONDS",
                   help="pause between repeated probes (default 1)")
    p.add_argument("--port", type=int, help="UDP port of the responders (default: config, 4445)")
    p.add_argument("--policy", choices=aconfig.POLICIES, help="verification policy")
    p.add_argument("--key", metavar="HEX", help="shared key to verify tags (implies --policy "
                   "key unless --policy says otherwise)")
    p.add_argument("--key-id", type=int, metavar="N", help="expected key-id (0-255)")
    p.add_argument("--nameserver", action="append", metavar="ADDR",
                   help="DNS server for names (repeatable; default: /etc/resolv.conf)")
    p.add_argument("--config", metavar="PATH", help="configuration file")
    p.add_argument("--cache", action="store_true",
                   help="show the host cache (what 'aarp-shim --cache-daemon' shares with "
                   "every process using libaarp.so) instead of probing")
    p.add_argument("--via-shim", action="store_true",
                   help="resolve through libaarp.so: what the preload library would do "
                   "(addresses outside the 'anycast' prefixes are left unchanged)")
    opscli.add_version(p, __version__)
    return p


def _check_range(name: str, value: int | float | None, lo: float, hi: float) -> None:
    if value is not None and not lo <= value <= hi:
        raise UsageError(f"{name} must be {lo:g}-{hi:g}")


def _check_nameservers(values: list[str] | None) -> None:
    for value in values or ():
        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise UsageError(f"--nameserver '{value}' is not an IP address") from None


def config_from_args(args: argparse.Namespace) -> Config:
    cfg = aconfig.load(args.config)
    _check_nameservers(args.nameserver)
    _check_range("--timeout", args.timeout, 1, aconfig.MAX_PROBE_MS)
    _check_range("--retries", args.retries, 0, 10)
    _check_range("--port", args.port, 1, 65535)
    _check_range("--key-id", args.key_id, 0, 255)
    _check_range("--count", args.count, 1, 100000)
    _check_range("--interval", args.interval, 0, 3600)
    changes: dict[str, object] = {}
    for opt, key in (("timeout", "timeout_ms"), ("retries", "retries"), ("port", "port"),
                     ("method", "method"), ("key_id", "key_id"), ("policy", "policy")):
        if getattr(args, opt) is not None:
            changes[key] = getattr(args, opt)
    if args.key is not None:
        try:
            key = bytes.fromhex(args.key)
        except ValueError:
            raise UsageError("--key must be hex") from None
        _check_range("--key length in bytes", len(key), 16, 64)
        changes["key"] = key
        changes.setdefault("policy", "key")
    cfg = cfg.replace(**changes)
    if cfg.timeout_ms * (1 + cfg.retries) > aconfig.MAX_PROBE_MS:
        raise UsageError(f"--timeout x (1 + --retries) must be at most {aconfig.MAX_PROBE_MS} ms "
                         f"(it is {cfg.timeout_ms} x {1 + cfg.retries})")
    if cfg.policy == "key" and cfg.key is None:
        raise UsageError("policy 'key' needs a key (--key or 'key' in the configuration)")
    return cfg.replace(grace_ms=min(cfg.grace_ms, cfg.timeout_ms))


def make_prober(args: argparse.Namespace) -> Prober:
    """How one destination address is probed. Alternative probers (e.g. `--via-shim`, which
    resolves through libaarp.so) plug in here and must return a Resolution or raise
    ResolveError."""
    if getattr(args, "via_shim", False):
        from aarp import shim

        try:
            shim.library_path()
        except shim.ShimNotBuilt as exc:
            raise UsageError(str(exc)) from None
        return lambda aa, cfg: shim.resolution(str(aa), cfg)
    return lambda aa, cfg: probe(aa, cfg)


@dataclass
class Destination:
    label: str  # as given on the command line
    address: IPAddress | None
    error: str | None = None
    results: list[Resolution] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)

    @property
    def resolved(self) -> bool:
        return bool(self.results)


def expand(targets: list[str], version: int | None,
           nameservers: list[str] | None) -> list[Destination]:
    out = []
    for target in targets:
        if names.looks_like_address(target):
            try:
                addr = aconfig.as_address(target)
            except ValueError:
                raise UsageError(f"'{target}' is not a valid IP address") from None
            if version is not None and addr.version != version:
                raise UsageError(f"{target} is not an IPv{version} address")
            out.append(Destination(target, addr))
            continue
        try:
            out.extend(Destination(target, a) for a in names.addresses(target, version,
                                                                       nameservers))
        except AARPError as exc:
            out.append(Destination(target, None, error=str(exc)))
    return out


def _line(dest: Destination, res: Resolution) -> str:
    name = f" ({dest.label})" if dest.label != str(dest.address) else ""
    verified = res.verification if res.verified else "no"
    return (f"{res.unicast}  {res.anycast}{name}  {res.learned}/{res.method}  "
            f"rtt={res.rtt * 1000:.2f}ms ttl={res.ttl} verified={verified}")


def _summary(dest: Destination, sent: int) -> str:
    got = len(dest.results)
    line = (f"--- {dest.address}: {sent} probes, {got} answered, "
            f"{100 * (sent - got) / sent:.0f}% lost")
    if got:
        rtts = [r.rtt * 1000 for r in dest.results]
        by = Counter(r.unicast for r in dest.results)
        line += (f", rtt min/avg/max = {min(rtts):.2f}/{sum(rtts) / got:.2f}/{max(rtts):.2f} ms"
                 f", answered by " + ", ".join(f"{ua} ({n})" for ua, n in by.items()))
    return line


def _json(dest: Destination, count: int) -> dict:
    first = dest.results[0].to_dict() if dest.results else {}
    doc: dict = {"destination": dest.label,
                 "anycast": str(dest.address) if dest.address else None,
                 "resolved": dest.resolved, **{k: v for k, v in first.items()
                                               if k not in ("anycast", "from_cache")},
                 "error": None if dest.resolved else (dest.error or (dest.failures or [None])[0]),
                 "ignored": dest.ignored}
    if count > 1:
        doc["sent"] = count if dest.address else 0
        doc["answered"] = len(dest.results)
        doc["probes"] = [r.to_dict() for r in dest.results]
        doc["failures"] = dest.failures
    return doc


def show_cache(cfg: Config, as_json: bool) -> int:
    """Print the host cache; 0, or 1 when there is none (reason on stderr)."""
    from aarp import hostcache, shim

    if not cfg.host_cache:
        print("aarp-resolve: the host cache is off ('host_cache = off')", file=sys.stderr)
        return 1
    try:
        info, entries = hostcache.read(cfg.host_cache)
    except (hostcache.HostCacheError, shim.ShimNotBuilt) as exc:
        print(f"aarp-resolve: no host cache: {exc} (is 'aarp-shim --cache-daemon' running?)",
              file=sys.stderr)
        return 1
    running = hostcache.daemon_answers(cfg.host_cache)
    if as_json:
        print(json.dumps({"host_cache": {**info.to_dict(), "daemon_answers": running},
                          "entries": [e.to_dict() for e in entries]}, indent=1))
        return 0
    state = "answers" if running else "does not answer (entries are still used until expiry)"
    print(f"host cache {cfg.host_cache}: daemon pid {info.pid} {state}; "
          f"{len(entries)} live entries of {info.slots}; policy {info.policy}, port {info.port}"
          f"; {info.requests} requests, {info.probes} probes, {info.refreshes} refreshes"
          + ("" if info.same_netns else "; ANOTHER network namespace: not used here"))
    for e in entries:
        what = e.unicast if e.status == "pinned" else e.status
        print(f"{e.anycast:<40} {what:<40} {e.how or '-':<12} verified={e.verified:<6} "
              f"ttl={e.ttl} expires_in={e.expires_in_ms / 1000:.1f}s probes={e.probes}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return opscli.run(lambda: _main(argv))


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    logfmt.to_stderr(logging.WARNING)
    if args.cache:
        try:
            return show_cache(aconfig.load(args.config), args.json)
        except aconfig.ConfigError as exc:
            print(f"aarp-resolve: {exc}", file=sys.stderr)
            return 2
    if not args.destinations:
        print("aarp-resolve: give at least one ADDR|NAME (or --cache)", file=sys.stderr)
        return 2
    try:
        cfg = config_from_args(args)
        prober = make_prober(args)
        dests = expand(args.destinations, args.version, args.nameserver)
    except (UsageError, aconfig.ConfigError) as exc:
        print(f"aarp-resolve: {exc}", file=sys.stderr)
        return 2
    for i in range(args.count):
        if i:
            time.sleep(args.interval)
        for dest in dests:
            if dest.address is None:
                continue
            try:
                res = prober(dest.address, cfg)
            except ResolveError as exc:
                dest.failures.append(exc.reason)
                dest.ignored.extend(i for i in exc.ignored if i not in dest.ignored)
                if not args.json:
                    print(f"aarp-resolve: {dest.label}: {exc.reason}" if dest.label == str(
                        dest.address) else f"aarp-resolve: {dest.label} ({dest.address}): "
                        f"{exc.reason}", file=sys.stderr)
                continue
            dest.results.append(res)
            if not args.json:
                print(_line(dest, res), flush=True)
    for dest in dests:
        if dest.error and not args.json:
            print(f"aarp-resolve: {dest.error}", file=sys.stderr)
        if args.count > 1 and dest.address is not None and not args.json:
            print(_summary(dest, args.count))
    if args.json:
        print(json.dumps([_json(d, args.count) for d in dests], indent=1))
        for dest in dests:
            if dest.error:
                print(f"aarp-resolve: {dest.error}", file=sys.stderr)
            elif not dest.resolved:
                reason = (dest.failures or ["not resolved"])[-1]
                print(f"aarp-resolve: {dest.label}: {reason}", file=sys.stderr)
    return 0 if all(d.resolved for d in dests) else 1


if __name__ == "__main__":
    sys.exit(main())
