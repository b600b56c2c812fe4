"""The Debian package, built once with `make deb` from a copy of this tree and installed with
`apt install ./...deb` into a fresh Debian 12 tree (debootstrap, cached between runs): the
commands, libaarp.so by its bare name under `LD_PRELOAD=libaarp.so curl` in the lab, and the
units under a real systemd (the tree booted in systemd-nspawn): Type=notify, the watchdog,
reload, capabilities, journal priorities, /metrics.

Chroot and container are throwaway copies, so the machine running the suite stays as it was.
The Debian base (~250 MB) is kept in $ANYCAST_TEST_CACHE (default
/var/cache/anycast-toolkit-tests) so only the first run downloads it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.services import make_blob, serve_http
from tests.conftest import require, require_program, tool
from tests.e2e import tunnel_util as tu

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("ANYCAST_TEST_CACHE", "/var/cache/anycast-toolkit-tests"))
BASE = CACHE / "bookworm-systemd.tar"
MIRROR = os.environ.get("DEBIAN_MIRROR", "http://deb.debian.org/debian")


def _run(argv: list[str], timeout: float = 900, **kw) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)
    assert proc.returncode == 0, f"{argv}: {proc.stderr[-3000:] or proc.stdout[-3000:]}"
    return proc


def _base() -> Path:
    """A fresh Debian 12 (minbase, with systemd to boot it), made once; a lock keeps two suites
    running on one machine from building it into the same folder."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / "bookworm.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not BASE.exists():
            _build_base()
    return BASE


def _build_base() -> None:
    require_program("debootstrap")
    tree = CACHE / "bookworm.tmp"
    shutil.rmtree(tree, ignore_errors=True)
    _run(["debootstrap", "--variant=minbase", "--include=systemd,systemd-sysv,dbus,"
          "iproute2,curl,ca-certificates", "bookworm", str(tree), MIRROR], timeout=1500)
    _run(["tar", "--numeric-owner", "-C", str(tree), "-cf", f"{BASE}.part", "."])
    os.replace(f"{BASE}.part", BASE)
    shutil.rmtree(tree, ignore_errors=True)


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require(os.geteuid() == 0, "root (debootstrap, chroot, containers)")
    require_program("dpkg-deb")
    src = tmp_path_factory.mktemp("src") / "tree"
    shutil.copytree(ROOT, src, symlinks=True, ignore=shutil.ignore_patterns(
        ".venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", ".ruff_cache",
        "libaarp.so", "_fastpath*.so"))
    _run(["make", "-C", str(src), "deb"], timeout=1200)
    (path,) = (src / "dist").glob("anycast-toolkit_*.deb")
    staged = src / "build/deb/root"
    leaks = subprocess.run(["grep", "-rla", str(staged), str(staged)], capture_output=True,
                           text=True).stdout.split()
    assert not leaks, f"the staging path is baked into {leaks[:5]}"
    return path


@pytest.fixture(scope="module")
def installed(deb: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("debian") / "root"
    root.mkdir()
    _run(["tar", "--numeric-owner", "-C", str(root), "-xf", str(_base())])
    shutil.copy(deb, root / "tmp" / deb.name)
    shutil.copy("/etc/resolv.conf", root / "etc/resolv.conf")
    (root / "etc/machine-id").write_text("")
    _run(["mount", "--bind", "/proc", str(root / "proc")])
    try:
        _run(["chroot", str(root), "apt-get", "update", "-q"], timeout=600)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        out = _run(["chroot", str(root), "apt-get", "install", "-y", "-q",
                    f"/tmp/{deb.name}"], env=env, timeout=900).stdout
        assert "Setting up anycast-toolkit" in out
    finally:
        subprocess.run(["umount", "-l", str(root / "proc")], check=False)
    yield root
    shutil.rmtree(root.parent, ignore_errors=True)


def _in(root: Path, *argv: str, **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["chroot", str(root), *argv], capture_output=True, text=True,
                          timeout=60, **kw)


def test_the_package_installs_what_an_operator_needs(installed: Path) -> None:
    for cmd in ("aarp-resolve", "aarp-responder", "aarp-shim", "anytun-relay"):
        out = _in(installed, cmd, "--version")
        assert out.returncode == 0 and out.stdout.startswith(f"{cmd} 0.1.0 (anycast-toolkit")
    assert "libaarp.so" in _in(installed, "ldconfig", "-p").stdout
    lib = _in(installed, "sh", "-c", "LD_PRELOAD=libaarp.so /bin/echo loaded")
    assert lib.stdout == "loaded\n" and "cannot be preloaded" not in lib.stderr, lib.stderr
    assert _in(installed, "/usr/lib/anycast-toolkit/bin/python", "-c",
               "import relay.fastpath as f; assert f.available()").returncode == 0
    for path in ("usr/share/man/man8/anytun-relay.8.gz", "usr/share/man/man1/aarp-shim.1.gz",
                 "usr/share/bash-completion/completions/anytun-relay",
                 "usr/lib/systemd/system/anytun-relay@.service",
                 "usr/lib/sysusers.d/anycast-toolkit.conf",
                 "etc/anytun-relay/cluster.toml.example",
                 "usr/share/doc/anycast-toolkit/copyright"):
        assert (installed / path).exists(), path
    assert _in(installed, "getent", "passwd", "anytun-relay").returncode == 0
    for example in sorted((installed / "etc/anytun-relay").glob("*.example")):
        out = _in(installed, "anytun-relay", "check-config", f"/etc/anytun-relay/{example.name}")
        assert out.returncode == 0, out.stderr


def test_ld_preload_by_bare_name_pins_curl(installed: Path, lab_factory, tmp_path: Path) -> None:
    lab = lab_factory(servers=2, clients=1)
    blob = make_blob(tmp_path / "www" / "blob", 200_000)
    for node in lab.servers:
        node.popen([tool("aarp-responder"), "--anycast", "fd00:aa::1", "--no-icmp"])
        serve_http(node, blob.parent)
    time.sleep(0.5)
    env = "LD_PRELOAD=libaarp.so AARP_ANYCAST=fd00:aa::/64 AARP_METHOD=udp AARP_LOG=debug"
    out = lab.client.run(["chroot", str(installed), "sh", "-c",
                          f"{env} curl -sS -g -o /tmp/blob -w '%{{remote_ip}}' "
                          "http://[fd00:aa::1]/blob"], timeout=60)
    assert out.stdout == "fd00:aa::1"     # the program sees the address it asked for
    assert f"fd00:aa::1 -> {lab.server(1).ip6}" in out.stderr, out.stderr
    assert (installed / "tmp/blob").stat().st_size == 200_000


# -- the units under a real systemd -----------------------------------------------------------
RELAY_TOML = """[process]
http_listen = "127.0.0.1:9180"
[relay]
rtpproxy = ["udp:127.0.0.1:22222"]
rtp_address = ["127.0.0.1"]
rtp_ports = "40000-40099"
"""
TUN_TOML = """[process]
http_listen = "127.0.0.1:9181"
[tunnel]
interface = "127.0.0.1"
dev = "tun7"
ifconfig = "10.9.0.1/24"
passphrase = "unit test secret"
seq_file = "/var/lib/anytun-relay/tun1.seq.json"
"""
UNITS = ("anytun-relay@relay1.service", "anytun-relay@tun1.service", "aarp-responder.service")


class Container:
    def __init__(self, root: Path, tun_node: Path) -> None:
        self.proc = subprocess.Popen(
            ["systemd-nspawn", "--register=no", "--keep-unit", "--quiet", "-D", str(root),
             "-b", "--private-network", f"--bind={tun_node}:/dev/net/tun"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.pid = tu.wait_for(self._init, 30, "the container's systemd")

    def _init(self) -> int | None:
        if self.proc.poll() is not None:
            out = self.proc.stdout.read().decode() if self.proc.stdout else ""
            raise AssertionError(f"nspawn exited: {out[-2000:]}")
        kids = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True,
                              text=True).stdout.split()
        return int(kids[0]) if kids else None

    def run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["nsenter", "-t", str(self.pid), "-a", *argv],
                              capture_output=True, text=True, timeout=60)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.run("systemctl", "poweroff")
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def test_units_run_under_systemd(installed: Path, tmp_path: Path) -> None:
    require_program("systemd-nspawn")
    (installed / "etc/anytun-relay/relay1.toml").write_text(RELAY_TOML)
    (installed / "etc/anytun-relay/tun1.toml").write_text(TUN_TOML)
    (installed / "etc/default/aarp-responder").write_text(
        'AARP_RESPONDER_OPTS="--anycast 10.255.0.1 --unicast 10.0.0.5 --log info '
        '--http-listen 127.0.0.1:9182"\n')
    _in(installed, "systemctl", "enable", *UNITS).check_returncode()
    tun_node = tmp_path / "tun"             # as on any Debian host: /dev/net/tun is 0666
    subprocess.run(["mknod", "-m", "0666", str(tun_node), "c", "10", "200"], check=True)
    box = Container(installed, tun_node)
    try:
        def active() -> bool:
            return box.run("systemctl", "is-active", *UNITS).stdout.split() == ["active"] * 3

        tu.wait_for(active, 60, "the units active")
        show = box.run("systemctl", "show", "-p", "MainPID,Type,StatusText,WatchdogUSec",
                       UNITS[1]).stdout
        assert "Type=notify" in show and "WatchdogUSec=30s" in show and "running:" in show
        for unit in UNITS:
            pid = box.run("systemctl", "show", "-p", "MainPID", "--value", unit).stdout.strip()
            status = box.run("cat", f"/proc/{pid}/status").stdout
            caps = {k: int(v, 16) for k, v in (ln.split(":\t") for ln in status.splitlines()
                                                if ln.startswith("Cap"))}
            assert caps["CapEff"] == 0 and caps["CapPrm"] == 0, (unit, caps)
            uid = next(ln for ln in status.splitlines() if ln.startswith("Uid:")).split()[1]
            assert uid != "0", unit
        text = box.run("anytun-relay", "status").stdout
        assert "device tun7 (tun)" in text and "rtpproxy:" in text, text
        for port, family in ((9180, "anytun_relay_rtp_port_pairs"),
                             (9181, "anytun_relay_tunnel_connections"),
                             (9182, "aarp_responder_answers_total")):
            body = box.run("curl", "-sS", "--fail", f"http://127.0.0.1:{port}/metrics").stdout
            assert family in body, (port, body[:500])
        journal = box.run("journalctl", "-u", UNITS[1], "-o", "json", "--no-pager").stdout
        entries = [json.loads(line) for line in journal.splitlines()]
        opened = [e for e in entries if "tun device tun7 opened" in str(e.get("MESSAGE"))]
        assert opened and opened[0]["PRIORITY"] == "5", opened      # NOTICE, from <5>
        assert not any(str(e.get("MESSAGE", ""))[:4].isdigit() for e in opened)
        assert box.run("systemctl", "reload", UNITS[0]).returncode == 0
        (installed / "etc/anytun-relay/relay1.toml").write_text(RELAY_TOML + "[bogus]\n")
        bad = box.run("systemctl", "reload", UNITS[0])
        assert bad.returncode != 0 and active()          # refused, still running
        security = box.run("systemd-analyze", "security", "--no-pager", *UNITS).stdout
        scores = dict(re.findall(r"^(\S+\.service)\s+([\d.]+) ", security, re.M))
        print("systemd-analyze security under systemd:", scores)
        assert set(scores) == set(UNITS) and all(float(v) <= 3.0 for v in scores.values())
    finally:
        box.close()

