"""The chaos scenarios of bench.chaos in a short form (Redis down 3 s, a 3 s partition): a
two-node cluster keeps a TCP stream through the tunnel intact with no byte lost, keeps its relay
calls, carries the traffic on node 2 when the route moves, and is whole again afterwards; with
Sentinel, the nodes follow the promoted replica (primary killed, or SENTINEL FAILOVER)."""

from __future__ import annotations

import os

import pytest

from bench import chaos
from tests.conftest import require, require_program

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("chaos")]

SHORT = chaos.Options(redis_down=3.0, partition=3.0, lead=2.0, tail=3.0, node_down=2.0,
                      failover=6.0, skew_step=1.0)


@pytest.mark.parametrize("name", chaos.SCENARIOS)
def test_scenario_loses_no_byte_and_recovers(name: str) -> None:
    require(os.geteuid() == 0, "root (CAP_NET_ADMIN) for network namespaces")
    for program in ("uanytun", "redis-server", "redis-cli", "nft"):
        require_program(program)
    if name in ("sentinel", "switchover"):
        require_program("redis-sentinel")
    if name == "skew":
        require(not chaos.missing_programs("skew"), "libfaketime (Debian faketime)")
    res = chaos.run_scenario(name, SHORT)
    print(res.row(), *res.notes, sep="\n")
    assert not res.error, res.error
    assert res.moved, "the route moves did not bring traffic to node 2"
    assert res.bytes_planned > 0 and res.bytes_lost == 0 and res.intact, res.row()
    assert res.calls == 2 and res.calls_kept == 2, res.notes
    assert res.rtp_sent > 1000 and res.rtp_lost <= 10, res.row()   # UDP: in flight at a kill
    assert res.recovered, res.notes
    # a few pings may fall between a route move and the other node's first reply
    assert res.pings_sent > 100 and res.pings_lost <= 5, res.row()
    if name in ("sentinel", "switchover"):   # every process is on the promoted replica
        assert res.primary == f"10.3.2.2:{chaos.REDIS_PORT}", res.notes
    if name == "skew":
        assert res.clock_offset is not None and abs(res.clock_offset - chaos.SKEW) < 1.0


def test_command_line_mistakes_are_one_line_errors(capsys: pytest.CaptureFixture) -> None:
    for argv, words in ((["--only", "nope"], "no such scenario"),
                        (["--redis-down", "0"], "--redis-down"),
                        (["--repeat", "0"], "--repeat")):
        with pytest.raises(SystemExit) as exc:
            chaos.parse_args(argv)
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert words in err and "Traceback" not in err
    names, opts, repeat = chaos.parse_args(["--only", "kill,skew", "--redis-down", "4"])
    assert names == ["kill", "skew"] and opts.redis_down == 4 and repeat == 1
