"""The announcer: rise/fall dampening (pure, property-tested), the health sources against real
sockets and commands, ExaBGP's lines, and `anytun-relay exabgp` as ExaBGP runs it."""

from __future__ import annotations

import http.server
import io
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.announce.checks import (
    CheckResult,
    CommandCheck,
    HttpCheck,
    MaintenanceFile,
    RelayCheck,
    combine,
)
from relay.announce.dampen import Action, Dampener, Health
from relay.announce.exabgp import Announcer, route_lines

UP, DOWN, DRAIN = Health.UP, Health.DOWN, Health.DRAIN


def feed(d: Dampener, results) -> list[Action | None]:
    return [d.feed(r) for r in results]


# -- dampener ---------------------------------------------------------------------------------
def test_announces_after_rise_and_withdraws_after_fall() -> None:
    d = Dampener(rise=3, fall=2)
    assert feed(d, [UP, UP]) == [None, None] and not d.announced
    assert d.feed(UP) is Action.ANNOUNCE and d.announced
    assert feed(d, [DOWN, UP, DOWN]) == [None, None, None]   # an UP restarts the count
    assert d.feed(DOWN) is Action.WITHDRAW and not d.announced
    assert feed(d, [UP, DOWN, UP, UP]) == [None, None, None, None]
    assert d.feed(UP) is Action.ANNOUNCE


def test_drain_withdraws_at_once_and_needs_rise_afterwards() -> None:
    d = Dampener(rise=2, fall=5)
    feed(d, [UP, UP])
    assert d.announced
    assert d.feed(DRAIN) is Action.WITHDRAW
    assert feed(d, [DRAIN, UP]) == [None, None]
    assert d.feed(UP) is Action.ANNOUNCE


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        Dampener(rise=0)
    with pytest.raises(ValueError):
        Dampener(fall=-1)


def test_alternating_results_never_change_the_state() -> None:
    for start_up in (False, True):
        d = Dampener(rise=2, fall=2)
        if start_up:
            feed(d, [UP, UP])
        assert feed(d, [DOWN, UP] * 50) == [None] * 100
        assert d.announced is start_up


@given(st.lists(st.sampled_from([UP, DOWN, DRAIN]), max_size=200), st.integers(1, 6),
       st.integers(1, 6))
def test_dampener_properties(results, rise, fall) -> None:
    d = Dampener(rise=rise, fall=fall)
    announced = False
    for i, r in enumerate(results):
        action = d.feed(r)
        # actions alternate, starting with an announcement
        if action is not None:
            assert action is (Action.WITHDRAW if announced else Action.ANNOUNCE)
            announced = not announced
        assert d.announced is announced
        # an announcement needs `rise` UPs in a row; a withdrawal `fall` DOWNs or one DRAIN
        if action is Action.ANNOUNCE:
            assert i + 1 >= rise and all(x is UP for x in results[i + 1 - rise:i + 1])
        if action is Action.WITHDRAW and r is not DRAIN:
            assert all(x is DOWN for x in results[i + 1 - fall:i + 1])
        if r is DRAIN:
            assert not d.announced
    assert d.pending <= max(rise, fall)


# -- lines ------------------------------------------------------------------------------------
def test_route_lines() -> None:
    assert route_lines(Action.ANNOUNCE, ["10.255.0.0/24", "fd00:aa::/64"], "med 10") == [
        "announce route 10.255.0.0/24 next-hop self med 10",
        "announce route fd00:aa::/64 next-hop self med 10"]
    assert route_lines(Action.WITHDRAW, ["10.255.0.0/24"], "med 10") == [
        "withdraw route 10.255.0.0/24 next-hop self"]


# -- checks -----------------------------------------------------------------------------------
def test_command_and_maintenance_file_checks(tmp_path: Path) -> None:
    assert CommandCheck("true").run(1).health is UP
    bad = CommandCheck("echo broken pipe >&2; exit 3").run(1)
    assert bad.health is DOWN and "exited 3: broken pipe" in bad.reason
    slow = CommandCheck("sleep 5").run(0.2)
    assert slow.health is DOWN and "longer than 0.2s" in slow.reason
    m = MaintenanceFile(str(tmp_path / "drain"))
    assert m.run(1).health is UP
    (tmp_path / "drain").touch()
    assert m.run(1).health is DRAIN


def test_combine() -> None:
    assert combine([]).health is UP
    assert combine([CheckResult(UP), CheckResult(DOWN, "a"), CheckResult(DOWN, "b")]) == \
        CheckResult(DOWN, "a; b")
    assert combine([CheckResult(DOWN, "x"), CheckResult(DRAIN, "d")]).health is DRAIN


class _Health(http.server.BaseHTTPRequestHandler):
    replies: dict[str, tuple[int, bytes]] = {}

    def do_GET(self) -> None:
        code, body = self.replies.get(self.path, (404, b""))
        self.send_response(code)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def test_http_check_against_a_server() -> None:
    _Health.replies = {
        "/ok": (200, b'{"healthy": true}'),
        "/plain": (200, b"fine"),
        "/sick": (503, json.dumps({"healthy": False, "reasons": ["redis gone"]}).encode()),
        "/drain": (503, b'{"healthy": false, "draining": true}'),
        "/liar": (500, b'{"healthy": true}'),
    }
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{srv.server_address[1]}"
    try:
        assert HttpCheck(base + "/ok").run(1).health is UP
        assert HttpCheck(base + "/plain").run(1).health is UP
        assert HttpCheck(base + "/sick").run(1) == CheckResult(DOWN, "redis gone")
        assert HttpCheck(base + "/drain").run(1).health is DRAIN
        liar = HttpCheck(base + "/liar").run(1)
        assert liar.health is DOWN and "HTTP 500" in liar.reason
        assert HttpCheck(base + "/nothing").run(1).health is DOWN
    finally:
        srv.shutdown()
        srv.server_close()
    gone = HttpCheck(base + "/ok").run(1)
    assert gone.health is DOWN and gone.reason


def test_relay_check_without_a_node(tmp_path: Path) -> None:
    r = RelayCheck(str(tmp_path / "no.sock")).run(0.5)
    assert r.health is DOWN and "control socket" in r.reason
    assert RelayCheck("nosuchdev0").run(0.5).health is DOWN


# -- the loop ---------------------------------------------------------------------------------
class Flaky:
    label = "flaky"

    def __init__(self, results) -> None:
        self.results = list(results)

    def run(self, timeout: float) -> CheckResult:
        return CheckResult(self.results.pop(0) if self.results else UP)


def test_announcer_prints_only_on_changes() -> None:
    out = io.StringIO()
    a = Announcer([Flaky([UP, UP, DOWN, UP, DOWN, DOWN])], Dampener(2, 2), ["10.255.0.0/24"],
                  out)
    actions = [a.step() for _ in range(6)]
    assert actions == [None, Action.ANNOUNCE, None, None, None, Action.WITHDRAW]
    assert out.getvalue().splitlines() == ["announce route 10.255.0.0/24 next-hop self",
                                           "withdraw route 10.255.0.0/24 next-hop self"]


def _exabgp_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "relay.announce", *args]


def test_process_as_exabgp_runs_it(tmp_path: Path) -> None:
    """Withdraw at start, announce after rise, withdraw when ExaBGP closes its stdin."""
    flag = tmp_path / "up"
    flag.touch()
    proc = subprocess.Popen(_exabgp_cmd("--prefix", "10.255.0.0/24", "--check-command",
                                        f"test -e {flag}", "--rise", "2", "--interval", "0.05"),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdin is not None
    lines = [proc.stdout.readline().strip() for _ in range(2)]
    proc.stdin.write("done\n")
    proc.stdin.close()
    out = proc.stdout.read()
    assert proc.wait(10) == 0, proc.stderr.read() if proc.stderr else ""
    assert lines == ["withdraw route 10.255.0.0/24 next-hop self",
                     "announce route 10.255.0.0/24 next-hop self"]
    assert out.strip().splitlines()[-1] == "withdraw route 10.255.0.0/24 next-hop self"


@pytest.mark.parametrize(("args", "words"), [
    ([], "--prefix"),
    (["--prefix", "10.0.0.1/8", "--check-relay"], "host bits"),
    (["--prefix", "banana", "--check-relay"], "--prefix banana"),
    (["--prefix", "10.0.0.0/8"], "at least one check"),
    (["--prefix", "10.0.0.0/8", "--check-relay", "--rise", "0"], "--rise"),
    (["--prefix", "10.0.0.0/8", "--check-relay", "--interval", "0"], "--interval"),
    (["--prefix", "10.0.0.0/8", "--check-http", "ftp://x"], "not an http"),
    (["--prefix", "10.0.0.0/8", "--check-relay", "--attributes", "med 1\nannounce route x"],
     "--attributes"),
])
def test_usage_errors_are_one_line(args: list[str], words: str) -> None:
    proc = subprocess.run(_exabgp_cmd(*args), capture_output=True, text=True, timeout=20,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 2, proc.stderr
    assert words in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stdout == ""
