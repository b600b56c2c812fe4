"""The control socket's clients (relay.runtime.control) on the command line: `anytun-relay
status [--json]`, `anytun-relay health [--json]` (exit 0 when healthy) and `anytun-relay drain
[--timeout S]`, for the running nodes of this network namespace or the ones named."""

from __future__ import annotations

import json
import sys

from relay.runtime.control import DRAIN_TIMEOUT, abstract_name, discover, display, request


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
    targets = _targets(names)
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


def _targets(names: list[str]) -> list[str]:
    return [n if "/" in n else abstract_name(n) for n in names] or discover()


def health_main(argv: list[str]) -> int:
    """anytun-relay health [--json] [SOCKET|DEVICE ...]: exit 0 when every node is healthy."""
    as_json = "--json" in argv
    names = [a for a in argv if a != "--json"]
    if any(a.startswith("-") for a in names):
        print("usage: anytun-relay health [--json] [SOCKET-PATH|DEVICE ...]", file=sys.stderr)
        return 2
    targets = _targets(names)
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
        if as_json:
            print(json.dumps(doc, indent=1))
        else:
            state = "draining" if doc["draining"] else "healthy" if doc["healthy"] else "unhealthy"
            print(f"{label}: {state}" + "".join(f"\n  {r}" for r in doc["reasons"]))
        rc = rc or (0 if doc["healthy"] else 1)
    return rc


def drain_main(argv: list[str]) -> int:
    """anytun-relay drain [--timeout S] [SOCKET|DEVICE]: report draining (announcers
    withdraw), wait until the traffic has left this node or the timeout, then stop it."""
    timeout = DRAIN_TIMEOUT
    names = []
    it = iter(argv)
    for a in it:
        if a == "--timeout":
            try:
                timeout = float(next(it, ""))
            except ValueError:
                timeout = -1.0
        elif a.startswith("-"):
            timeout = -1.0
        else:
            names.append(a)
    if not 0 < timeout <= 3600 or len(names) > 1:
        print("usage: anytun-relay drain [--timeout SECONDS (default 30, at most 3600)] "
              "[SOCKET-PATH|DEVICE]", file=sys.stderr)
        return 2
    targets = _targets(names)
    if len(targets) != 1:
        print("anytun-relay: " + ("no running node found in this network namespace"
                                  if not targets else "several nodes run here; name one"),
              file=sys.stderr)
        return 1
    label = display(targets[0])
    try:
        doc = request(targets[0], f"drain {timeout:g}", timeout=timeout + 10)
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
