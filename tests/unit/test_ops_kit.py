"""aarp.ops: the Prometheus text format (checked by prometheus_client's own parser), sd_notify
over a real datagram socket, the journald and syslog log variants (syslog over real Unix
sockets), and capabilities read from
the kernel (the HTTP listener: test_ops_http.py)."""

from __future__ import annotations

import logging
import logging.handlers
import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from aarp.ops import caps, logfmt, sdnotify
from aarp.ops.exposition import Metrics


def test_exposition_parses_with_prometheus_client() -> None:
    m = Metrics("anytun_relay")
    m.counter("tunnel_packets_total", "Packets per client\nand direction",
              [({"mux": 1, "direction": "rx"}, 42), ({"mux": 1, "direction": "tx"}, 7)])
    m.gauge("odd_labels", "Labels with quotes", [({"name": 'a "b"\\c\nd'}, 1.5)])
    m.gauge("plain", "No labels", [({}, 3)])
    families = {f.name: f for f in text_string_to_metric_families(m.render().decode())}
    assert families["anytun_relay_tunnel_packets"].type == "counter"
    samples = {tuple(sorted(s.labels.items())): s.value
               for s in families["anytun_relay_tunnel_packets"].samples}
    assert samples[(("direction", "rx"), ("mux", "1"))] == 42
    assert families["anytun_relay_odd_labels"].samples[0].labels["name"] == 'a "b"\\c\nd'
    assert families["anytun_relay_plain"].samples[0].value == 3


@pytest.mark.parametrize("name,labels", [("bad-name", {}), ("ok", {"bad-label": 1}),
                                         ("ok", {"0x": 1})])
def test_exposition_refuses_bad_names(name: str, labels: dict) -> None:
    with pytest.raises(ValueError):
        Metrics("x").gauge(name, "h", [(labels, 1)])


def test_sd_notify_over_a_real_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(2)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        assert sdnotify.ready("serving")
        assert sock.recv(4096) == b"READY=1\nSTATUS=serving"
        assert sdnotify.reloading()
        got = sock.recv(4096).decode().split("\n")
        assert got[0] == "RELOADING=1" and got[1].startswith("MONOTONIC_USEC=")
        assert sdnotify.stopping() and sock.recv(4096) == b"STOPPING=1"
    monkeypatch.setenv("NOTIFY_SOCKET", "@ops-test-abstract-none-listens")
    assert not sdnotify.ready()            # nobody there: no exception, just False
    monkeypatch.setenv("NOTIFY_SOCKET", "relative/path")
    assert not sdnotify.ready()
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert not sdnotify.ready()


def test_watchdog_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert sdnotify.watchdog_interval() == 15
    monkeypatch.setenv("WATCHDOG_PID", "1")          # meant for another process
    assert sdnotify.watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_USEC", "garbage")
    assert sdnotify.watchdog_interval() is None


def _record(level: int, msg: str) -> logging.LogRecord:
    return logging.LogRecord("anytun-relay.udp", level, __file__, 1, msg, None, None)


def test_log_line_formats(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = (tmp_path / "stream").open("w")
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    line = logfmt.stream_handler(out).format(_record(logfmt.NOTICE, "listening"))
    date, clock, level, rest = line.split(" ", 3)
    assert len(date) == 10 and len(clock) == 12 and level == "NOTICE"
    assert rest == "anytun-relay.udp: listening"
    st = os.fstat(out.fileno())
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
    h = logfmt.stream_handler(out)
    assert h.format(_record(logfmt.NOTICE, "listening")) == "<5>anytun-relay.udp: listening"
    assert h.format(_record(logging.ERROR, "x")).startswith("<3>")
    assert h.format(_record(logging.DEBUG, "x")).startswith("<7>")
    other = (tmp_path / "other").open("w")      # another stream is not the journal
    assert not logfmt.on_journal(other)
    assert logfmt.stream_handler(other).format(_record(logfmt.NOTICE, "x")).endswith(
        "NOTICE anytun-relay.udp: x")
    monkeypatch.setenv("JOURNAL_STREAM", "junk")
    assert not logfmt.on_journal(out)


def test_missing_syslog_socket_is_an_error(monkeypatch: pytest.MonkeyPatch,
                                           tmp_path: Path) -> None:
    monkeypatch.setattr(logfmt, "DEVLOG", str(tmp_path / "no-log-here"))
    with pytest.raises(logfmt.LogTargetError, match="no syslog socket"):
        logfmt.syslog_handler("anytun-relay")
    with pytest.raises(logfmt.LogTargetError, match="facility"):
        logfmt.syslog_handler("anytun-relay", "nonsense")
    with pytest.raises(logfmt.LogTargetError, match="cannot open"):
        logfmt.file_handler("/proc/no/such/dir/x.log")


@pytest.fixture
def devlog(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A syslog socket path of our own (short: tmp_path may exceed a socket name's 107 bytes)."""
    with tempfile.TemporaryDirectory(prefix="log") as d:
        path = os.path.join(d, "log")
        monkeypatch.setattr(logfmt, "DEVLOG", path)
        yield path


def _listen(path: str, kind: int = socket.SOCK_DGRAM) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, kind)
    s.bind(path)
    s.settimeout(5)
    return s


def test_syslog_bytes_facility_and_priority(devlog: str) -> None:
    srv = _listen(devlog)
    h = logfmt.syslog_handler("anytun-relay", "local3")
    try:
        h.handle(_record(logfmt.NOTICE, "listening on udp \u00fc"))
        assert srv.recv(4096) == (f"<157>anytun-relay[{os.getpid()}]: anytun-relay.udp: "
                                  "listening on udp \u00fc\0").encode()   # 19 << 3 | 5
        for level, pri in ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4),
                           (logging.INFO, 6), (logging.DEBUG, 7), (15, 4)):
            h.handle(_record(level, "x"))
            assert srv.recv(4096).startswith(f"<{19 << 3 | pri}>anytun-relay[".encode())
    finally:
        h.close()
        srv.close()
    assert logging.handlers.SysLogHandler.facility_names == logfmt.FACILITIES


def test_syslog_bytes_are_the_standard_librarys(devlog: str) -> None:
    srv = _listen(devlog)
    ours = logfmt.syslog_handler("aarp-responder", "daemon")
    std = logging.handlers.SysLogHandler(devlog, logfmt.FACILITIES["daemon"])
    std.setFormatter(ours.formatter)
    try:
        for level in (logging.ERROR, logging.WARNING, logging.INFO, logging.DEBUG):
            ours.handle(_record(level, "ping 10.0.0.1"))
            std.handle(_record(level, "ping 10.0.0.1"))
            assert srv.recv(4096) == srv.recv(4096)
    finally:
        ours.close()
        std.close()
        srv.close()


def test_syslog_reconnects_when_the_socket_is_recreated(devlog: str) -> None:
    srv = _listen(devlog)
    h = logfmt.syslog_handler("anytun-relay")
    try:
        h.handle(_record(logging.ERROR, "before"))
        assert srv.recv(4096).endswith(b"before\0")
        srv.close()                       # the syslog daemon restarts: a new socket, same name
        os.unlink(devlog)
        srv = _listen(devlog)
        h.handle(_record(logging.ERROR, "after"))
        assert srv.recv(4096) == f"<27>anytun-relay[{os.getpid()}]: anytun-relay.udp: after\0" \
            .encode()
    finally:
        h.close()
        srv.close()


def test_syslog_over_a_stream_socket(devlog: str) -> None:
    srv = _listen(devlog, socket.SOCK_STREAM)
    srv.listen(1)
    h = logfmt.syslog_handler("anytun-relay")
    conn = srv.accept()[0]
    try:
        h.handle(_record(logging.ERROR, "one"))
        h.handle(_record(logging.ERROR, "two"))
        got = b""
        while got.count(b"\0") < 2:
            got += conn.recv(4096)
        assert [m.rpartition(b": ")[2] for m in got.split(b"\0")[:2]] == [b"one", b"two"]
    finally:
        h.close()
        conn.close()
        srv.close()


def test_syslog_socket_nobody_listens_on_is_an_error(devlog: str) -> None:
    _listen(devlog).close()               # the name is left, nobody reads it
    with pytest.raises(logfmt.LogTargetError, match=r"cannot connect to .*refused"):
        logfmt.syslog_handler("anytun-relay")


def test_capabilities_of_this_process() -> None:
    sets = caps.read()
    assert set(sets) == {"effective", "permitted", "inheritable", "bounding", "ambient"}
    if os.geteuid() == 0:
        assert "CAP_NET_ADMIN" in sets["bounding"]
    with pytest.raises(ValueError):
        caps._mask(["CAP_NO_SUCH_THING"])


def test_the_bounds_under_attack_are_metrics() -> None:
    """The refusals of the stream and control-socket bounds (docs/security.md) are counters."""
    from relay import metrics
    status = {
        "tunnel": {"device": {"name": "tun5"}, "connections": [], "dataplane": {},
                   "transports": [{"kind": "tcp", "received": 1, "sent": 2, "max_streams": 72,
                                   "refused": 220, "evicted": 28, "timed_out": 72}]},
        "rtpproxy": {"control_evicted": 483, "control_timed_out": 1},
        "control": {"socket": "@anytun-relay/tun5", "waiting": 0, "evicted": 687, "refused": 3},
    }
    families = {f.name: f for f in
                text_string_to_metric_families(metrics.render(status).decode())}

    def samples(name: str) -> dict:
        return {s.labels.get("reason"): s.value for s in families[name].samples
                if not s.name.endswith("_created")}

    assert families["anytun_relay_transport_max_streams"].samples[0].value == 72
    assert samples("anytun_relay_transport_streams_ended") == \
        {"refused": 220, "evicted": 28, "timed_out": 72}
    assert samples("anytun_relay_rtp_control_connections_ended") == \
        {"evicted": 483, "timed_out": 1}
    assert samples("anytun_relay_control_connections_ended") == {"evicted": 687, "refused": 3}
