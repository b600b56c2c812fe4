"""The traffic of a chaos run, as small programs started inside the lab's namespaces:

    python -m bench.chaos_traffic sink ADDR PORT SIZE SEED
    python -m bench.chaos_traffic source ADDR PORT SIZE SEED SECONDS
    python -m bench.chaos_traffic phone BIND_ADDR PORT DEST_ADDR DEST_PORT SECONDS

sink/source: one TCP stream of SIZE pseudo-random bytes (from SEED) paced evenly over SECONDS;
the sink regenerates the stream and says, as one JSON line, how many bytes arrived and whether
they are exactly the stream's first bytes. phone: RTP-sized packets every 20 ms to DEST for
SECONDS (from 0.5 s on, listening 0.5 s longer), and when each packet arrived
(CLOCK_MONOTONIC, shared by every namespace) from where.
"""

from __future__ import annotations

import json
import random
import socket
import sys
import time

CHUNK = 8192


def stream(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def _family(addr: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def sink(addr: str, port: int, size: int, seed: int) -> dict:
    want = stream(size, seed)
    srv = socket.create_server((addr, port), family=_family(addr))
    print("ready", flush=True)
    srv.settimeout(120)
    conn, _ = srv.accept()
    conn.settimeout(120)
    got = bytearray()
    error = ""
    try:
        while True:
            b = conn.recv(65536)
            if not b:
                break
            got += b
    except OSError as exc:
        error = f"{type(exc).__name__}: {exc}"
    return {"received": len(got), "intact": bytes(got) == want[:len(got)], "error": error}


def source(addr: str, port: int, size: int, seed: int, seconds: float) -> dict:
    data = stream(size, seed)
    conn = socket.create_connection((addr, port), timeout=120)
    t0, sent, error = time.monotonic(), 0, ""
    try:
        while sent < size:
            due = t0 + seconds * sent / size      # paced: a stall is caught up afterwards
            pause = due - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            conn.sendall(data[sent:sent + CHUNK])
            sent = min(size, sent + CHUNK)
        conn.shutdown(socket.SHUT_WR)
        conn.settimeout(120)
        conn.recv(1)                               # the sink closes after the last byte
    except OSError as exc:
        error = f"{type(exc).__name__}: {exc}"
    finally:
        conn.close()
    return {"sent": sent, "error": error}


def phone(bind: str, port: int, dest: str, dport: int, seconds: float) -> dict:
    arrivals: list[tuple[float, str]] = []
    with socket.socket(_family(bind), socket.SOCK_DGRAM) as s:
        s.bind((bind, port))
        s.settimeout(0.005)
        t0 = time.monotonic()
        # send from 0.5 s on (the other phone is listening by then) and listen 0.5 s longer
        # than the other phone sends: the ends of the call lose nothing of their own
        sent, next_send = 0, t0 + 0.5
        while (now := time.monotonic()) < t0 + seconds + 0.5:
            if now >= next_send and now < t0 + seconds:
                s.sendto(b"\x80\x08" + (sent & 0xFFFF).to_bytes(2, "big") + b"\x00" * 168,
                         (dest, dport))
                sent += 1
                next_send += 0.02
            try:
                _, src = s.recvfrom(2048)
            except TimeoutError:
                continue
            arrivals.append((round(time.monotonic(), 3), f"{src[0]}:{src[1]}"))
    return {"sent": sent, "arrivals": arrivals}


def main(argv: list[str]) -> int:
    try:
        if argv[:1] == ["sink"] and len(argv) == 5:
            out = sink(argv[1], int(argv[2]), int(argv[3]), int(argv[4]))
        elif argv[:1] == ["source"] and len(argv) == 6:
            out = source(argv[1], int(argv[2]), int(argv[3]), int(argv[4]), float(argv[5]))
        elif argv[:1] == ["phone"] and len(argv) == 6:
            out = phone(argv[1], int(argv[2]), argv[3], int(argv[4]), float(argv[5]))
        else:
            print(__doc__.split("\n\n")[1], file=sys.stderr)
            return 2
    except ValueError as exc:
        print(f"chaos_traffic: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
