"""The control socket's clients (relay.runtime.control) on the command line, for the running
nodes of this network namespace or the ones named: `anytun-relay status [--json]`,
`anytun-relay health [--json]` (exit 0 when healthy) and `anytun-relay drain [--timeout S]`.

The text view carries every section of the JSON: the tunnel as anytun-showtables prints it
(Client and Route lines) and every other service (relay mode, cluster, handover, open tunnel,
AARP answers, control socket, ...) as indented key/value lines.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from aarp.ops import cli as opscli
from relay import __version__
from relay.runtime.control import DRAIN_TIMEOUT, abstract_name, discover, display, request

WIDTH = 96


TARGETS = ("a control socket path, or the device name of a node (its abstract socket "
           "@anytun-relay/DEVICE; relay-only nodes: rtpproxy)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="anytun-relay status",
        description="Show the state of the anytun-relay nodes running in this network "
        "namespace: every node found, or the ones named.",
        epilog="Exit status: 0 every node answered, 1 one did not (or none runs). Only root "
        "and the daemon's own user may ask a node.")
    p.add_argument("targets", nargs="*", metavar="SOCKET|DEVICE", help=TARGETS)
    p.add_argument("--json", action="store_true", help="print the full status as JSON")
    opscli.add_version(p, __version__)
    return p


def health_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="anytun-relay health",
        description="Ask the nodes whether they should carry the anycast address now (every "
        "service serving, not draining); what announcers and routers' checks ask.",
        epilog="Exit status: 0 every node is healthy, 1 one is not (the reasons are printed) "
        "or did not answer.")
    p.add_argument("targets", nargs="*", metavar="SOCKET|DEVICE", help=TARGETS)
    p.add_argument("--json", action="store_true", help="print the health documents as JSON")
    opscli.add_version(p, __version__)
    return p


def drain_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="anytun-relay drain",
        description="Withdraw a node: it reports draining (announcers withdraw its "
        "prefixes), waits until the traffic has left it or the timeout, then stops.",
        epilog="Exit status: 0 drained (traffic gone), 1 timed out or no such node.")
    p.add_argument("targets", nargs="?", metavar="SOCKET|DEVICE", help=TARGETS)
    p.add_argument("--timeout", type=float, default=DRAIN_TIMEOUT, metavar="SECONDS",
                   help=f"wait at most this long (default {DRAIN_TIMEOUT:g}, at most 3600)")
    opscli.add_version(p, __version__)
    return p


def _scalar(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def _is_scalar(v: Any) -> bool:
    return v is None or isinstance(v, (str, int, float, bool))


def _pairs(d: dict) -> list[str]:
    return [f"{k.replace('_', ' ')} {_scalar(v)}" for k, v in d.items() if _is_scalar(v)]


def _wrap(prefix: str, items: list[str], indent: str) -> list[str]:
    lines, line = [], prefix
    for i, item in enumerate(items):
        piece = item + ("," if i < len(items) - 1 else "")
        if len(line) + len(piece) + 1 > WIDTH and line.strip() not in ("", prefix.strip()):
            lines.append(line.rstrip())
            line = indent + "  "
        line += piece + " "
    lines.append(line.rstrip())
    return lines


def render(value: Any, indent: str) -> list[str]:
    """Generic lines of a status value: scalars on one (wrapped) line, nested parts below."""
    lines: list[str] = []
    if isinstance(value, dict):
        pairs = _pairs(value)
        if pairs:
            lines += _wrap(indent, pairs, indent)
        for k, v in value.items():
            if _is_scalar(v):
                continue
            name = k.replace("_", " ")
            if isinstance(v, list) and all(_is_scalar(x) for x in v):
                lines += _wrap(f"{indent}{name}: ", [_scalar(x) for x in v] or ["none"], indent)
            elif isinstance(v, dict) and v and all(_is_scalar(x) for x in v.values()):
                lines += _wrap(f"{indent}{name}: ", _pairs(v), indent)
            elif isinstance(v, dict) and not v:
                lines.append(f"{indent}{name}: none")
            else:
                lines.append(f"{indent}{name}:")
                items = v if isinstance(v, list) else [v]
                for item in items:
                    sub = render(item, indent + "  ")
                    lines += [indent + "- " + sub[0].lstrip(), *sub[1:]] if sub else []
    elif isinstance(value, list):
        for item in value:
            lines += render(item, indent)
    else:
        lines.append(indent + _scalar(value))
    return lines


def _tunnel(name: str, info: dict) -> list[str]:
    dev = info.get("device") or {}
    dp = info.get("dataplane", {})
    lines = [f"  {name}: device {dev.get('name')} ({dev.get('kind')}), rx {dp.get('rx', 0)} "
             f"tx {dp.get('tx', 0)} relayed {dp.get('relayed', 0)}"]
    if dp.get("drops"):
        lines.append("    drops: " + ", ".join(f"{k} {v}" for k, v in
                                               sorted(dp["drops"].items())))
    for c in info["connections"]:
        remote = c["remote"] or "not registered"
        drops = ", ".join(f"{k} {v}" for k, v in sorted(c["drops"].items())) or "none"
        lines.append(f"    Client {c['mux']}: {remote}  rx {c['rx_packets']} "
                     f"tx {c['tx_packets']} drops: {drops}")
    for r in info.get("routes", []):
        lines.append(f"    Route: {r['prefix']} -> {r['mux']}")
    rest = {k: v for k, v in info.items()
            if k not in ("device", "dataplane", "connections", "routes")}
    return lines + render(rest, "    ")


def format_status(name: str, st: dict) -> str:
    lines = [f"node {name}"]
    for section, info in st.items():
        if isinstance(info, dict) and "connections" in info and "dataplane" in info:
            lines += _tunnel(section, info)
            continue
        body = render(info, "    ")
        if body and len(body) == 1 and len(body[0]) < WIDTH - len(section):
            lines.append(f"  {section}: {body[0].strip()}")
        else:
            lines.append(f"  {section}:")
            lines += body
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    return opscli.run(lambda: _main(argv))


def _targets(names: list[str]) -> list[str]:
    return [n if "/" in n else abstract_name(n) for n in names] or discover()


def _main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    targets = _targets(args.targets)
    if not targets:
        print("anytun-relay: no running node found in this network namespace",
              file=sys.stderr)
        return 1
    rc = 0
    for t in targets:
        label = display(t)
        try:
            st = request(t, "status")
        except (OSError, ValueError) as exc:
            print(f"anytun-relay: {label}: {exc}", file=sys.stderr)
            rc = 1
            continue
        if "error" in st:
            print(f"anytun-relay: {label}: {st['error']}", file=sys.stderr)
            rc = 1
            continue
        print(json.dumps(st, indent=1) if args.json else format_status(label, st))
    return rc


def health_main(argv: list[str]) -> int:
    return opscli.run(lambda: _health(argv))


def _health(argv: list[str]) -> int:
    args = health_parser().parse_args(argv)
    targets = _targets(args.targets)
    if not targets:
        print("anytun-relay: no running node found in this network namespace", file=sys.stderr)
        return 1
    rc = 0
    for t in targets:
        label = display(t)
        try:
            doc = request(t, "health")
        except (OSError, ValueError) as exc:
            print(f"anytun-relay: {label}: {exc}", file=sys.stderr)
            rc = 1
            continue
        if "healthy" not in doc:
            print(f"anytun-relay: {label}: {doc.get('error', 'no health report')}",
                  file=sys.stderr)
            rc = 1
            continue
        if args.json:
            print(json.dumps(doc, indent=1))
        else:
            state = "draining" if doc["draining"] else "healthy" if doc["healthy"] else "unhealthy"
            print(f"{label}: {state}" + "".join(f"\n  {r}" for r in doc["reasons"]))
        rc = rc or (0 if doc["healthy"] else 1)
    return rc


def drain_main(argv: list[str]) -> int:
    """Report draining (announcers withdraw), wait until the traffic has left this node or
    the timeout, then stop it."""
    p = drain_parser()
    args = p.parse_args(argv)
    if not 0 < args.timeout <= 3600:
        p.error("--timeout: more than 0 and at most 3600 seconds")
    targets = _targets([args.targets] if args.targets else [])
    if len(targets) != 1:
        print("anytun-relay: " + ("no running node found in this network namespace"
                                  if not targets else "several nodes run here; name one"),
              file=sys.stderr)
        return 1
    label = display(targets[0])
    try:
        doc = request(targets[0], f"drain {args.timeout:g}", timeout=args.timeout + 10)
    except (OSError, ValueError) as exc:
        print(f"anytun-relay: {label}: {exc}", file=sys.stderr)
        return 1
    if "error" in doc:
        print(f"anytun-relay: {label}: {doc['error']}", file=sys.stderr)
        return 1
    how = ("traffic gone" if doc.get("drained") else
           "timed out: no announcer asked for health since" if doc.get("announcer_saw_it")
           is False else "timed out, traffic still arriving")
    print(f"{label}: drained in {doc.get('seconds')}s ({how}); the node stops now")
    return 0 if doc.get("drained") else 1
