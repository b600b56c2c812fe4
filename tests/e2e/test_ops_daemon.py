"""Every mode as an operator runs it, in network namespaces: daemonizing with a pid file in a
directory that did not exist, privileges dropped to nobody with only the capabilities the mode
needs (a reload that changes kernel routes still works), systemd's notifications over a real
socket, journald-style log lines, a Prometheus scrape with curl, a second daemon refused on a
taken port, and a status pipe closed early."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from aarp.ops import caps
from lab import sip as labkit
from tests.conftest import require_program, tool
from tests.e2e import tunnel_util as tu

pytestmark = pytest.mark.e2e
RTP_CTL = "udp:127.0.0.1:22222"


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory nobody (the dropped daemon) can read: the test's tmp_path is root-only."""
    path = Path(tempfile.mkdtemp(prefix="ops-test-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _pid(path: Path) -> int:
    return int(tu.wait_for(lambda: path.exists() and path.read_text().strip(), 10, "pid file"))


def _proc_status(pid: int) -> dict[str, str]:
    return dict(line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text()
                .splitlines() if ":\t" in line)


def _stop(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    tu.wait_for(lambda: not os.path.exists(f"/proc/{pid}"), 10, "daemon exit")


def _metrics(node, port: int) -> dict[str, list]:
    text = node.run(["curl", "-sS", "--fail", f"http://127.0.0.1:{port}/metrics"]).stdout
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def test_relay_only_daemon_drops_privileges_and_serves_metrics(lab_factory,
                                                               shared_dir: Path) -> None:
    require_program("curl")
    lab = lab_factory(servers=1, clients=1)
    s1 = lab.server(1)
    pidfile = shared_dir / "run" / "sub" / "relay.pid"        # directories created at start
    conf = shared_dir / "relay.toml"
    conf.write_text(f'[process]\nusername = "nobody"\nwrite_pid = "{pidfile}"\n'
                    f'log = ["file:4,{shared_dir}/relay.log"]\nhttp_listen = "127.0.0.1:9180"\n'
                    f'[relay]\nrtpproxy = ["{RTP_CTL}"]\nrtp_address = ["10.255.0.1"]\n'
                    'rtp_ports = "40000-40099"\n')
    done = s1.run([tool("anytun-relay"), "--config", str(conf)], timeout=30)  # daemonizes
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr
    pid = _pid(pidfile)
    try:
        st = _proc_status(pid)
        assert st["Uid"].split()[0] == "65534" and int(st["CapEff"], 16) == 0
        assert int(st["CapPrm"], 16) == 0 and int(st["CapBnd"], 16) == 0
        assert (pidfile.parent.stat().st_uid, pidfile.parent.stat().st_mode & 0o777) == \
            (65534, 0o750)
        replies = labkit.control(s1, RTP_CTL, ["v1 V", f"o1 U call-1 {lab.client.ip4} 6000 ftag;1"])
        assert replies[0] == b"v1 20040107\n" and replies[1].startswith(b"o1 400")
        m = _metrics(s1, 9180)
        assert m["anytun_relay_rtp_sessions"][0].value == 1
        assert m["anytun_relay_rtp_port_pairs_in_use"][0].value == 2
        assert m["anytun_relay_rtp_port_pairs"][0].value == 50
        assert m["anytun_relay_rtp_commands"][0].value >= 2
        text = s1.run([tool("anytun-relay"), "status"]).stdout
        assert "node @anytun-relay/rtpproxy" in text and "rtpproxy:" in text
        assert "sessions 1," in text and "port pairs in use 2" in text
        # the reader of the JSON goes away after one line
        piped = s1.run(f"'{tool('anytun-relay')}' status --json | head -1", check=False)
        assert piped.stdout == "{\n" and "Traceback" not in piped.stderr, piped.stderr
        log = (shared_dir / "relay.log").read_text()
        assert "NOTICE anytun-relay: dropped privileges to nobody" in log
    finally:
        _stop(pid)


def test_tunnel_server_keeps_only_net_admin_and_reloads(lab_factory, shared_dir: Path) -> None:
    lab = lab_factory(servers=1, clients=1)
    s1 = lab.server(1)
    state = shared_dir / "state"
    pidfile = shared_dir / "node.pid"
    conf = shared_dir / "node.toml"
    head = (f'[process]\nusername = "nobody"\nwrite_pid = "{pidfile}"\n'
            f'log = ["file:4,{shared_dir}/node.log"]\n[node]\ndevice_name = "tun7"\n'
            f'ifconfig = ["10.8.0.1/16"]\nseq_file = "{state}/seq.json"\n')
    one = '[[connection]]\nmux = 1\npassphrase = "one"\nroutes = ["10.8.1.0/24"]\n'
    two = '[[connection]]\nmux = 2\npassphrase = "two"\nroutes = ["10.8.2.0/24"]\n'
    conf.write_text(head + one)
    conf.chmod(0o644)
    done = s1.run([tool("anytun-relay"), "--config", str(conf)], timeout=30)
    assert done.returncode == 0, done.stderr
    pid = _pid(pidfile)
    try:
        st = _proc_status(pid)
        assert st["Uid"].split()[0] == "65534"
        assert caps._names(int(st["CapEff"], 16)) == {"CAP_NET_ADMIN"}
        assert caps._names(int(st["CapAmb"], 16)) == {"CAP_NET_ADMIN"}   # for ip and nft
        assert state.stat().st_uid == 65534 and (state / "seq.json").exists()

        def routes() -> str:
            return s1.run(["ip", "route", "show", "dev", "tun7"]).stdout

        assert "10.8.1.0/24" in tu.wait_for(lambda: "10.8.1.0/24" in routes() and routes(), 5)
        conf.write_text(head + one + two)
        os.kill(pid, signal.SIGHUP)   # a kernel route added after the privileges went
        tu.wait_for(lambda: "10.8.2.0/24" in routes(), 10, "route of the new connection")
        log = (shared_dir / "node.log").read_text()
        assert "keeping CAP_NET_ADMIN: kernel routes follow" in log
    finally:
        _stop(pid)


def test_second_daemon_on_a_taken_port_is_refused(lab_factory) -> None:
    lab = lab_factory(servers=1, clients=1)
    s1 = lab.server(1)
    first = tu.start(s1, tu.relay("-i", s1.ip4, "-d", "tun7", "-E", "x"), "tun7")
    try:
        second = s1.run([*tu.RELAY, "-D", "-i", s1.ip4, "-d", "tun8", "-E", "x"], check=False,
                        timeout=30)
        assert second.returncode == 2
        assert f"udp port {s1.ip4}:4444 is in use" in second.stderr, second.stderr
        wildcard = s1.run([*tu.RELAY, "-D", "-d", "tun8", "-E", "x", "-4"], check=False,
                          timeout=30)
        assert wildcard.returncode == 2 and "0.0.0.0:4444 is in use" in wildcard.stderr
        assert first.poll() is None
    finally:
        tu.stop(first)


def test_systemd_notifications_and_journal_lines(lab_factory, tmp_path: Path) -> None:
    lab = lab_factory(servers=1, clients=1)
    s1 = lab.server(1)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.settimeout(10)
    journal = (tmp_path / "journal").open("w")
    st = os.fstat(journal.fileno())
    env = dict(os.environ, NOTIFY_SOCKET=str(tmp_path / "notify"), WATCHDOG_USEC="400000",
               JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}")
    env.pop("WATCHDOG_PID", None)
    proc = s1.popen([*tu.RELAY, "-D", "-L", "stderr:4", "--rtpproxy", RTP_CTL,
                     "--rtp-address", "10.255.0.1", "--rtp-ports", "40000-40099"], env=env,
                    stdout=journal, stderr=journal)
    try:
        msgs = []

        def until(prefix: str) -> str:
            while True:
                msg = notify.recv(4096).decode()
                msgs.append(msg)
                if msg.startswith(prefix):
                    return msg

        assert "STATUS=running: rtpproxy, control" in until("READY=1")
        assert until("WATCHDOG=1") == "WATCHDOG=1"
        os.killpg(proc.pid, signal.SIGHUP)
        assert until("RELOADING=1").split("\n")[1].startswith("MONOTONIC_USEC=")
        assert until("READY=1") == "READY=1"
        os.killpg(proc.pid, signal.SIGTERM)
        assert until("STOPPING=1") == "STOPPING=1"
        proc.wait(10)
    finally:
        notify.close()
        tu.stop(proc)
    lines = (tmp_path / "journal").read_text().splitlines()
    assert any(ln.startswith("<6>anytun-relay.rtpproxy: relay mode: control on") for ln in lines)
    assert all(ln[:1] == "<" and ln[2] == ">" for ln in lines), lines   # priority, no time
    assert not any(ln[3:7].isdigit() for ln in lines)


def test_aarp_responder_notifies_gives_up_raw_and_serves_metrics(lab_factory,
                                                                 tmp_path: Path) -> None:
    require_program("curl")
    lab = lab_factory(servers=1, clients=1)
    s1 = lab.server(1)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.settimeout(10)
    env = dict(os.environ, NOTIFY_SOCKET=str(tmp_path / "notify"))
    proc = s1.popen([tool("aarp-responder"), "--anycast", "10.255.0.1", "--log", "info",
                     "--http-listen", "127.0.0.1:9181", "--rate", "1", "--burst", "1"], env=env,
                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    err = ""
    try:
        assert notify.recv(4096).decode().startswith("READY=1\nSTATUS=answering for 10.255.0.1")
        st = _proc_status(proc.pid)   # (ip netns exec execs the responder itself)
        assert int(st["CapEff"], 16) == 0 and int(st["CapPrm"], 16) == 0
        ok = lab.client.run([tool("aarp-resolve"), "--method", "icmp", "10.255.0.1"],
                            check=False)
        assert ok.returncode == 0 and ok.stdout.startswith(s1.ip4), ok
        lab.client.run([tool("aarp-resolve"), "--method", "udp", "--timeout", "200",
                        "--retries", "0", "10.255.0.1"], check=False)   # over the rate
        m = _metrics(s1, 9181)
        assert m["aarp_responder_answers"][0].value == 1
        assert m["aarp_responder_rate_limited"][0].value >= 1
        assert m["aarp_responder_up"][0].value == 1
    finally:
        notify.close()
        err = tu.stop(proc)
    assert "INFO aarp.responder: sockets open; capabilities given up" in err, err
