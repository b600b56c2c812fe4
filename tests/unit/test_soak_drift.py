"""The soak's pure parts: the least-squares drift, the verdicts and the command line."""

from __future__ import annotations

import pytest

from bench.drift import HOUR, MIB, Limit, after_warmup, judge, slope, table
from bench.soak import Counts, hub_config, parse_args, tombstone_bound, traffic_failures


def test_slope_of_a_line_and_of_noise_around_a_flat_value() -> None:
    assert slope([(t, 3.0 * t + 7) for t in range(10)]) == pytest.approx(3.0)
    assert slope([(t, 5.0 + (1 if t % 2 else -1)) for t in range(100)]) == pytest.approx(
        0.0, abs=0.001)
    assert slope([(1.0, 4.0)]) == 0.0 and slope([(1.0, 4.0), (1.0, 5.0)]) == 0.0


def test_after_warmup_drops_the_first_seconds() -> None:
    pts = [(t, 0.0) for t in (10.0, 20.0, 30.0, 40.0)]
    assert after_warmup(pts, 15) == pts[2:]
    assert after_warmup([], 5) == []


def test_one_fd_more_per_sample_is_a_trend_and_fails() -> None:
    pts = [(t * 5.0, 20.0 + (t // 3)) for t in range(12)]  # 20, 20, 20, 21, ...
    v = judge("hub", "fds", "fd", pts, Limit(window=1.0))
    assert not v.ok and "trend" in v.reason and v.per_hour > 0
    assert judge("hub", "fds", "fd", [(t, 20.0) for t in range(12)], Limit(window=1.0)).ok


def test_rss_drift_is_stated_per_hour() -> None:
    pts = [(t, 30 * MIB + t * (2 * MIB / HOUR)) for t in range(0, 1800, 10)]  # 2 MiB/h
    v = judge("relay", "rss", "B", pts, Limit(per_hour=1 * MIB))
    assert v.per_hour == pytest.approx(2 * MIB) and not v.ok
    assert "2.00 MiB/h > 1.00 MiB/h" in v.reason
    assert judge("relay", "rss", "B", pts, Limit(per_hour=3 * MIB)).ok
    assert "FAIL" in table([v]) and "relay" in table([v])


def test_tombstones_beyond_the_grace_bound_fail() -> None:
    """Ended calls are kept for the session grace (300 s): at 0.5 calls/s a cluster holds at
    most ~280 of them; one that keeps them for a day grows past that."""
    most = tombstone_bound(0.5)
    assert 0.5 * 300 * 1.5 < most < 0.5 * 300 * 2
    levelled = [(t, min(t, 450) * 0.5) for t in range(0, 1800, 10)]
    assert judge("relay", "tombstones", "rec", levelled, Limit(most=most)).ok
    kept = [(t, t * 0.5) for t in range(0, 1800, 10)]
    v = judge("relay", "tombstones", "rec", kept, Limit(most=most))
    assert not v.ok and "reached" in v.reason and "at most" in table([v])


def test_too_few_samples_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="at least 3"):
        judge("hub", "rss", "B", [(0.0, 1.0)], Limit())


@pytest.mark.parametrize("argv, message", [
    (["--minutes", "0"], "positive"), (["--minutes", "abc"], "a number"),
    (["--minutes", "nan"], "finite"), (["--minutes", "-3"], "positive"),
    (["--warmup", "-1"], "zero or more"), (["--minutes", "1", "--warmup", "60"], "no time"),
    (["--json", "/nonexistent/dir/x.json"], "does not exist"),
    (["--rss-limit", "inf"], "finite"),
])
def test_bad_options_are_one_line_errors(argv, message, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        parse_args(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_defaults_thirty_minutes_and_a_fifth_as_warmup() -> None:
    args = parse_args([])
    assert args.minutes == 30 and args.warmup == 300 and args.rss_limit == 1.0
    assert parse_args(["--minutes", "2"]).warmup == 24


def test_hub_config_churns_within_a_bounded_pool() -> None:
    seen = set()
    for cycle in range(40):
        text, muxes = hub_config(cycle)
        assert {1, 2} <= muxes and (3 in muxes) == (cycle % 2 == 0)
        assert text.count("[[connection]]") == len(muxes)
        seen |= muxes
    assert seen == {1, 2, 3, 10, 11, 12, 13}


def test_broken_traffic_fails_the_soak() -> None:
    good, bad = Counts(), Counts()
    for _ in range(10):
        good.add(True, "")
        bad.add(False, "no reply")
    assert traffic_failures({"calls": good}, {"sent": 10, "received": 10}) == []
    assert traffic_failures({"calls": bad}, {})[0].startswith("calls: 0/10")
    assert traffic_failures({"calls": good}, {"sent": 10, "received": 5})


def test_the_redis_state_script_counts_keys_live_records_and_tombstones() -> None:
    """STATE_LUA against a real Redis holding the backend's layout."""
    from bench.soak import STATE_LUA
    from tests.cluster_redis import RedisServer
    from tests.conftest import require_program

    srv = RedisServer(require_program("redis-server")).start()
    try:
        r = srv.client()
        r.hset("media:ord:session", mapping={"a": "0000000000000001 n1 0",
                                             "b": "0000000000000002 n1 1",
                                             "c": "0000000000000003 n2 1"})
        r.hset("media:rec:session", mapping={"a": "{}", "b": "{}", "c": "{}"})
        r.hset("media:rec:progress", mapping={"1@n1": "{}", "2@n1": "{}"})
        r.set("media:alive:n1", "1")
        r.hset("other:ord:session", mapping={"x": "0000000000000001 n1 1"})
        assert [int(x) for x in r.eval(STATE_LUA, 0, "media")] == [4, 3, 2]
        assert [int(x) for x in r.eval(STATE_LUA, 0, "nothing")] == [0, 0, 0]
    finally:
        srv.stop()
