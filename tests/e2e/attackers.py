"""The attackers of tests/e2e/test_attack_bounds.py, run inside a lab node as
`python -m tests.e2e.attackers KIND ARGS...`; each prints one JSON line of what it did.

    junk HOST PORT SECONDS RATE MUX      random bytes, truncated headers, SATP with bad tags
    seq HOST PORT SECONDS MUX PASSPHRASE SRC DST
                                         a valid key, adversarial sequence numbers and
                                         sender IDs (jumps, wrap, replays, churn)
    slowloris HOST PORT COUNT HOLD       TCP streams that send a length header (and part of
                                         a frame) and then nothing; counts the ones closed
    sessions HOST PORT PREFIX MAX        rtpproxy offers until the relay refuses (or MAX)
    delete HOST PORT PREFIX COUNT        deletes those sessions again
    control ADDRESS SECONDS              a Unix control socket: silent connections, huge
                                         lines, garbage (ADDRESS '@name' is abstract)
    echo HOST PORT SECONDS               a phone that sends back what it gets (RTP)
    rtp HOST PORT DHOST DPORT COUNT      a phone that sends COUNT packets and times replies
"""

from __future__ import annotations

import json
import os
import random
import select
import socket
import struct
import sys
import time


def _pace(started: float, sent: int, rate: float) -> None:
    ahead = sent / rate - (time.monotonic() - started)
    if ahead > 0:
        time.sleep(ahead)


def junk(host: str, port: int, seconds: float, rate: float, mux: int) -> dict:
    rnd = random.Random(20)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setblocking(False)
    kinds = {"random": 0, "truncated": 0, "bad_auth": 0}
    started, sent = time.monotonic(), 0
    while time.monotonic() - started < seconds:
        for _ in range(64):
            k = sent % 3
            if k == 0:
                data, name = rnd.randbytes(rnd.randrange(1, 1500)), "random"
            elif k == 1:
                data, name = rnd.randbytes(rnd.randrange(0, 8)), "truncated"
            else:  # a well-formed header for a real client's MUX, a body and tag of junk
                hdr = struct.pack("!IHH", rnd.getrandbits(32), rnd.getrandbits(16), mux)
                data, name = hdr + rnd.randbytes(rnd.randrange(2, 1400)), "bad_auth"
            try:
                s.sendto(data, (host, port))
            except BlockingIOError:
                continue
            kinds[name] += 1
            sent += 1
        _pace(started, sent, rate)
    return {"sent": sent, **kinds}


def _ipv4_udp(src: str, dst: str, payload: bytes) -> bytes:
    total = 28 + len(payload)
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 0, 0x4000, 64, 17, 0,
                      socket.inet_aton(src), socket.inet_aton(dst))
    csum = sum(struct.unpack("!10H", hdr))
    while csum >> 16:
        csum = (csum & 0xFFFF) + (csum >> 16)
    hdr = hdr[:10] + struct.pack("!H", ~csum & 0xFFFF) + hdr[12:]
    return hdr + struct.pack("!HHHH", 40000, 9, 8 + len(payload), 0) + payload


def seq_attack(host: str, port: int, seconds: float, mux: int, passphrase: str, src: str,
               dst: str) -> dict:
    from relay.satp import PT_IPV4, Role, SatpContext, Suite, from_passphrase
    suite = Suite()
    ctx = SatpContext(suite, from_passphrase(passphrase, suite.kd_key_len), Role.RIGHT)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", 0))
    inner = _ipv4_udp(src, dst, b"adversarial")
    counts = {"jump": 0, "wrap": 0, "replay": 0, "sender_ids": 0}
    sealed_cache: list[bytes] = []
    seq, started, sent, sid = 5, time.monotonic(), 0, 0
    while time.monotonic() - started < seconds:
        for kind in ("jump", "jump", "wrap", "replay", "sender_ids", "sender_ids"):
            if kind == "jump":
                seq = (seq + 2**31 - 1) % 2**32   # the farthest ahead a seq can be
                d = ctx.seal(seq, 0, mux, PT_IPV4, inner)
                sealed_cache.append(d)
            elif kind == "wrap":
                seq = 2**32 - 1 - (sent % 3)
                d = ctx.seal(seq, 0, mux, PT_IPV4, inner)
            elif kind == "replay":
                d = sealed_cache[sent % len(sealed_cache)]
            else:
                sid = (sid + 1) % 65536           # a new sender ID every time
                d = ctx.seal(sent, sid, mux, PT_IPV4, inner)
            s.sendto(d, (host, port))
            counts[kind] += 1
            sent += 1
        _pace(started, sent, 3000)  # sealing in Python is the limit anyway
    return {"sent": sent, **counts}


def slowloris(host: str, port: int, count: int, hold: float) -> dict:
    conns = []
    refused = 0
    for i in range(count):
        c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        c.settimeout(2)
        try:
            c.connect((host, port))
            # a length header promising 1500 bytes, then part of them (or nothing), then silence
            c.sendall(struct.pack("!H", 1500) + b"\xab" * (i % 4) * 100)
        except OSError:
            refused += 1
            c.close()
            continue
        c.setblocking(False)
        conns.append(c)
    opened = len(conns)
    closed = 0
    first_closed = None
    started = time.monotonic()
    alive = list(conns)
    while alive and time.monotonic() - started < hold:
        r, _, _ = select.select(alive, [], [], 0.2)
        for c in r:
            try:
                gone = c.recv(4096) == b""
            except OSError:
                gone = True
            if gone:
                closed += 1
                if first_closed is None:
                    first_closed = time.monotonic() - started
                alive.remove(c)
                c.close()
    for c in alive:
        c.close()
    return {"opened": opened, "refused": refused, "closed_by_server": closed,
            "still_open": len(alive), "first_closed_after": first_closed}


def _rtpproxy(host: str, port: int, commands: list[str]) -> list[str]:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(2)
    replies = []
    for i, cmd in enumerate(commands):
        cookie = f"a{i}_{os.getpid()}"
        s.sendto(f"{cookie} {cmd}".encode(), (host, port))
        while True:
            data = s.recv(65536).decode()
            if data.startswith(cookie + " "):
                replies.append(data[len(cookie) + 1:].strip())
                break
    return replies


def sessions(host: str, port: int, prefix: str, most: int) -> dict:
    created, error = 0, None
    for i in range(most):
        (reply,) = _rtpproxy(host, port, [f"Uc8 {prefix}-{i} 10.99.0.{i % 250 + 1} 7000 f{i}"])
        if reply.startswith("E"):
            error = reply
            break
        created += 1
    return {"created": created, "error": error}


def delete(host: str, port: int, prefix: str, count: int) -> dict:
    replies = _rtpproxy(host, port, [f"D {prefix}-{i} f{i}" for i in range(count)])
    return {"deleted": sum(r == "0" for r in replies), "replies": sorted(set(replies))}


def control(address: str, seconds: float) -> dict:
    addr = "\0" + address[1:] if address.startswith("@") else address
    rnd = random.Random(5)
    held, counts = [], {"silent": 0, "huge": 0, "garbage": 0, "answered": 0, "failed": 0}
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        for kind in ("silent", "silent", "huge", "garbage"):
            c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            c.settimeout(1)
            try:
                c.connect(addr)
            except OSError:
                counts["failed"] += 1
                c.close()
                continue
            counts[kind] += 1
            if kind == "silent":
                held.append(c)
                continue
            try:
                if kind == "huge":  # 1 MiB without a newline: the node stops reading early
                    c.sendall(b"s" * (1 << 20))
                else:
                    c.sendall(rnd.randbytes(rnd.randrange(1, 300)) + b"\n")
            except OSError:
                pass
            try:
                if c.recv(4096):
                    counts["answered"] += 1
            except OSError:
                counts["failed"] += 1
            c.close()
        time.sleep(0.01)
    counts["held"] = len(held)
    for c in held:
        c.close()
    return counts


def echo(host: str, port: int, seconds: float) -> dict:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((host, port))
    s.settimeout(0.2)
    n, started = 0, time.monotonic()
    print("ready", flush=True)
    while time.monotonic() - started < seconds:
        try:
            data, src = s.recvfrom(4096)
        except TimeoutError:
            continue
        s.sendto(data, src)
        n += 1
    return {"echoed": n}


def rtp(host: str, port: int, dhost: str, dport: int, count: int) -> dict:
    """RTP-sized packets at 50/s' spacing (20 ms), each timed until its echo returns."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((host, port))
    s.settimeout(0.5)
    rtts: list[float] = []
    for i in range(count):
        pkt = struct.pack("!BBHII", 0x80, 8, i, i * 160, 0x1234) + b"\xd5" * 160
        t0 = time.monotonic()
        s.sendto(pkt, (dhost, dport))
        deadline = t0 + 0.5
        while time.monotonic() < deadline:
            try:
                data, _ = s.recvfrom(4096)
            except TimeoutError:
                break
            if data == pkt:
                rtts.append(time.monotonic() - t0)
                break
        time.sleep(max(0.0, 0.02 - (time.monotonic() - t0)))
    return {"sent": count, "received": len(rtts),
            "avg_ms": 1000 * sum(rtts) / len(rtts) if rtts else None}


def main(argv: list[str]) -> None:
    kind, *a = argv
    if kind == "junk":
        out = junk(a[0], int(a[1]), float(a[2]), float(a[3]), int(a[4]))
    elif kind == "seq":
        out = seq_attack(a[0], int(a[1]), float(a[2]), int(a[3]), a[4], a[5], a[6])
    elif kind == "slowloris":
        out = slowloris(a[0], int(a[1]), int(a[2]), float(a[3]))
    elif kind == "sessions":
        out = sessions(a[0], int(a[1]), a[2], int(a[3]))
    elif kind == "delete":
        out = delete(a[0], int(a[1]), a[2], int(a[3]))
    elif kind == "control":
        out = control(a[0], float(a[1]))
    elif kind == "echo":
        out = echo(a[0], int(a[1]), float(a[2]))
    elif kind == "rtp":
        out = rtp(a[0], int(a[1]), a[2], int(a[3]), int(a[4]))
    else:
        raise SystemExit(f"unknown attacker {kind!r}")
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
