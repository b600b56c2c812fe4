"""The Sentinel form of the sync URL: parsing (and its one-line errors), and a node that follows
a real failover (redis-sentinel promotes the replica after the primary is killed)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest
import redis

from relay.cluster.redis_backend import RedisBackend, RedisOptions, _redact
from relay.cluster.redis_url import SentinelUrl, parse_sentinel
from tests.cluster_redis import SentinelSet
from tests.conftest import require_program
from tests.unit.test_cluster_redis import Node, until


@pytest.mark.parametrize(("url", "want"), [
    ("redis+sentinel://10.0.0.1:26380,10.0.0.2/mymaster",
     SentinelUrl((("10.0.0.1", 26380), ("10.0.0.2", 26379)), "mymaster")),
    ("redis+sentinel://:secret@[fd00::1]:5,sentinel-b/m/3/",
     SentinelUrl((("fd00::1", 5), ("sentinel-b", 26379)), "m", 3, "secret")),
])
def test_sentinel_urls_parse(url: str, want: SentinelUrl) -> None:
    assert parse_sentinel(url) == want
    RedisOptions(url).validate()


@pytest.mark.parametrize(("url", "words"), [
    ("redis+sentinel:///m", "names no Sentinel"),
    ("redis+sentinel://a:0/m", "bad port"),
    ("redis+sentinel://a:70000/m", "bad port"),
    ("redis+sentinel://a:x/m", "bad port"),
    ("redis+sentinel://a:/m", "empty port"),
    ("redis+sentinel://a", "names no master"),
    ("redis+sentinel://a/", "names no master"),
    ("redis+sentinel://a,,b/m", "is not HOST[:PORT]"),
    ("redis+sentinel://[::1/m", "closing ]"),
    ("redis+sentinel://[nothex]:1/m", "not an IPv6 address"),
    ("redis+sentinel://a/m/x", "database"),
    ("redis+sentinel://a/m/1/2", "/MASTER[/DB]"),
    ("redis+sentinel://a/m b", "master name"),
    ("redis+sentinel://a,a/m", "twice"),
    ("redis+sentinel://a/m?db=1", "no query"),
])
def test_bad_sentinel_urls_are_one_line_errors(url: str, words: str) -> None:
    with pytest.raises(ValueError) as err:
        RedisBackend(RedisOptions(url), "a")
    text = str(err.value)
    assert words in text and "\n" not in text and url in text


def test_tls_files_with_sentinel_are_refused() -> None:
    with pytest.raises(ValueError, match="not rediss"):
        RedisOptions("redis+sentinel://a/m", tls_ca="/ca.pem").validate()


def test_password_is_redacted_in_sentinel_urls() -> None:
    assert _redact("redis+sentinel://:pw@a:1,b:2/m") == "redis+sentinel://:***@a:1,b:2/m"


@pytest.fixture
def sentinels() -> Iterator[SentinelSet]:
    s = SentinelSet(require_program("redis-server"), require_program("redis-sentinel")).start()
    yield s
    s.stop()


def test_node_follows_the_new_primary_after_a_failover(sentinels: SentinelSet) -> None:
    async def main() -> None:
        a = await Node(sentinels.url, "a").start()
        old, new = sentinels.primary, sentinels.replica
        await until(lambda: a.backend.connected)
        assert a.backend.status()["primary"] == f"127.0.0.1:{old.port}"
        a.put("route", "p1", {"mux": 1})
        await until(lambda: old.client().hexists("anytun:rec:route", "p1"))
        alloc = a.backend.port_allocator(30000, 30998)
        first = alloc.allocate_pair()
        os.killpg(old.proc.pid, signal.SIGKILL)     # the primary dies
        await until(lambda: a.backend.status()["primary"] == f"127.0.0.1:{new.port}"
                    and a.backend.connected, 20)
        assert sentinels.current() == new.port
        a.put("route", "p2", {"mux": 2})
        await until(lambda: new.client().hexists("anytun:rec:route", "p2"))
        assert new.client().hexists("anytun:rec:route", "p1")   # replicated before the kill
        # the port pool follows too: its blocks are on the new primary
        await asyncio.to_thread(lambda: [alloc.allocate_pair() for _ in range(40)])
        assert new.client().hgetall("anytun:ports:30000-30998")
        assert first not in alloc._free
        alloc.close()
        await a.backend.stop()
    asyncio.run(main())


def test_node_follows_a_switchover_announced_by_sentinel(sentinels: SentinelSet) -> None:
    """SENTINEL FAILOVER demotes a primary that stays up: the node's links to it need not
    break, so the node must act on the Sentinel's +switch-master announcement."""
    async def main() -> None:
        a = await Node(sentinels.url, "a", resync_interval=60).start()
        old, new = sentinels.primary, sentinels.replica
        await until(lambda: a.backend.connected)
        assert a.backend.status()["primary"] == f"127.0.0.1:{old.port}"
        alloc = a.backend.port_allocator(30000, 30998)
        alloc.allocate_pair()                        # block 0, leased on the old primary
        await until(lambda: new.client().hexists("anytun:ports:30000-30998", "0"))
        await asyncio.sleep(0.5)      # the watcher is subscribed to the Sentinel by now
        sentinel = redis.Redis(port=sentinels.sentinel_port)
        sentinel.execute_command("SENTINEL", "FAILOVER", sentinels.name)
        await until(lambda: a.backend.status()["primary"] == f"127.0.0.1:{new.port}"
                    and a.backend.connected, 30)
        st = a.backend.status()
        assert st["primaries_followed"] == 1, st    # by the announcement, not a broken link
        a.put("route", "p3", {"mux": 3})
        await until(lambda: new.client().hexists("anytun:rec:route", "p3"))
        # the port pool leases its blocks on the new primary, not on the demoted one (which
        # would take them until Sentinel reconfigures it, and then lose them)
        await asyncio.to_thread(lambda: [alloc.allocate_pair() for _ in range(40)])
        leased = new.client().hgetall("anytun:ports:30000-30998")
        assert len(leased) == 3 and set(leased.values()) == {b"a"}, leased
        alloc.close()
        assert old.ping()                            # the old primary is up, as a replica
        await a.backend.stop()
    asyncio.run(main())


@pytest.mark.parametrize(("url", "words"), [
    ("redis+sentinel://127.0.0.1:26379/", "names no master"),
    ("redis+sentinel://127.0.0.1:99999/m", "bad port"),
    ("redis+sentinel://h/m", "--rtp-ports"),   # a good URL: the next mistake is reported
])
def test_the_command_line_reports_a_bad_sentinel_url_in_one_line(url: str, words: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "relay", "--rtpproxy", "udp:127.0.0.1:22299",
                           "--rtp-address", "127.0.0.1", "--rtp-ports",
                           "3000" if "--rtp" in words else "30000-30099", "--sync", url],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert words in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


@pytest.mark.parametrize(("url", "words"), [
    ("http://x", "use redis://host:port"),
    ("redis+sentinel://10.0.5.1:26379,10.0.5.2/", "names no master"),
])
def test_check_config_refuses_a_bad_sync_url(tmp_path, url: str, words: str) -> None:
    conf = tmp_path / "node.toml"
    conf.write_text('[relay]\nrtpproxy = ["udp:127.0.0.1:22222"]\nrtp_address = ["192.0.2.1"]\n'
                    f'rtp_ports = "30000-30999"\n\n[cluster]\nsync = "{url}"\n')
    proc = subprocess.run([sys.executable, "-m", "relay", "check-config", str(conf)],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "[cluster].sync" in proc.stderr and words in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    good = conf.read_text().replace(url, "redis+sentinel://10.0.5.1:26379,10.0.5.2/anytun")
    conf.write_text(good)
    ok = subprocess.run([sys.executable, "-m", "relay", "check-config", str(conf)],
                        capture_output=True, text=True, timeout=30)
    assert ok.returncode == 0 and "cluster: backend redis" in ok.stdout, ok.stderr
