"""The soak in CI: `python -m bench.soak --minutes 2` (a tunnel, a server-mode hub with
churning clients and Redis sync, relay-mode calls) must end with flat fds, flat Redis keys and
live records, a bounded RSS drift, and every kind of traffic working. The only long case of
the suite (two minutes, as the soak's CI smoke)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from relay import fastpath
from tests.conftest import require, require_program

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("test_soak")]

ROOT = Path(__file__).resolve().parents[2]
# A short run extrapolates a few hundred kB of allocator noise to many MiB per hour: the CI
# bound only catches a gross leak; `make soak` (30 minutes) holds the 1 MiB/h bound.
RSS_MIB_PER_HOUR = 64


def test_two_minute_soak_stays_flat(tmp_path: Path) -> None:
    require(os.geteuid() == 0, "root (CAP_NET_ADMIN) for network namespaces")
    require(fastpath.available(), f"the C fast path ({fastpath.unavailable_reason()})")
    for prog in ("uanytun", "redis-server", "redis-cli"):
        require_program(prog)
    out = tmp_path / "soak.json"
    proc = subprocess.run([sys.executable, "-m", "bench.soak", "--minutes", "2", "--warmup",
                           "30", "--rss-limit", str(RSS_MIB_PER_HOUR), "--json", str(out)],
                          cwd=str(ROOT), capture_output=True, text=True, timeout=400)
    print(proc.stdout, proc.stderr)
    assert out.exists(), proc.stderr
    result = json.loads(out.read_text())
    verdicts = {(v["daemon"], v["metric"]): v for v in result["verdicts"]}
    for daemon in ("tunnel", "hub", "relay"):
        assert verdicts[(daemon, "fds")]["ok"], verdicts[(daemon, "fds")]
        assert verdicts[(daemon, "rss")]["drift_per_hour"] < RSS_MIB_PER_HOUR * 2**20
        assert verdicts[(daemon, "fds")]["samples"] >= 10
    for daemon in ("hub", "relay"):
        for metric in ("keys", "records"):
            assert verdicts[(daemon, metric)]["ok"], verdicts[(daemon, metric)]
    # the churn really happened: reloads, reconnects, roaming, calls with media, transfers
    for name, counts in result["traffic"].items():
        assert counts["ok"] >= 10 and counts["failed"] <= counts["ok"] // 10, (name, counts)
    assert result["failures"] == [], result["failures"]
    assert proc.returncode == 0, proc.stderr
