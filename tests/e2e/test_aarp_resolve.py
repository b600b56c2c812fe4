"""aarp-resolve and aarp-responder in the lab: kernel anycast, BGP-style anycast with responders
(IPv6 and IPv4, ICMP and UDP), a firewalled client, an unprivileged client, names, the API."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab import AA4, AA6, AK6, AnycastLab, Node
from lab.services import wait_port
from tests.conftest import require, require_program

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("aarp-resolve")]

PY = sys.executable
KEY = "5f" * 32
KEY_ID = "5"
RESOLVE = [PY, "-m", "aarp.cli.resolve"]
ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "AARP_CONF": "/dev/null"}


@pytest.fixture(scope="module")
def lab() -> Iterator[AnycastLab]:
    """Two servers, each with a (signing) responder for AA6 and AA4; two clients; one host."""
    require(os.geteuid() == 0, "root (CAP_NET_ADMIN) for network namespaces")
    require(shutil.which("ip") is not None, "iproute2")
    with AnycastLab(servers=2, clients=2, hosts=1, tag="aresolve") as lab:
        for s in lab.servers:
            s.popen([PY, "-m", "aarp.cli.responder", "--anycast", AA6, "--anycast", AA4,
                     "--key", KEY, "--key-id", KEY_ID, "--log", "info"], env=ENV)
            # Kernel anycast addresses cannot be an ICMP source, but UDP answers work.
            s.popen([PY, "-m", "aarp.cli.responder", "--anycast", AK6, "--no-icmp"], env=ENV)
        for s in lab.servers:
            for aa in (AA6, AA4, AK6):
                wait_bound(s, aa, 4445)
        yield lab


def wait_bound(node: Node, address: str, port: int, timeout: float = 10) -> None:
    """Wait until a UDP socket is bound to [address]:port in the node."""
    addr = f"[{address}]" if ":" in address else address
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if node.run(["ss", "-H", "-uln", f"src {addr}:{port}"], check=False).stdout.strip():
            return
        time.sleep(0.05)
    raise AssertionError(f"nothing bound to {addr}:{port} in {node.name}")


@pytest.fixture(autouse=True)
def route_to_s1(lab: AnycastLab) -> None:
    lab.move(1)


def resolve(node: Node, *args: str, user: str | None = None,
            env: dict | None = None) -> subprocess.CompletedProcess[str]:
    return node.run([*RESOLVE, *args], check=False, timeout=30, user=user,
                    env={**ENV, **(env or {})})


def resolved(node: Node, *args: str, **kw: object) -> list[dict]:
    proc = resolve(node, "--json", *args, **kw)  # type: ignore[arg-type]
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_kernel_anycast_follows_the_route(lab: AnycastLab) -> None:
    """The draft's mechanism (the echo reply's source is UA), and a responder's UDP answer."""
    for target in (1, 2, 1):
        lab.move(target)
        for method, how in (("icmp", "source/icmp"), ("udp", "inband/udp")):
            proc = resolve(lab.client, "--method", method, AK6)
            assert proc.returncode == 0, proc.stderr
            ua, aa, learned = proc.stdout.split()[:3]
            assert (ua, aa, learned) == (lab.server(target).ip6, AK6, how)


@pytest.mark.parametrize("method", ["icmp", "udp", "auto"])
def test_bgp_style_inband_answers_ipv6_and_ipv4_follow_the_route(lab: AnycastLab,
                                                                 method: str) -> None:
    for target in (1, 2):
        lab.move(target)
        s = lab.server(target)
        docs = resolved(lab.client, "--method", method, AA6, AA4)
        assert [(d["anycast"], d["unicast"]) for d in docs] == [(AA6, s.ip6), (AA4, s.ip4)]
        for d in docs:
            assert d["learned"] == "inband" and d["resolved"] and d["error"] is None
            assert d["method"] == (method if method != "auto" else d["method"])
            assert d["ttl"] == 60 and d["rtt_ms"] > 0
            assert d["verified"] is False  # signed, but this client holds no key


def test_plain_output_puts_the_address_first(lab: AnycastLab) -> None:
    proc = resolve(lab.client, AA6, AA4)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert [ln.split()[0] for ln in lines] == [lab.server(1).ip6, lab.server(1).ip4]


def test_shared_key_verifies_and_a_wrong_key_is_refused(lab: AnycastLab) -> None:
    docs = resolved(lab.client, "--key", KEY, "--key-id", KEY_ID, AA6, AA4)
    assert all(d["verified"] and d["verification"] == "tag" and d["key_id"] == 5 for d in docs)
    proc = resolve(lab.client, "--key", "6f" * 32, "--key-id", KEY_ID, "--timeout", "150",
                   "--retries", "0", AA6)
    assert proc.returncode == 1 and proc.stdout == ""
    assert "tag is not valid" in proc.stderr
    proc = resolve(lab.client, "--key", KEY, "--key-id", "6", "--timeout", "150",
                   "--retries", "0", AA6)
    assert proc.returncode == 1 and "key-id 5, ours is 6" in proc.stderr
    # The key policy refuses source-only answers (kernel anycast carries no tag).
    proc = resolve(lab.client, "--key", KEY, "--timeout", "150", "--retries", "0", AK6)
    assert proc.returncode == 1 and "refuses answers without a tag" in proc.stderr


def test_prefix_policy_from_the_config_file(lab: AnycastLab, tmp_path: Path) -> None:
    conf = tmp_path / "aarp.conf"
    conf.write_text("policy = prefix\nallow = fd00:aa::/64 fd00:2:2::/64  # only s2\n"
                    "allow = 10.255.0.0/24 10.2.0.0/16\ntimeout_ms = 150\nretries = 0\n")
    proc = resolve(lab.client, AA6, env={"AARP_CONF": str(conf)})
    assert proc.returncode == 1 and "outside the allowed prefixes fd00:2:2::/64" in proc.stderr
    lab.move(2)
    docs = resolved(lab.client, AA6, AA4, env={"AARP_CONF": str(conf)})
    assert [d["unicast"] for d in docs] == [lab.server(2).ip6, lab.server(2).ip4]
    assert all(d["verification"] == "prefix" for d in docs)


def test_firewalled_client_gets_inband_answers_only(lab: AnycastLab) -> None:
    """Input policy drop, only conntrack's established/related (plus neighbour discovery, without
    which IPv6 does not work at all): answers from AA pass, source answers from UA do not."""
    fw = lab.clients[1]
    fw.run(["nft", "-f", "-"], input="""
        table inet aarptest {
          chain input {
            type filter hook input priority 0; policy drop;
            ct state established,related accept
            icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } accept
          }
        }""")
    try:
        for method in ("icmp", "udp"):
            docs = resolved(fw, "--method", method, AA6, AA4)
            assert [d["unicast"] for d in docs] == [lab.server(1).ip6, lab.server(1).ip4]
            assert {d["method"] for d in docs} == {method}
        # Kernel anycast: the echo reply from UA is "invalid" to conntrack and dropped...
        proc = resolve(fw, "--method", "icmp", "--timeout", "150", "--retries", "0", AK6)
        assert proc.returncode == 1 and proc.stdout == ""
        assert "no answer within 150 ms" in proc.stderr
        # ... while the same probe from the open client works: the firewall made the difference.
        assert resolve(lab.client, "--method", "icmp", AK6).returncode == 0
        # The responder's UDP answer comes from AK6 and passes.
        docs = resolved(fw, "--method", "udp", AK6)
        assert (docs[0]["unicast"], docs[0]["learned"]) == (lab.server(1).ip6, "inband")
    finally:
        fw.run(["nft", "delete", "table", "inet", "aarptest"], check=False)


def test_unprivileged_client_resolves_over_udp(lab: AnycastLab) -> None:
    c = lab.client
    assert c.run(["id", "-u"], user="nobody").stdout.strip() != "0"
    docs = resolved(c, AA6, AA4, user="nobody")  # auto: no ICMP socket, UDP alone
    assert [(d["unicast"], d["method"]) for d in docs] == [(lab.server(1).ip6, "udp"),
                                                           (lab.server(1).ip4, "udp")]
    proc = resolve(c, "--method", "icmp", AA6, user="nobody")
    assert proc.returncode == 1
    assert "no ICMP socket available" in proc.stderr and "--method udp" in proc.stderr


def test_unprivileged_client_with_ping_sockets(lab: AnycastLab) -> None:
    """Where ping_group_range admits the user, ICMP works through ping sockets, whose kernel
    rewrites the echo identifier: matching relies on sequence and nonce."""
    c = lab.clients[1]
    c.host.sysctl("net.ipv4.ping_group_range", "0 2147483647")
    try:
        lab.move(2)
        docs = resolved(c, "--method", "icmp", AA6, AA4, AK6, user="nobody")  # no UDP
        s2 = lab.server(2)
        assert [(d["unicast"], d["learned"]) for d in docs] == [
            (s2.ip6, "inband"), (s2.ip4, "inband"), (s2.ip6, "source")]
    finally:
        c.host.sysctl("net.ipv4.ping_group_range", "1 0")


def test_no_responder_means_not_resolvable_with_a_reason(lab: AnycastLab) -> None:
    # The server's own unicast address answers plain echoes and refuses UDP: exit 1, fast.
    s = lab.server(1)
    proc = resolve(lab.client, "--timeout", "2000", s.ip6, s.ip4)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.count("no AARP responder there") == 2


def test_count_reports_like_ping_across_a_route_move(lab: AnycastLab) -> None:
    proc = resolve(lab.client, "--count", "2", "--interval", "0", AA6)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 3 and lines[2].startswith(f"--- {AA6}: 2 probes, 2 answered, 0% lost")
    assert f"answered by {lab.server(1).ip6} (2)" in lines[2]
    docs = resolved(lab.client, "--count", "3", "--interval", "0", AA4)
    assert docs[0]["sent"] == 3 and docs[0]["answered"] == 3 and len(docs[0]["probes"]) == 3


def test_names_resolve_every_address(lab: AnycastLab) -> None:
    require_program("dnsmasq")
    dns = lab.hosts[0]
    dns.popen(["dnsmasq", "--no-daemon", "--no-resolv", "--no-hosts", "--port=53",
               f"--listen-address={dns.ip4}", "--bind-interfaces", "--local=/lab/",
               f"--host-record=svc.lab,{AA6},{AA4}", f"--host-record=v6only.lab,{AA6}"])
    wait_port(dns, 53, "udp")
    docs = resolved(lab.client, "--nameserver", dns.ip4, "svc.lab")
    assert [(d["destination"], d["anycast"], d["unicast"]) for d in docs] == [
        ("svc.lab", AA6, lab.server(1).ip6), ("svc.lab", AA4, lab.server(1).ip4)]
    docs = resolved(lab.client, "-4", "--nameserver", dns.ip4, "svc.lab")
    assert [d["anycast"] for d in docs] == [AA4]
    proc = resolve(lab.client, "--nameserver", dns.ip4, "svc.lab")
    assert f"{lab.server(1).ip6}  {AA6} (svc.lab)" in proc.stdout
    proc = resolve(lab.client, "--nameserver", dns.ip4, "nosuch.lab")
    assert proc.returncode == 1 and "nosuch.lab: no such name" in proc.stderr
    proc = resolve(lab.client, "-4", "--nameserver", dns.ip4, "v6only.lab")
    assert proc.returncode == 1 and "has no IPv4 address" in proc.stderr


API_SCRIPT = r"""
import json, sys
from aarp.config import parse
from aarp.resolver import (AARPError, NoAnswer, NotResolvable, resolve, resolve_or_same)
cfg = parse("anycast = fd00:aa::/64, 10.255.0.0/24\ntimeout_ms = 200\nretries = 0\n"
            "key = " + sys.argv[1] + "\nkey_id = 5\nfailure_ttl = 30")
out = {}
first = resolve("fd00:aa::1", cfg)
again = resolve("fd00:aa::1", cfg)
out["first"] = first.to_dict(); out["again_cached"] = again.from_cache
out["v4"] = resolve_or_same("10.255.0.1", cfg)
out["outside"] = resolve_or_same("fd00:2:1::2", cfg)
try:
    resolve("fd00:aa::99", cfg)
except NoAnswer as exc:
    out["noanswer"] = [exc.address, exc.from_cache]
try:
    resolve("fd00:aa::99", cfg)
except AARPError as exc:
    out["noanswer_cached"] = exc.from_cache
try:
    resolve("fd00:2:1::2", cfg)
except NotResolvable as exc:
    out["notresolvable"] = exc.reason
out["fail_open"] = resolve_or_same("fd00:aa::98", cfg)
print(json.dumps(out))
"""


def test_python_api(lab: AnycastLab) -> None:
    proc = lab.client.run([PY, "-c", API_SCRIPT, KEY], check=False, timeout=30, env=ENV)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    s1 = lab.server(1)
    assert out["first"]["unicast"] == s1.ip6 and out["first"]["verification"] == "tag"
    assert out["first"]["from_cache"] is False and out["again_cached"] is True
    assert out["v4"] == s1.ip4 and out["outside"] == s1.ip6
    assert out["noanswer"] == ["fd00:aa::99", False] and out["noanswer_cached"] is True
    assert "no AARP responder" in out["notresolvable"]
    assert out["fail_open"] == "fd00:aa::98"


def test_responder_stops_cleanly_and_reports(lab: AnycastLab) -> None:
    s = lab.server(2)
    proc = s.popen([PY, "-m", "aarp.cli.responder", "--anycast", AA6, "--no-icmp", "--port",
                    "4447", "--status"], env=ENV, text=True)
    wait_port(s, 4447, "udp")
    lab.move(2)
    assert resolve(lab.client, "--method", "udp", "--port", "4447", AA6).returncode == 0
    os.killpg(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    status = json.loads(out)
    assert status["counters"]["answered"] == 1 and status["unicast6"] == s.ip6
    assert "Traceback" not in err
