"""Relay mode driven through rtpengine's ng protocol: anytun-relay (C media path) vs rtpengine
(userspace forwarding, no kernel module), side by side.

The same namespaces, RTP generator, load and overload as bench_relay.py; only the control
protocol differs: every call is an ng `offer` (the caller's SDP) and `answer` (the callee's
SDP) as Kamailio's rtpengine module sends them, and the parties send to the ports of the
rewritten SDPs. The client is a small script without this package, so it runs against either
relay the same way.
"""

from __future__ import annotations

import json
import os
import shutil
import sys

from bench import bench_relay as base
from bench.bench_relay import CONTROL_PORT, PORTS, Relay
from bench.common import NsPair

OURS = "anytun-relay (C media path, ng)"
PY_OURS = "anytun-relay (Python media path, ng)"
REFERENCE = "rtpengine (ng)"

NG_CLIENT = r"""
import json, re, socket, sys
calls, host, port = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
a, b, me = int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(5)
def enc(v):
    if isinstance(v, str):
        v = v.encode()
    if isinstance(v, bytes):
        return b"%d:%s" % (len(v), v)
    if isinstance(v, list):
        return b"l" + b"".join(enc(x) for x in v) + b"e"
    return b"d" + b"".join(enc(k) + enc(x) for k, x in v.items()) + b"e"
def sdp(p):
    return ("v=0\r\no=- 1 1 IN IP4 %s\r\ns=-\r\nc=IN IP4 %s\r\nt=0 0\r\n"
            "m=audio %d RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n" % (me, me, p))
def cmd(cookie, d):
    for _ in range(3):
        s.sendto(cookie + b" " + enc(d), (host, port))
        try:
            reply = s.recv(65535)
        except socket.timeout:
            continue
        if reply.startswith(cookie + b" "):
            m = re.search(rb"m=audio (\d+) ", reply)
            if not m:
                raise SystemExit(f"relay refused: {reply[:200]!r}")
            return int(m.group(1))
    raise SystemExit(f"no answer to {d['command']}")
out = []
flags = {"replace": ["origin", "session-connection"], "ICE": "remove"}
for i in range(calls):
    call = f"bench-{i}"
    p1 = cmd(b"o%d" % i, {"command": "offer", "call-id": call, "from-tag": f"ft{i}",
                          "sdp": sdp(a + 2 * i), **flags})
    p2 = cmd(b"a%d" % i, {"command": "answer", "call-id": call, "from-tag": f"ft{i}",
                          "to-tag": f"tt{i}", "sdp": sdp(b + 2 * i), **flags})
    out.append((p1, p2))
print(json.dumps(out))
"""


def relays() -> dict[str, Relay | str]:
    out: dict[str, Relay | str] = {}
    args = ["-D", "--listen-ng", f"{NsPair.B4}:{CONTROL_PORT}", "--rtp-address", NsPair.B4,
            "--rtp-ports", f"{PORTS[0]}-{PORTS[1]}", "--rtp-timeout", "300"]
    from relay import fastpath
    if fastpath.available():
        out[OURS] = Relay(OURS, [sys.executable, "-m", "relay.cli", *args])
    else:
        out[OURS] = fastpath.unavailable_reason() or "fast path not built"
    if os.environ.get("BENCH_NG_PYTHON"):
        out[PY_OURS] = Relay(PY_OURS, ["env", "RELAY_FASTPATH_MEDIA=0", sys.executable, "-m",
                                       "relay.cli", *args])
    rtpengine = shutil.which("rtpengine") or ("/usr/bin/rtpengine"
                                              if os.path.exists("/usr/bin/rtpengine") else None)
    if rtpengine:
        out[REFERENCE] = Relay(REFERENCE, [
            rtpengine, "--foreground", "--table=-1", f"--interface={NsPair.B4}",
            f"--listen-ng={NsPair.B4}:{CONTROL_PORT}", f"--port-min={PORTS[0]}",
            f"--port-max={PORTS[1]}", "--log-stderr", "--log-level=3", "--timeout=300"])
    else:
        out[REFERENCE] = "rtpengine is not installed (apt-get install rtpengine-daemon)"
    return out


def _sessions(net: NsPair, calls: int, base_a: int, base_b: int) -> list[tuple[int, int]]:
    out = net.a.run([sys.executable, "-c", NG_CLIENT, str(calls), NsPair.B4,
                     str(CONTROL_PORT), str(base_a), str(base_b), NsPair.A4], timeout=120,
                    check=False)
    if out.returncode != 0:
        raise RuntimeError(f"ng session setup failed: {(out.stderr or out.stdout).strip()[-200:]}")
    return [tuple(p) for p in json.loads(out.stdout)]  # type: ignore[misc]


def run() -> list[dict]:
    results, errors = base.measure_all(relays(), _sessions)
    with_py = any(name == PY_OURS for name, _ in results)
    ours = ((OURS, "C"), (PY_OURS, "Python")) if with_py else ((OURS, "C"),)
    return base.rows_from(results, errors, ours, REFERENCE, prefix="relay via ng")
