"""The lab itself: anycast route moves are real, and they break TCP to the anycast address."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from lab import AA4, AA6, AK6, AnycastLab, Node, netns
from lab.services import make_blob, serve_http

pytestmark = pytest.mark.e2e


def ping_source_from(node: Node, dest: str) -> str:
    out = node.run(["ping", "-c", "1", "-W", "2", "-n", dest]).stdout
    line = next(ln for ln in out.splitlines() if "bytes from" in ln)
    return line.split("from ")[1].split(": ")[0]


def ping_source(lab: AnycastLab, dest: str) -> str:
    return ping_source_from(lab.client, dest)


def test_kernel_anycast_reply_source_follows_route(lab: AnycastLab) -> None:
    assert ping_source(lab, AK6) == lab.server(1).ip6
    lab.move(2)
    assert ping_source(lab, AK6) == lab.server(2).ip6
    lab.move(1)
    assert ping_source(lab, AK6) == lab.server(1).ip6


def test_per_client_route_moves_only_that_client(lab_factory) -> None:
    lab = lab_factory(clients=2)
    lab.move(2, client=2)
    assert ping_source_from(lab.clients[0], AK6) == lab.server(1).ip6
    assert ping_source_from(lab.clients[1], AK6) == lab.server(2).ip6
    lab.move(2)  # everybody to s2, overrides dropped
    lab.move(1)
    assert ping_source_from(lab.clients[1], AK6) == lab.server(1).ip6


def test_bgp_style_anycast_served_by_the_routed_server(lab: AnycastLab, tmp_path: Path) -> None:
    for node in lab.servers:
        d = tmp_path / node.name
        d.mkdir()
        (d / "who").write_text(node.name)
        serve_http(node, d)
    for dest in (f"[{AA6}]", AA4):
        lab.move(1)
        assert lab.client.run(["curl", "-sf", f"http://{dest}/who"]).stdout == "s1"
        lab.move(2)
        assert lab.client.run(["curl", "-sf", f"http://{dest}/who"]).stdout == "s2"


def _download_across_move(lab: AnycastLab, url: str, out: Path) -> int:
    proc = lab.client.popen(["curl", "-sS", "-g", "--max-time", "60", "-o", str(out), url])
    time.sleep(1.5)
    assert proc.poll() is None, "the download ended before the route move; rate limit too high"
    lab.move(2)
    proc.wait(90)
    return proc.returncode


def test_route_move_breaks_anycast_download_but_not_unicast(lab: AnycastLab,
                                                            tmp_path: Path) -> None:
    size = 2_000_000
    for node in lab.servers:
        d = tmp_path / node.name
        make_blob(d / "big", size)
        serve_http(node, d)
    lab.limit(lab.client, "4mbit")

    broken = _download_across_move(lab, f"http://[{AA6}]/big", tmp_path / "any")
    assert broken != 0, "a TCP download to the anycast address survived a route move"

    lab.move(1)
    ok = _download_across_move(lab, f"http://[{lab.server(1).ip6}]/big", tmp_path / "uni")
    assert ok == 0
    assert (tmp_path / "uni").read_bytes() == (tmp_path / "s1" / "big").read_bytes()


def test_namespaces_are_deleted_also_on_failure() -> None:
    with pytest.raises(RuntimeError), AnycastLab(servers=1, tag="fail") as lab:
        names = [h.ns for h in lab.ns.hosts.values()]
        lab.client.popen(["sleep", "600"])
        raise RuntimeError("boom")
    assert not set(names) & set(netns.list_namespaces())
