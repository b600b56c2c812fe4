"""libaarp.so in hostile and broken surroundings: forged answers, broken configurations, no
ICMP permission, ping sockets, responders that are absent or silent, signals. Whatever happens
the program keeps working (fail open) and the library says why in one line when asked."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from lab import AA4, AA6, AK6, AnycastLab
from tests.c.support import (
    WHOAMI_PORT,
    build,
    log_lines,
    preloaded,
    start_responders,
    start_whoami,
)

pytestmark = pytest.mark.e2e
PORT = str(WHOAMI_PORT)
KEY = "5ec7e75ec7e75ec7e75ec7e75ec7e75e"
EVIL_UA = "fd00:3:1::66"  # nobody lives there: a connect pinned to it would fail

FORGER = r"""
import os, socket, sys
from aarp import message as m
aa, honest_ua, evil, key, mode = sys.argv[1:6]
key = bytes.fromhex(key)
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IPV6, 78, 1)  # IPV6_FREEBIND
s.bind((aa, 4445))
print("ready", flush=True)
while True:
    data, src = s.recvfrom(2048)
    n = m.decode_query(data).nonce
    def ans(**kw):
        kw.setdefault("unicast6", evil)
        return m.encode_answer(kw.pop("nonce", n), kw.pop("anycast", aa), 60, **kw)
    signed = ans(key=key, key_id=3)
    tampered = bytearray(signed); tampered[30] ^= 1
    forgeries = [
        ans(nonce=os.urandom(16)),                      # not our nonce
        ans(anycast="fd00:aa::2"),                      # for another anycast address
        signed[:-1],                                    # truncated
        data,                                           # our own query sent back
        ans(unicast6="ff02::1", key=key, key_id=3),     # signed, but multicast
        ans(unicast6=None, unicast4="10.2.1.2", key=key, key_id=3),  # wrong family
        ans(unicast6=aa, key=key, key_id=3),            # AA itself
    ]
    if mode != "any":  # policy any believes these: it needs no proof beyond the nonce
        forgeries += [
            ans(key=os.urandom(32), key_id=3),          # signed with another key
            ans(key=key, key_id=4),                     # another key id
            bytes(tampered),                            # changed after signing
            ans(),                                      # unsigned
        ]
    for forged in forgeries:
        s.sendto(forged, src)
    if mode != "forgeries-only":
        s.sendto(ans(unicast6=honest_ua, key=key if mode == "key" else None, key_id=3), src)
"""


def _forger(lab: AnycastLab, mode: str) -> None:
    node = lab.server(1)
    proc = node.popen([sys.executable, "-c", FORGER, AA6, node.ip6, EVIL_UA, KEY, mode],
                      env=dict(os.environ, PYTHONPATH=str(Path(__file__).parents[2])))
    assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"


@pytest.mark.parametrize("mode,config", [
    ("key", f"method = udp\nkey = {KEY}\nkey_id = 3\n"),
    ("prefix", "method = udp\npolicy = prefix\nallow = fd00:aa::/64 fd00:2::/32\n"),
    ("any", "method = udp\n"),
])
def test_forged_answers_are_ignored(lab: AnycastLab, tmp_path: Path, mode: str,
                                    config: str) -> None:
    start_whoami(lab)
    _forger(lab, mode)
    conf = tmp_path / "aarp.conf"
    conf.write_text(config)
    stress = build("stress")
    out = lab.client.run(preloaded([str(stress), AA6, PORT, "1", "1", "s1"], AARP_LOG="debug",
                                   AARP_CONF=str(conf)), check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    log = log_lines(out.stderr)
    assert any(f"{AA6} -> {lab.server(1).ip6} (probe: UDP answer)" in ln for ln in log), log
    assert not any(EVIL_UA in ln and "->" in ln for ln in log), log
    assert sum("ignored UDP answer" in ln for ln in log) == (7 if mode == "any" else 11), (
        "\n".join(log))


def test_only_forgeries_means_fail_open(lab: AnycastLab, tmp_path: Path) -> None:
    start_whoami(lab)
    _forger(lab, "forgeries-only")
    conf = tmp_path / "aarp.conf"
    conf.write_text(f"method = udp\nkey = {KEY}\nkey_id = 3\ntimeout_ms = 200\n")
    stress = build("stress")
    out = lab.client.run(preloaded([str(stress), AA6, PORT, "1", "2", "s1"], AARP_LOG="debug",
                                   AARP_CONF=str(conf)), check=False, timeout=30)
    assert out.returncode == 0, out.stdout + out.stderr  # reached AA itself, unchanged
    log = log_lines(out.stderr)
    assert sum("query" in ln and "sent" in ln for ln in log) == 2, log  # 1 + 1 retry
    assert any("no answer (fail open)" in ln for ln in log), log
    assert any("cached failure (fail open)" in ln for ln in log), log


BROKEN = [  # (file content or None for AARP_CONF pointing elsewhere, env, expected message)
    ("timout_ms = 5\n", {}, "aarp.conf:1: unknown key 'timout_ms'"),
    (bytes(range(256)) * 3, {}, "aarp.conf:1:"),
    ("anycast = fd00:aa::/64\n" + "#" * 2000 + "\n", {}, "aarp.conf:2: line longer than"),
    ("grace_ms = 500\n", {"AARP_TIMEOUT_MS": "100"}, "aarp.conf:1: grace_ms (500) is above"),
    ("", {"AARP_PORT": "99999"}, "AARP_PORT: 'port' must be an integer 1-65535"),
    (None, {"AARP_CONF": "/nonexistent/aarp.conf"}, "/nonexistent/aarp.conf: no such file"),
    (None, {"AARP_CONF": "/tmp"}, "/tmp: is a directory"),
    (None, {"AARP_CONF": "/dev/zero"}, "/dev/zero: not a regular file"),
    ("", {"AARP_ANYCAST": "10.0.0.0/8 " * 500 + "10.1.48"}, "AARP_ANYCAST: '10.1.48' is not"),
    ("", {"AARP_TIMEOUT_MS": "60000"}, "AARP_TIMEOUT_MS: 'timeout_ms' must be an integer 1-"),
]


def test_broken_configuration_disables_the_library_with_one_line(
        lab: AnycastLab, tmp_path: Path) -> None:
    start_whoami(lab)
    stress = build("stress")
    for i, (content, env, message) in enumerate(BROKEN):
        conf = tmp_path / f"c{i}" / "aarp.conf"
        conf.parent.mkdir()
        if content is not None:
            conf.write_bytes(content if isinstance(content, bytes) else content.encode())
        settings = {"AARP_CONF": str(conf), **env}
        for log in ("error", None):
            out = lab.client.run(preloaded([str(stress), AA6, PORT, "2", "2", "s1"],
                                           AARP_LOG=log, **settings), check=False)
            assert out.returncode == 0, (message, out.stdout + out.stderr)
            if log is None:
                assert out.stderr == "", (message, out.stderr)
                continue
            lines = out.stderr.splitlines()
            assert len(lines) == 1 and message in lines[0] and "disabled" in lines[0], (
                message, out.stderr)
    # unreadable for the program's user
    conf = tmp_path / "secret.conf"
    conf.write_text("anycast = fd00:aa::/64\n")
    conf.chmod(0o600)
    os.chmod(tmp_path, 0o755)
    out = lab.client.run(preloaded([str(stress), AA6, PORT, "1", "1", "s1"], AARP_LOG="error",
                                   AARP_CONF=str(conf)), check=False, user="nobody")
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stderr.count("\n") == 1 and "cannot read: Permission denied" in out.stderr


def test_fifo_and_bad_log_level_are_said_at_once(lab: AnycastLab, tmp_path: Path) -> None:
    """AARP_CONF naming a FIFO nobody writes: the first connect does not wait for a writer;
    AARP_LOG=loud is itself the mistake, and is reported (logging was clearly wanted)."""
    start_whoami(lab)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    stress = build("stress")
    out = lab.client.run(preloaded([str(stress), AA6, PORT, "1", "1", "s1"], AARP_LOG="error",
                                   AARP_CONF=str(fifo)), check=False, timeout=20)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"{fifo}: not a regular file (libaarp disabled" in out.stderr, out.stderr
    out = lab.client.run(preloaded([str(stress), AA6, PORT, "1", "1", "s1"], AARP_LOG="loud"),
                         check=False, timeout=20)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and "AARP_LOG: 'log' must be one of off, error, info, debug, not " \
        "'loud' (libaarp disabled" in lines[0], out.stderr


def test_disabled_by_the_environment(lab: AnycastLab) -> None:
    start_whoami(lab)
    start_responders(lab)
    stress = build("stress")
    out = lab.client.run(preloaded([str(stress), AA6, PORT, "2", "2", "s1"], AARP_LOG="debug",
                                   AARP_DISABLE="yes"), check=False)
    assert out.returncode == 0
    assert log_lines(out.stderr) == [ln for ln in log_lines(out.stderr)
                                     if "disabled by configuration" in ln], out.stderr


def test_without_icmp_permission_udp_still_resolves(lab: AnycastLab) -> None:
    start_whoami(lab)
    start_responders(lab)
    prog = build("udpcalls")
    for aa, ua in ((AA6, lab.server(1).ip6), (AA4, lab.server(1).ip4)):
        out = lab.client.run(preloaded([str(prog), aa, PORT, "s1"], AARP_LOG="debug"),
                             check=False, user="nobody")
        assert out.returncode == 0, out.stdout + out.stderr
        log = log_lines(out.stderr)
        assert any("no ICMP socket" in ln and "UDP only" in ln for ln in log), log
        assert any(f"-> {ua} (probe: UDP answer)" in ln for ln in log), log


def test_ping_sockets_where_the_kernel_admits_us(lab: AnycastLab) -> None:
    """net.ipv4.ping_group_range admits everybody: unprivileged ICMP through ping sockets,
    for kernel anycast (the reply's source is the answer) and for in-band ICMP answers."""
    start_whoami(lab)
    start_responders(lab)
    lab.client.host.sysctl("net.ipv4.ping_group_range", "0 2147483647")
    stress = build("stress")
    for aa, how, ua in ((AK6, "ICMP source", lab.server(1).ip6),
                        (AA4, "ICMP answer", lab.server(1).ip4)):
        out = lab.client.run(preloaded([str(stress), aa, PORT, "1", "1", "s1"],
                                       AARP_LOG="debug", AARP_METHOD="icmp"),
                             check=False, user="nobody")
        assert out.returncode == 0, out.stdout + out.stderr
        log = log_lines(out.stderr)
        assert any("ICMP over a ping socket" in ln for ln in log), log
        assert any(f"-> {ua} (probe: {how})" in ln for ln in log), log


def test_responder_absent_means_unchanged_and_remembered(lab: AnycastLab) -> None:
    start_whoami(lab)
    stress = build("stress")
    out = lab.client.run(preloaded([str(stress), AA6, PORT, "1", "2", "s1"], AARP_LOG="debug"),
                         check=False, timeout=30)
    assert out.returncode == 0, out.stdout + out.stderr
    log = log_lines(out.stderr)
    assert any(f"connect fd 3: {AA6}: does not resolve: unchanged" in ln for ln in log), log
    assert any("cached: does not resolve" in ln for ln in log), log


SILENCE = """table inet aarptest {
  chain input { type filter hook input priority 0;
    icmpv6 type echo-request drop
    icmp type echo-request drop
    udp dport 4445 drop
  }
}"""

SIGNALLED = r"""
import signal, socket, sys
signal.signal(signal.SIGALRM, lambda *a: None)
signal.setitimer(signal.ITIMER_REAL, 0.2)
with socket.socket(socket.AF_INET6) as s:  # blocking: the probe runs in this thread
    s.connect((sys.argv[1], int(sys.argv[2])))
    print(s.recv(64).decode(), s.getpeername()[0])
"""


FORK_DURING_PROBE = r"""
import os, socket, sys, threading, time
aa, port = sys.argv[1], int(sys.argv[2])
def who():
    with socket.socket(socket.AF_INET6) as s:  # blocking: the probe runs in this thread
        s.connect((aa, port))
        return s.recv(64).decode()
t = threading.Thread(target=who)
t.start()
time.sleep(0.3)  # the thread is probing now
pid = os.fork()
if pid == 0:
    links = []
    for f in os.listdir("/proc/self/fd"):
        try:
            links.append(os.readlink(f"/proc/self/fd/{f}"))
        except OSError:
            pass  # the directory listing's own descriptor
    print("sockets", sum(ln.startswith("socket:") for ln in links), flush=True)
    print("child", who(), flush=True)
    os._exit(0)
_, status = os.waitpid(pid, 0)
t.join()
sys.exit(os.waitstatus_to_exitcode(status))
"""


def test_silent_anycast_fails_open_in_bounded_time(lab: AnycastLab) -> None:
    start_whoami(lab)
    lab.server(1).run(["nft", "-f", "-"], input=SILENCE)
    stress = build("stress")
    # 2 threads x 2 connects: one probe (200 ms + one retry), the others wait for it or hit
    # the cached failure; run()'s timeout is the bound.
    out = lab.client.run(preloaded([str(stress), AA4, PORT, "2", "2", "s1"], AARP_LOG="debug",
                                   AARP_TIMEOUT_MS="200"), check=False, timeout=20)
    assert out.returncode == 0, out.stdout + out.stderr
    log = log_lines(out.stderr)
    assert sum("query 1 sent" in ln for ln in log) == 1, log
    assert any("no answer after" in ln and "fail open" in ln for ln in log), log
    # A signal during the probe: fail open at once, unchanged address, nothing cached.
    out = lab.client.run(preloaded([sys.executable, "-c", SIGNALLED, AA6, PORT],
                                   AARP_LOG="debug", AARP_TIMEOUT_MS="5000"),
                         check=False, timeout=8)
    assert out.returncode == 0 and out.stdout.split() == ["s1", AA6], out.stdout + out.stderr
    assert any("interrupted by a signal" in ln for ln in log_lines(out.stderr)), out.stderr
    # fork() while another thread probes: the child has none of the probe's sockets and does
    # not wait for a probe nobody in it will finish; it probes itself.
    out = lab.client.run(preloaded([sys.executable, "-c", FORK_DURING_PROBE, AA6, PORT],
                                   AARP_LOG="debug", AARP_TIMEOUT_MS="800"),
                         check=False, timeout=20)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.split("\n")[:2] == ["sockets 1", "child s1"], out.stdout + out.stderr
    assert sum("query 1 sent" in ln for ln in log_lines(out.stderr)) == 2, out.stderr
