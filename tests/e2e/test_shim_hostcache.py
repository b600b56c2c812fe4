"""The host cache: one probe per host. With the daemon running, a second program (and a
restarted one) connecting to the same anycast address pays no probe; entries in use are
refreshed before they expire; the library does without the daemon; an unprivileged user can
ask for probes but cannot write, forge or plant answers for other users."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab import AA6, AnycastLab
from tests.c.support import (
    ANYCAST,
    BIN,
    WHOAMI_PORT,
    build,
    log_lines,
    preloaded,
    start_responders,
    start_whoami,
)

pytestmark = pytest.mark.e2e
PORT = str(WHOAMI_PORT)
EVIL_UA = "fd00:3:1::66"


@pytest.fixture
def cache_dir() -> Iterator[Path]:
    """A host cache directory every user can reach (its parent is world-readable)."""
    with tempfile.TemporaryDirectory(prefix="aarp-hc-") as tmp:
        os.chmod(tmp, 0o755)
        yield Path(tmp) / "hc"


def _env(cache: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AARP_", "LD_PRELOAD"))}
    return {**env, "AARP_CONF": "/dev/null", "AARP_ANYCAST": ANYCAST,
            "AARP_HOST_CACHE": str(cache), **extra}


def _daemon(lab: AnycastLab, cache: Path, **extra: str) -> subprocess.Popen:
    proc = lab.client.popen([str(BIN / "aarp-shim"), "--cache-daemon", "--log", "info"],
                            env=_env(cache, **extra))
    deadline = time.monotonic() + 15
    while not (cache / "cache.sock").exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "the daemon did not start"
        time.sleep(0.05)
    return proc


def _cache(lab: AnycastLab, cache: Path) -> dict:
    out = lab.client.run([str(BIN / "aarp-resolve"), "--cache", "--json"], env=_env(cache))
    return json.loads(out.stdout)


def _connect(lab: AnycastLab, cache: Path, n: int = 1, user: str | None = None,
             **aarp: str) -> list[str]:
    stress = build("stress")
    out = lab.client.run(preloaded([str(stress), AA6, PORT, "1", str(n), "s1"],
                                   AARP_LOG="debug", AARP_HOST_CACHE=str(cache), **aarp),
                         check=False, timeout=60, user=user)
    assert out.returncode == 0, out.stdout + out.stderr
    return log_lines(out.stderr)


def test_one_probe_for_every_process(lab: AnycastLab, cache_dir: Path) -> None:
    start_whoami(lab)
    start_responders(lab)
    _daemon(lab, cache_dir)
    ua = lab.server(1).ip6
    first = _connect(lab, cache_dir)
    assert any("probed by the daemon" in ln for ln in first), first
    assert any(f"-> {ua} (host cache)" in ln for ln in first), first
    assert not any("query 1 sent" in ln for ln in first), "the program probed itself"
    # a second program, as another user, after a route move: no probe, same server
    lab.move(2)
    second = _connect(lab, cache_dir, user="nobody")
    assert any(f"-> {ua} (host cache)" in ln for ln in second), second
    assert not any("query" in ln or "probed by the daemon" in ln for ln in second), second
    shown = _cache(lab, cache_dir)
    assert shown["host_cache"]["probes"] == 1 and shown["host_cache"]["daemon_answers"]
    assert [(e["anycast"], e["unicast"], e["status"]) for e in shown["entries"]] == [
        (AA6, ua, "pinned")], shown
    text = lab.client.run([str(BIN / "aarp-resolve"), "--cache"], env=_env(cache_dir)).stdout
    assert "1 live entries" in text and ua in text, text


def test_entries_survive_a_daemon_restart(lab: AnycastLab, cache_dir: Path) -> None:
    start_whoami(lab)
    start_responders(lab)
    daemon = _daemon(lab, cache_dir)
    _connect(lab, cache_dir)
    daemon.terminate()
    daemon.wait(10)
    assert not (cache_dir / "cache.sock").exists()
    # no daemon: the file's answers are still used; a miss makes the library probe itself
    log = _connect(lab, cache_dir)
    assert any("(host cache)" in ln for ln in log), log
    _daemon(lab, cache_dir)
    assert [e["anycast"] for e in _cache(lab, cache_dir)["entries"]] == [AA6]


def test_without_a_daemon_the_library_probes_itself(lab: AnycastLab, cache_dir: Path) -> None:
    start_whoami(lab)
    start_responders(lab)
    log = _connect(lab, cache_dir)  # nothing there at all
    assert any("query 1 sent" in ln for ln in log), log
    assert any(f"-> {lab.server(1).ip6} (probe" in ln for ln in log), log
    out = lab.client.run([str(BIN / "aarp-resolve"), "--cache"], env=_env(cache_dir),
                         check=False)
    assert out.returncode == 1 and "cache-daemon" in out.stderr, out.stderr


def test_entries_in_use_are_refreshed_before_they_expire(lab: AnycastLab,
                                                          cache_dir: Path) -> None:
    start_whoami(lab)
    start_responders(lab, "--ttl", "3")
    _daemon(lab, cache_dir)
    # one program connecting every 0.2 s for 5 s: the entry (3 s) is renewed ahead of time
    stress = build("stress")
    code = (f"import subprocess, time\nfor _ in range(25):\n"
            f"    subprocess.run({[str(stress), AA6, PORT, '1', '1', 's1']!r}, check=True)\n"
            f"    time.sleep(0.2)\n")
    out = lab.client.run(preloaded([sys.executable, "-c", code], AARP_LOG="debug",
                                   AARP_HOST_CACHE=str(cache_dir)), check=False, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    log = log_lines(out.stderr)
    assert not any("query 1 sent" in ln for ln in log), "a program probed itself"
    head = _cache(lab, cache_dir)["host_cache"]
    assert head["refreshes"] >= 1 and head["probes"] >= 2, head


def test_other_users_cannot_poison_the_cache(lab: AnycastLab, cache_dir: Path) -> None:
    start_whoami(lab)
    start_responders(lab)
    _daemon(lab, cache_dir)
    _connect(lab, cache_dir)
    ua = lab.server(1).ip6
    # 1. nobody cannot write the file, nor replace it or the socket
    probe = ("import os, sys\nd = sys.argv[1]\nfor p in (d + '/cache', d + '/evil'):\n"
             "    try:\n        os.open(p, os.O_RDWR | os.O_CREAT)\n        print('wrote', p)\n"
             "    except PermissionError:\n        print('refused')\n"
             "try:\n    os.rename(d + '/cache', d + '/old')\n    print('renamed')\n"
             "except PermissionError:\n    print('refused')\n")
    out = lab.client.run([sys.executable, "-c", probe, str(cache_dir)], user="nobody")
    assert out.stdout.split() == ["refused"] * 3, out.stdout
    # 2. a copy of the cache with a forged answer, planted by nobody in a directory of its own:
    #    root's programs do not trust it and probe for themselves
    planted = cache_dir.parent / "planted"
    planted.mkdir()
    data = (cache_dir / "cache").read_bytes()
    good = socket.inet_pton(socket.AF_INET6, ua)
    assert data.count(good) == 1
    (planted / "cache").write_bytes(data.replace(good, socket.inet_pton(socket.AF_INET6,
                                                                        EVIL_UA)))
    shutil.chown(planted, "nobody")
    shutil.chown(planted / "cache", "nobody")
    log = _connect(lab, planted)
    assert any("not owned by root or this user" in ln for ln in log), log
    assert any(f"-> {ua} (probe" in ln for ln in log), log
    assert not any(EVIL_UA in ln for ln in log), log
    # 3. requests are only requests: garbage, addresses outside the daemon's prefixes
    ask = ("import socket, sys\nfor req in (b'junk', b'AARQ\\x01\\x01\\x04\\x00' + "
           "bytes([192, 0, 2, 1]) + bytes(12)):\n"
           "    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)\n"
           "    s.connect(sys.argv[1]); s.send(req); print(s.recv(8)[4]); s.close()\n")
    out = lab.client.run([sys.executable, "-c", ask, str(cache_dir / "cache.sock")],
                         user="nobody")
    assert out.stdout.split() == ["2", "1"], out.stdout  # refused, not mine
    shown = _cache(lab, cache_dir)
    assert [e["anycast"] for e in shown["entries"]] == [AA6], shown
    assert _connect(lab, cache_dir) and shown["host_cache"]["daemon_answers"]
