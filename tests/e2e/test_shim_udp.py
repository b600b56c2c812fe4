"""Datagram clients through libaarp.so: dig, dnspython (which checks the reply's source), a
connected-UDP client, and every hooked datagram call from C. Queries go to the server's unicast
address; replies are shown as coming from the anycast address the program asked for."""

from __future__ import annotations

import sys

import pytest

from lab import AA4, AA6, AK6, AnycastLab
from lab.services import wait_port
from tests.c.support import (
    WHOAMI_PORT,
    build,
    log_lines,
    preloaded,
    start_responders,
    start_whoami,
)
from tests.conftest import require_program

pytestmark = pytest.mark.e2e


def _dnsmasq(lab: AnycastLab) -> None:
    """A DNS server on every server; TXT who.test names the server that answered."""
    dnsmasq = require_program("dnsmasq")
    for node in lab.servers:
        node.popen([dnsmasq, "--keep-in-foreground", "--no-resolv", "--no-hosts",
                    "--conf-file=/dev/null", "--pid-file=", "--port=53", "--user=root",
                    f"--txt-record=who.test,{node.name}"])
    for node in lab.servers:
        wait_port(node, 53, "udp")


DNS_CLIENTS = r"""
import socket, sys
import dns.message, dns.query
aa = sys.argv[1]
q = dns.message.make_query("who.test", "TXT")
# dnspython refuses a reply whose source is not the server it asked (UnexpectedSource)
print("unconnected", dns.query.udp(q, aa, timeout=3).answer[0][0].strings[0].decode())
fam = socket.AF_INET6 if ":" in aa else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
s.settimeout(3)
s.connect((aa, 53))
s.send(q.to_wire())
reply = dns.message.from_wire(s.recv(4096))
print("connected", reply.answer[0][0].strings[0].decode(), s.getpeername()[0])
"""


def test_dns_clients_through_the_library(lab: AnycastLab) -> None:
    dig = require_program("dig")
    _dnsmasq(lab)
    start_responders(lab)
    for aa in (AA6, AA4):
        out = lab.client.run(preloaded([dig, f"@{aa}", "who.test", "TXT", "+short", "+time=3",
                                        "+tries=1"], AARP_LOG="debug"), check=False)
        assert out.returncode == 0 and out.stdout.strip() == '"s1"', out.stdout + out.stderr
        ua = lab.server(1).ip6 if ":" in aa else lab.server(1).ip4
        assert any(f"{aa} -> {ua}" in ln for ln in log_lines(out.stderr)), out.stderr
        out = lab.client.run(preloaded([sys.executable, "-c", DNS_CLIENTS, aa],
                                       AARP_LOG="debug"), check=False)
        assert out.returncode == 0, out.stderr
        assert out.stdout.split("\n")[:2] == ["unconnected s1", f"connected s1 {aa}"], out.stdout
        assert sum(f"-> {ua}" in ln for ln in log_lines(out.stderr)) == 2, out.stderr
    # After the route moves, a new program resolves afresh and is served by s2.
    lab.move(2)
    out = lab.client.run(preloaded([dig, f"@{AA6}", "who.test", "TXT", "+short", "+time=3",
                                    "+tries=1"]), check=False)
    assert out.stdout.strip() == '"s2"', out.stdout + out.stderr


@pytest.mark.parametrize("aa", [AA6, AA4, f"::ffff:{AA4}", AK6])
def test_every_datagram_call_maps_replies_back(lab: AnycastLab, aa: str) -> None:
    """sendto/recvfrom, sendmsg/recvmsg, sendmmsg/recvmmsg, connect/getpeername from C."""
    start_whoami(lab)
    if aa != AK6:
        start_responders(lab)
    prog = build("udpcalls")
    out = lab.client.run(preloaded([str(prog), aa, str(WHOAMI_PORT), "s1"],
                                   AARP_LOG="debug"), check=False)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stdout + out.stderr
    lines = log_lines(out.stderr)
    for call in ("sendto", "sendmsg", "sendmmsg", "connect"):
        assert any(ln.split(": ", 1)[1].startswith(f"{call} fd") and " -> " in ln
                   for ln in lines), f"no rewrite logged for {call}: {out.stderr}"
