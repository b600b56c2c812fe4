"""`anytun-relay status [--json] [SOCKET|DEVICE ...]`: ask the running nodes of this network
namespace (their control sockets, relay.runtime.control) and print what they say."""

from __future__ import annotations

import json
import sys

from relay.runtime.control import abstract_name, discover, display, request


def format_status(name: str, st: dict) -> str:
    """anytun-showtables style lines plus counters."""
    lines = [f"node {name}"]
    for info in st.values():
        if not isinstance(info, dict) or "connections" not in info:
            continue
        dev = info.get("device") or {}
        dp = info.get("dataplane", {})
        lines.append(f"  device {dev.get('name')} ({dev.get('kind')}), rx {dp.get('rx', 0)} "
                     f"tx {dp.get('tx', 0)} relayed {dp.get('relayed', 0)}")
        if dp.get("drops"):
            lines.append("  drops: " + ", ".join(f"{k} {v}" for k, v in
                                                 sorted(dp["drops"].items())))
        for c in info["connections"]:
            remote = c["remote"] or "not registered"
            drops = ", ".join(f"{k} {v}" for k, v in sorted(c["drops"].items())) or "none"
            lines.append(f"  Client {c['mux']}: {remote}  rx {c['rx_packets']} "
                         f"tx {c['tx_packets']} drops: {drops}")
        for r in info.get("routes", []):
            lines.append(f"  Route: {r['prefix']} -> {r['mux']}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    """anytun-relay status [--json] [SOCKET|DEVICE ...]"""
    as_json = "--json" in argv
    names = [a for a in argv if a != "--json"]
    if any(a.startswith("-") for a in names):
        print("usage: anytun-relay status [--json] [SOCKET-PATH|DEVICE ...]", file=sys.stderr)
        return 2
    targets = [n if "/" in n else abstract_name(n) for n in names] or discover()
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
        print(json.dumps(st, indent=1) if as_json else format_status(label, st))
    return rc
