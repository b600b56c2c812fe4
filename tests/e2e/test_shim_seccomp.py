"""Programs LD_PRELOAD cannot reach, run by aarp-shim under seccomp supervision: a static C
binary and a Go program (both built here) download through an anycast address while the route
moves, and finish from the server they started on, as curl does with the preload; a static
program without aarp-shim breaks. Many threads connecting at once stay pinned and see AA as
their peer. aarp-shim says so before it runs a program it cannot help."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from lab import AA4, AA6, AnycastLab
from lab.services import make_blob, serve_http
from tests.c.support import (
    ANYCAST,
    BIN,
    WHOAMI_PORT,
    build,
    build_go,
    log_lines,
    start_responders,
    start_whoami,
)
from tests.conftest import require, require_program

pytestmark = pytest.mark.e2e
SIZE = 1_500_000
RATE = "4mbit"
SHIM = str(BIN / "aarp-shim")


def _static(name: str) -> Path:
    try:
        return build(name, flags=["-static"], out_name=f"{name}-static")
    except subprocess.CalledProcessError as exc:
        require(False, f"static linking (libc6-dev's libc.a): {exc.stderr[:200]}")
        raise


def _go(name: str) -> Path:
    require_program("go")
    return build_go(name)


def _shim_env(**extra: str) -> dict[str, str]:
    """aarp-shim's environment: the lab's prefixes, and a generous non-blocking wait (Go's
    connects are non-blocking; on a loaded machine the first answer may take more than the
    default 20 ms, and then the first connection would rightly go unpinned)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AARP_", "LD_PRELOAD"))}
    return {**env, "AARP_CONF": "/dev/null", "AARP_ANYCAST": ANYCAST, "AARP_LOG": "debug",
            "AARP_NONBLOCK_WAIT_MS": "1000", "AARP_HOST_CACHE": "off", **extra}


def test_static_and_go_programs_survive_a_route_move(lab_factory, tmp_path: Path) -> None:
    fetch_static, fetch_go = _static("fetch"), _go("fetch")
    lab = lab_factory(servers=2, clients=5)
    for node in lab.servers:
        make_blob(tmp_path / node.name / "big", SIZE)
        serve_http(node, tmp_path / node.name)
    start_responders(lab)
    plan = [  # (label, argv, supervised?)
        ("static C, IPv6", [str(fetch_static), AA6, "80", "/big"], True),
        ("static C, IPv4", [str(fetch_static), AA4, "80", "/big"], True),
        ("Go, IPv6", [str(fetch_go), f"http://[{AA6}]/big"], True),
        ("Go, IPv4", [str(fetch_go), f"http://{AA4}/big"], True),
        ("static C without aarp-shim", [str(fetch_static), AA6, "80", "/big"], False),
    ]
    procs = []
    for i, ((label, argv, supervised), node) in enumerate(zip(plan, lab.clients, strict=True)):
        lab.limit(node, RATE)
        out = tmp_path / f"out{i}"
        cmd = [SHIM, "--", *argv, str(out)] if supervised else [*argv, str(out)]
        procs.append((label, supervised, out,
                      node.popen(cmd, env=_shim_env(), stdout=subprocess.DEVNULL)))
    time.sleep(1.0)
    for label, _, _, proc in procs:
        assert proc.poll() is None, f"{label} ended before the route move; raise SIZE"
    lab.move(2)
    expected = (tmp_path / "s1" / "big").read_bytes()
    for label, supervised, out, proc in procs:
        proc.wait(90)
        stderr = proc.stderr.read().decode(errors="replace")
        intact = proc.returncode == 0 and out.exists() and out.read_bytes() == expected
        if not supervised:
            assert not intact, f"{label} survived the route move without aarp-shim"
            continue
        assert intact, f"{label}: exit {proc.returncode}: {stderr[-2000:]}"
        log = log_lines(stderr)
        assert any("seccomp connect" in ln and "-> " in ln and "(probe)" in ln
                   for ln in log), stderr
        # getpeername() shows the anycast address the program asked for, not UA
        peer = next(ln for ln in stderr.splitlines() if ln.startswith("peer "))
        assert AA6 in peer or AA4 in peer, stderr


def test_threads_under_seccomp_stay_pinned_and_see_aa(lab: AnycastLab) -> None:
    """A static program with 16 threads connecting at once (blocking sockets): every
    connection reaches s1 after the move too, and getpeername() reads AA."""
    stress = _static("stress")
    start_whoami(lab)
    start_responders(lab)
    proc = lab.client.popen([SHIM, "--seccomp", "--", str(stress), AA6, str(WHOAMI_PORT), "16",
                             "40", "s1"], env=_shim_env(AARP_LOG="info"))
    assert proc.stdout is not None and proc.stdout.readline().strip() == b"first"
    lab.move(2)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, (out + err).decode()
    assert b"connections=640 wrong=0 errors=0" in out, out


def test_other_destinations_pass_through_the_supervisor(lab: AnycastLab) -> None:
    """UDP and TCP to a unicast address, send() on a connected socket, a closed port: the
    kernel's own results, unchanged (the supervisor lets them through)."""
    stress = _static("stress")
    start_whoami(lab)
    ua2 = lab.server(2).ip6
    out = lab.client.run([SHIM, "--seccomp", "--", str(stress), ua2, str(WHOAMI_PORT), "4",
                          "5", "s2"], env=_shim_env(), check=False, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert not any("seccomp connect" in ln for ln in log_lines(out.stderr)), out.stderr
    nb = _static("nbconnect")
    start_responders(lab)
    out = lab.client.run([SHIM, "--", str(nb), AA6, str(WHOAMI_PORT), "s1", "7999"],
                         env=_shim_env(), check=False, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stdout + out.stderr


def test_aarp_shim_says_when_it_cannot_help() -> None:
    fetch_static = _static("fetch")
    # --preload on a static binary: said before it runs, and it still runs
    out = subprocess.run([SHIM, "--preload", "--", str(fetch_static)], capture_output=True,
                         text=True, env=_shim_env(), timeout=30)
    lines = out.stderr.splitlines()
    assert "static binary: LD_PRELOAD cannot reach it" in lines[0], out.stderr
    assert "usage: fetch" in out.stderr and out.returncode == 2
    # a set-user-ID program run by another user: neither way can reach it
    require(os.geteuid() == 0, "root (to make a set-user-ID copy and drop to nobody)")
    with tempfile.TemporaryDirectory(prefix="aarp-suid-") as tmp:  # nobody must reach it
        os.chmod(tmp, 0o755)
        suid = Path(tmp) / "suid-true"
        shutil.copy("/bin/true", suid)
        os.chmod(suid, 0o4755)
        out = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                              SHIM, "--", str(suid)], capture_output=True, text=True,
                             env=_shim_env(), timeout=30)
    assert out.returncode == 0 and "set-user-ID" in out.stderr, out.stderr
    assert out.stderr.count("\n") == 1, out.stderr
    # nothing to run, and a program that does not exist
    out = subprocess.run([SHIM, "--seccomp", "--", "/nonexistent/prog"], capture_output=True,
                         text=True, env=_shim_env(), timeout=30)
    assert out.returncode == 127 and "not found" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
    out = subprocess.run([sys.executable, "-m", "aarp.cli.shim", "--seccomp"],
                         capture_output=True, text=True, env=_shim_env(), timeout=30)
    assert out.returncode == 2 and "nothing to run" in out.stderr
