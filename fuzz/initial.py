"""The initial inputs of every harness, made from the project's vectors (tests/vectors/**: the SATP
datagrams captured between the real anytun and uanytun, the AARP message and configuration
vectors) and from a few well-formed examples of each input kind. `python -m fuzz init`
rewrites fuzz/corpus/<harness>/init-*; inputs merged in from fuzzing runs stay."""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Iterator
from pathlib import Path

from fuzz import cases
from fuzz.harnesses import CORPUS, ROOT

VECTORS = ROOT / "tests" / "vectors"


def _json(path: str) -> object:
    return json.loads((VECTORS / path).read_text())


def _captured() -> list[dict]:
    return _json("satp/captured.json")  # type: ignore[return-value]


def _inner_packets() -> list[bytes]:
    """The inner IP packets and Ethernet frames of the captures, each once."""
    seen: dict[bytes, None] = {}
    for e in _captured():
        seen.setdefault(bytes.fromhex(e["inner_hex"]), None)
    return list(seen)


# -- checksummed packets for the offload harnesses --------------------------------------------

def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def ip_packet(v6: bool, proto: int, payload: bytes, *, seq: int = 1000, ident: int = 7,
              flags: int = 0x10, sport: int = 5000, dport: int = 80, df: bool = True) -> bytes:
    """A TCP (proto 6) or UDP (17) packet over IPv4/IPv6 with valid checksums."""
    src = bytes.fromhex("fd000000000000000000000000000001") if v6 else bytes([10, 9, 0, 1])
    dst = bytes.fromhex("fd000000000000000000000000000002") if v6 else bytes([10, 9, 0, 2])
    if proto == 6:
        l4 = struct.pack("!HHIIBBHHH", sport, dport, seq, 1, 5 << 4, flags, 65535, 0, 0)
    else:
        l4 = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0)
    seg = l4 + payload
    pseudo = src + dst + (struct.pack("!I3xB", len(seg), proto) if v6 else
                          struct.pack("!xBH", proto, len(seg)))
    c = _csum(pseudo + seg) or (0xFFFF if proto == 17 else 0)
    at = 16 if proto == 6 else 6
    seg = seg[:at] + struct.pack("!H", c) + seg[at + 2:]
    if v6:
        return struct.pack("!IHBB", 6 << 28, len(seg), proto, 64) + src + dst + seg
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(seg), ident, 0x4000 if df else 0, 64,
                      proto, 0, src, dst)
    return hdr[:10] + struct.pack("!H", _csum(hdr)) + hdr[12:] + seg


def _vnet(gso_type: int, gso_size: int, hdr_len: int, flags: int = 0) -> bytes:
    return struct.pack("<BBHHHH", flags, gso_type, hdr_len, gso_size, 0, 0)


def _flow(v6: bool, proto: int, sizes: list[int], psh_last: bool = False) -> list[bytes]:
    out, seq = [], 1000
    for i, n in enumerate(sizes):
        last = i == len(sizes) - 1
        out.append(ip_packet(v6, proto, bytes([i]) * n, seq=seq, ident=7 + i,
                             flags=0x18 if psh_last and last else 0x10))
        seq += n
    return out


def _batch(opts: int, packets: list[bytes]) -> bytes:
    return bytes([opts]) + b"".join(struct.pack("!H", len(p)) + p for p in packets)


# -- per harness ------------------------------------------------------------------------------

def _config_texts() -> Iterator[tuple[str, dict]]:
    for c in _json("aarp/config.json")["cases"]:  # type: ignore[index]
        yield c["text"], c["env"]


_ENV_NAMES = cases.AARP_ENV_NAMES


def _with_env(text: str, env: dict) -> bytes:
    out = text.encode()
    for k, v in env.items():
        idx = _ENV_NAMES.index(k) if k in _ENV_NAMES else len(_ENV_NAMES) - 1
        out += b"\0" + bytes([idx]) + v.encode()
    return out


def shim_config() -> Iterator[bytes]:
    for text, _ in _config_texts():
        yield text.encode()


def shim_env() -> Iterator[bytes]:
    for text, env in _config_texts():
        yield _with_env(text, env)
    yield _with_env("anycast = fd00:ab::/64\ngrace_ms = 10",
                    {"AARP_ANYCAST": "10.255.0.1, fd00:aa::/64", "AARP_LOG": "debug",
                     "AARP_TIMEOUT_MS": "50", "AARP_DISABLE": "no"})


def shim_addr() -> Iterator[bytes]:
    for text in ("10.0.0.1", "fd00::1", "::ffff:10.1.2.3", "fd00:aa::/64", "10.0.0.0/8",
                 "1.2.3.4/33", "fe80::1%eth0", "::", "0.0.0.0/0", "fd00:aa::1/128",
                 "10.255.0.1/032", "1::2:3:4:5:6:7", "255.255.255.255"):
        yield b"\0" + text.encode()
    v4 = struct.pack("=H", 2) + struct.pack("!H4s8x", 4444, bytes([10, 0, 0, 1]))
    v6 = struct.pack("=H", 10) + struct.pack("!HI16sI", 443, 0,
                                             bytes.fromhex("fd00" + "00" * 13 + "09"), 3)
    mapped = struct.pack("=H", 10) + struct.pack("!HI16sI", 80, 0,
                                                 bytes(10) + b"\xff\xff" + bytes([10, 2, 3, 4]),
                                                 0)
    for sa in (v4, v6, mapped, v6[:24], v4[:8]):
        yield b"\1" + sa


def shim_message() -> Iterator[bytes]:
    vec = _json("aarp/messages.json")
    for v in [*vec["valid"], *vec["invalid"]]:  # type: ignore[index]
        yield bytes.fromhex(v["hex"])


def satp_open() -> Iterator[bytes]:
    from relay.satp import MasterKey, Role, SatpContext, Suite
    for e in _captured():
        suite = Suite.parse(e["cipher"], e["auth_algo"], e["kd_prf"], e["auth_tag_length"])
        receiver = Role.parse(e["role_of_sender"]).peer.name.lower()
        try:
            idx = cases.satp_index(suite.cipher_key_len, suite.kd_key_len, suite.auth,
                                   suite.tag_len, bytes.fromhex(e["master_key"]), receiver)
        except KeyError:
            continue
        yield bytes([idx]) + bytes.fromhex(e["outer_hex"])
    inner = _inner_packets()
    for idx in range(2 * len(cases.SATP_SUITES)):
        (c, k, a, t, key, salt), receiver = cases.satp_config(idx)
        ctx = SatpContext(Suite(c, k, a, t), MasterKey(key, salt) if k else None,
                          Role.parse(receiver).peer)
        pkt = inner[idx % len(inner)]
        ptype = 0x86DD if pkt[0] >> 4 == 6 else 0x0800
        yield bytes([idx]) + ctx.seal(idx * 1000, idx, idx % 3, ptype, pkt)


def _replay_input(size_idx: int, ops: list[tuple[int, int, int]], restart_after: int = 4,
                  quiet: int = 16, max_seq: int = 1 << 16, gap: int = 64) -> bytes:
    out = bytearray([size_idx, restart_after, quiet]) + struct.pack("!IH", max_seq, gap)
    for op, sid, seq in ops:
        out.append(op)
        if op & 0x40:
            out += struct.pack("!H", sid)
        out += struct.pack("!I", seq % 2**32)
    return bytes(out)


def replay() -> Iterator[bytes]:
    sizes = cases.REPLAY_SIZES
    w64, w1024, wmax = sizes.index(64), sizes.index(1024), sizes.index(1 << 20)
    yield _replay_input(w64, [(0, 0, s) for s in range(20)])
    yield _replay_input(w64, [(0, 0, s) for s in (100, 100, 105, 101, 101, 98, 97, 106)])
    jump = 2**31 - 1
    yield _replay_input(w1024, [(0, 0, i * jump) for i in range(8)])
    yield _replay_input(wmax, [(0, 0, i * jump) for i in range(8)] + [(0, 0, 5)])
    yield _replay_input(w1024, [(0, 0, 2**32 - 3 + i) for i in range(6)])
    yield _replay_input(w64, [(0, 0, 5000 + i) for i in range(10)] +
                        [(0x0C, 0, i) for i in range(10)])  # a restarted peer
    yield _replay_input(w64, [(0x40, sid * 977, sid) for sid in range(40)])  # sender churn
    yield _replay_input(w64, [(0, 1, 100), (0x80, 1, 200), (0, 1, 150), (0, 1, 201)])
    yield _replay_input(0, [(0, 0, s) for s in (10, 10, 3, 11)])


def gso() -> Iterator[bytes]:
    for p in _inner_packets():
        yield _vnet(0, 0, 0) + struct.pack("!H", 1500) + p
    for v6 in (False, True):
        iphl = 40 if v6 else 20
        tcp = ip_packet(v6, 6, bytes(range(256)) * 16)
        yield _vnet(4 if v6 else 1, 1400, iphl + 20) + struct.pack("!H", 1500) + tcp
        yield _vnet(4 if v6 else 1, 1400, iphl + 20) + struct.pack("!H", 1000) + tcp
        udp = ip_packet(v6, 17, bytes(3000))
        yield _vnet(5, 1000, iphl + 8) + struct.pack("!H", 1500) + udp
        yield _vnet(0, 0, 0, flags=1) + struct.pack("!H", 1500) + udp


def gro() -> Iterator[bytes]:
    for v6 in (False, True):
        yield _batch(1, _flow(v6, 6, [1000] * 5 + [300], psh_last=True))
        yield _batch(3, _flow(v6, 17, [800] * 4 + [100]))
        yield _batch(3, _flow(v6, 6, [500, 500]) + _flow(v6, 17, [200, 200]) +
                     _inner_packets()[:3])
    yield _batch(1, _inner_packets())


def stream_framing() -> Iterator[bytes]:
    # opts (anycast | unsynced << 1), max_body - 16 (u16), keep-alive ms (u16), then chunks:
    # length - 1, the bytes, the time that passes (10 ms units)
    def chunks(data: bytes, size: int) -> bytes:
        return b"".join(bytes([min(size, len(data) - i) - 1]) + data[i:i + size] + b"\x05"
                        for i in range(0, len(data), size))
    dgram = bytes(range(40))
    length = b"".join(struct.pack("!H", len(dgram)) + dgram for _ in range(4))
    anycast = b"".join(b"\xa7S" + struct.pack("!H", len(dgram)) + dgram for _ in range(4))
    keep = b"\xa7K\x00\x04" + struct.pack("!I", 2000)
    yield bytes([0]) + struct.pack("!HH", 1584, 0) + chunks(length, 7)
    yield bytes([1]) + struct.pack("!HH", 1584, 1000) + chunks(keep + anycast, 13)
    yield bytes([3]) + struct.pack("!HH", 1584, 1000) + chunks(dgram[5:] + anycast, 50)
    yield bytes([3]) + struct.pack("!HH", 100, 200) + chunks(bytes(range(256)) * 4 + anycast,
                                                             255)


def rtp() -> Iterator[bytes]:
    # opts (ask | sticky << 2 | wired << 3), src, ask1, ask2 (0: none, 1-3: a sender), packets
    for opts, addrs in ((8 | 1, (0, 1, 3)), (8 | 4 | 2, (0, 0, 0)), (8, (2, 0, 0)),
                        (8 | 1, (0, 4, 4)), (1, (1, 2, 3))):
        pkts = b"".join(bytes([(i % 3) | (3 << 2)]) + b"rtp" for i in range(9))
        yield bytes([opts, *addrs]) + pkts


def py_rtpproxy() -> Iterator[bytes]:
    flows = [
        b"c1 V\nVF 20050322\nUc8,101 call-1 10.1.1.2 6000 ftag;1\n"
        b"Lc8 call-1 10.1.1.3 7000 ftag;1 ttag;1\nQ call-1 ftag ttag\nD call-1 ftag\n",
        b"c2 I\nUIE call-2 10.1.1.2 6000 a;1\nUEI6 call-3 fd00:1::2 6000 b;1\nIB\nX\n",
        b"c3 U call-4 0.0.0.0 0 f;1\nL call-4 10.1.1.3 7000 f;1 t;1\nU call-4 10.1.1.2 6002 f;1\n",
        b"c4 Qv call-5 f t\nDW call-5 f t\nS call-5 f\nR call-5 f\nP call-5 f\n",
    ]
    for i, flow in enumerate(flows):
        yield bytes([i]) + flow


def py_anytun_sync() -> Iterator[bytes]:
    from relay.satp.archive import ConnectionMessage, RouteMessage, encode
    conn = ConnectionMessage(1, 0, 128, cases.SECRET_SALT, cases.SECRET_KEY, 1024, 77,
                             "10.1.1.2", 4444)
    yield b"\x40" + encode(conn)
    yield b"\x07" + encode(ConnectionMessage(0, 1, 0, b"", b"", 0, 0)) + b"\n"
    yield b"\x40" + encode(RouteMessage.from_prefix("10.9.0.0/16", 1)) + \
        encode(RouteMessage.from_prefix("fd00:9::/32", 2))
    yield b"\x40" + encode(RouteMessage(48, 2, "02:00:00:00:00:01", 3))


def py_records() -> Iterator[bytes]:
    from relay.cluster.records import Version, make, progress_data
    v = Version(1_700_000_000_000, "node-a")
    w = Version(1_700_000_000_001, "node-b")
    recs = [
        make("connection", "1", v, {"mux": 1, "role": "left", "kd_bits": 128, "window": 1024}),
        make("endpoint", "1", v, {"transport": "udp", "host": "10.1.1.2", "port": 4444}),
        make("progress", "1", v, progress_data("e1", 100, {0: 50, 7: 2**32 - 1})),
        make("progress", "1", w, progress_data("e1", 5, {0: 60})),
        make("route", "10.9.0.0/16", v, {"prefix": "10.9.0.0/16", "mux": 1}),
        make("route", "10.9.0.0/16", w, None),
        make("node", "node-a", v, {"sid": 1, "address": "10.0.0.1", "ports": [4444]}),
    ]
    yield json.dumps([r.to_json() for r in recs]).encode()
    for r in recs:
        yield json.dumps(r.to_json()).encode()


def py_node_config() -> Iterator[bytes]:
    doc = (ROOT / "docs" / "server.md").read_text()
    for block in doc.split("```toml")[1:]:
        yield block.split("```", 1)[0].encode()
    yield (b'[node]\nport = 4444\nsender_id = 1\n[defaults]\nwindow = 64\n'
           b'[[connection]]\nmux = 1\npassphrase = "secret"\nroutes = ["10.9.0.0/16"]\n'
           b'remote = "10.1.1.2:4444"\n'
           b'[[connection]]\nmux = 2\nkey = "00112233445566778899aabbccddeeff"\n'
           b'salt = "0102030405060708090a0b0c0d0e"\ncipher = "null"\nauth = "null"\n')


def py_dataplane() -> Iterator[bytes]:
    from relay.satp import Role, SatpContext, Suite
    null = SatpContext(Suite(0, 0, False, 0), None, Role.RIGHT)
    inner = _inner_packets()
    ip = [p for p in inner if p[0] >> 4 in (4, 6)]
    frames = [p for p in inner if p[0] >> 4 not in (4, 6)]

    def rec(kind: int, data: bytes) -> bytes:
        return bytes([kind]) + struct.pack("!H", len(data)) + data

    def sealed(seq: int, mux: int, pkt: bytes, ptype: int | None = None) -> bytes:
        if ptype is None:
            ptype = 0x86DD if pkt[0] >> 4 == 6 else 0x0800
        return null.seal(seq, 0, mux, ptype, pkt)

    big = ip_packet(False, 17, bytes(1550), df=False)
    for config in (0x00, 0x02 | 0x04, 0x02, 0x01, 0x01 | 0x02 | 0x04, 0x40 | 0x06, 0x1E):
        recs = [rec(1, sealed(i, i % 2, p)) for i, p in enumerate(ip[:6])]
        recs += [rec(0, p) for p in ip[:4]] + [rec(1 | 0x08, sealed(2**31 + 5, 0, ip[0]))]
        recs += [rec(1, sealed(3, 0, big)), rec(0, big)]
        if config & 1:
            recs += [rec(1, sealed(10 + i, 0, f, 0x6558)) for i, f in enumerate(frames[:4])]
            recs += [rec(0, f) for f in frames[:4]]
        yield bytes([config]) + b"".join(recs)


GENERATORS = {
    "c_shim_config": shim_config, "c_shim_env": shim_env, "c_shim_addr": shim_addr,
    "c_shim_message": shim_message, "c_satp_open": satp_open, "c_replay": replay,
    "c_gso": gso, "c_gro": gro, "c_rtp": rtp, "c_stream_framing": stream_framing,
    "py_satp_open": satp_open, "py_replay": replay, "py_aarp_message": shim_message,
    "py_aarp_config": shim_env, "py_rtpproxy": py_rtpproxy, "py_anytun_sync": py_anytun_sync,
    "py_records": py_records, "py_node_config": py_node_config, "py_dataplane": py_dataplane,
}


def write(name: str) -> int:
    """Replace fuzz/corpus/<name>/init-* with freshly generated inputs; returns how many."""
    d: Path = CORPUS / name
    d.mkdir(parents=True, exist_ok=True)
    for old in d.glob("init-*"):
        old.unlink()
    n = 0
    for data in GENERATORS[name]():
        (d / f"init-{hashlib.sha1(data).hexdigest()[:16]}").write_bytes(data)
        n += 1
    return n
