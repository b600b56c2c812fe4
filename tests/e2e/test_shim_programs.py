"""Real programs under libaarp.so: 64 threads at once, fork storms, fork and exec, a
non-blocking connect like curl's, descriptors closed and reused, and the stress program under
AddressSanitizer/UndefinedBehaviorSanitizer (leaks included)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from lab import AA4, AA6, AK6, AnycastLab
from tests.c.support import (
    ANYCAST,
    BIN,
    WHOAMI_PORT,
    build,
    build_library,
    have,
    log_lines,
    preloaded,
    start_responders,
    start_whoami,
)
from tests.conftest import require

pytestmark = pytest.mark.e2e
PORT = str(WHOAMI_PORT)


@pytest.fixture
def served(lab: AnycastLab) -> AnycastLab:
    """The default lab with the name server and aarp-responder on both servers."""
    start_whoami(lab)
    start_responders(lab)
    return lab


def test_64_threads_stay_pinned_while_the_route_moves(served: AnycastLab) -> None:
    stress = build("stress")
    proc = served.client.popen(preloaded([str(stress), AA6, PORT, "64", "120", "s1"],
                                         AARP_LOG="info"))
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == b"first"
    served.move(2)  # cached answer: every later connection still goes to s1
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, (out + err).decode()
    assert b"connections=7680 wrong=0 errors=0" in out
    assert err == b"", "info logging should be silent when everything works"


def test_fork_storm_while_threads_connect(served: AnycastLab) -> None:
    """Forks while 8 threads hold and release the library's locks: no child inherits a lock
    held (each child connects once under a 10 s alarm)."""
    stress = build("stress")
    out = served.client.run(preloaded([str(stress), "--forks", AA4, PORT, "8", "150", "s1"]),
                            check=False, timeout=120)
    assert out.returncode == 0 and "child_failures=0" in out.stdout, out.stdout + out.stderr


FORK_EXEC = r"""
import os, socket, sys
aa, port, stress = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def who():
    with socket.create_connection((aa, port), timeout=5) as s:
        return s.recv(64).decode(), s.getpeername()[0]
print("parent", os.getpid(), *who(), flush=True)
pid = os.fork()
if pid == 0:
    print("child", os.getpid(), *who(), flush=True)
    os.execv(stress, [stress, aa, str(port), "1", "1", "s1"])
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def test_fork_inherits_the_cache_and_exec_keeps_the_library(served: AnycastLab) -> None:
    stress = build("stress")
    out = served.client.run(preloaded([sys.executable, "-c", FORK_EXEC, AA6, PORT,
                                       str(stress)], AARP_LOG="debug"), check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    parent, child = lines[0].split(), lines[1].split()
    assert parent[2:] == ["s1", AA6] and child[2:] == ["s1", AA6], out.stdout
    log = log_lines(out.stderr)
    ua = served.server(1).ip6
    mine = [ln for ln in log if ln.startswith(f"libaarp[{child[1]}]")]
    # the forked child answers from the parent's cache; the exec'd program probes afresh
    assert any(f"-> {ua} (cache hit)" in ln for ln in mine), out.stderr
    assert any(f"-> {ua} (probe" in ln for ln in mine), out.stderr
    assert sum("configuration" in ln for ln in mine) == 1, "exec'd program reads its config"


@pytest.mark.parametrize("aa", [AA6, AK6, AA4])
def test_nonblocking_connect_and_errno(served: AnycastLab, aa: str) -> None:
    prog = build("nbconnect")
    out = served.client.run(preloaded([str(prog), aa, PORT, "s1", "7999"]), check=False)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stdout + out.stderr


@pytest.mark.parametrize("family", [6, 4])
def test_descriptors_closed_duplicated_and_reused(served: AnycastLab, family: int) -> None:
    prog = build("fdlife")
    aa, ua = (AA6, served.server(1).ip6) if family == 6 else (AA4, served.server(1).ip4)
    out = served.client.run(preloaded([str(prog), aa, PORT, "s1", ua]), check=False)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stdout + out.stderr


def test_other_destinations_pass_untouched(served: AnycastLab) -> None:
    stress = build("stress")
    ua2 = served.server(2).ip6
    out = served.client.run(preloaded([str(stress), ua2, PORT, "4", "5", "s2"],
                                      AARP_LOG="debug"), check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    log = log_lines(out.stderr)
    assert log and all("outside the anycast prefixes" in ln or "configuration" in ln
                       for ln in log), out.stderr
    # AF_UNIX, and a program with an empty anycast list: nothing to say, nothing changed
    out = served.client.run(preloaded(
        [sys.executable, "-c", "import socket; a, b = socket.socketpair(); a.send(b'x');"
         "print(b.recv(1).decode())"], AARP_LOG="debug", AARP_ANYCAST=None), check=False)
    assert out.stdout.strip() == "x" and log_lines(out.stderr)[1:] == [], out.stderr


def test_stress_is_clean_under_address_sanitizer(served: AnycastLab) -> None:
    require(have("clang"), "clang (for AddressSanitizer)")
    flags = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all",
             "-fno-omit-frame-pointer"]
    try:
        lib = build_library("clang", flags, "libaarp-asan")
        stress = build("stress", "clang", [*flags, "-g"], out_name="stress-asan")
    except subprocess.CalledProcessError as exc:
        require(False, f"a working clang sanitizer runtime ({exc.stderr.strip()[:200]})")
    env = {"ASAN_OPTIONS": "detect_leaks=1:halt_on_error=1",
           "UBSAN_OPTIONS": "print_stacktrace=1"}
    with tempfile.TemporaryDirectory(prefix="aarp-hc-") as tmp:
        cache = Path(tmp) / "hc"
        daemon = served.client.popen([str(BIN / "aarp-shim"), "--cache-daemon", "--cache-dir",
                                      str(cache)], env=dict(os.environ, AARP_CONF="/dev/null",
                                                            AARP_ANYCAST=ANYCAST))
        for _ in range(200):
            if (cache / "cache.sock").exists():
                break
            time.sleep(0.05)
        runs = [  # (arguments, extra settings): blocking, forks, non-blocking with background
            ([AA6, PORT, "64", "30", "s1"], {}),  # probes, the host cache and its daemon
            (["--forks", AA4, PORT, "8", "40", "s1"], {}),
            ([AA6, PORT, "16", "30", "s1"], {"STRESS_NONBLOCK": "1",
                                            "AARP_NONBLOCK_WAIT_MS": "0"}),
            ([AA4, PORT, "16", "30", "s1"], {"AARP_HOST_CACHE": str(cache)}),
            ([AA6, PORT, "16", "30", "s1"], {"STRESS_NONBLOCK": "1",
                                            "AARP_HOST_CACHE": str(cache)}),
        ]
        for args, extra in runs:
            settings = {"AARP_HOST_CACHE": "off", **extra}
            out = served.client.run(["env", *(f"{k}={v}" for k, v in env.items()),
                                     *preloaded([str(stress), *args], library=lib,
                                                AARP_LOG="error", **settings)],
                                    check=False, timeout=300)
            assert out.returncode == 0, (extra, out.stdout + out.stderr[-4000:])
            assert "Sanitizer" not in out.stderr, out.stderr[-4000:]
        assert daemon.poll() is None
