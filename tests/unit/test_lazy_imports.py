"""A daemon loads only what its configured modes use: a point-to-point tunnel never imports
relay mode, the server assembly, the cluster (redis), the TOML reader, the Python SATP
crypto (cryptography), TLS or urllib (docs/performance.md: idle memory per mode)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

NEVER_FOR_A_PEER = ("cryptography", "redis", "ssl", "tomllib", "urllib.request", "dns",
                    "icmplib", "psutil", "relay.rtpproxy.server", "relay.cluster.service",
                    "relay.cluster.redis_backend", "relay.tunnel.server")

PROBE = """
import json, sys
from relay import main
argv = sys.argv[1:]
if not main.needs_tls(argv):
    sys.modules["ssl"] = None
from relay import cli, node
node.build(cli.settings_from_args(cli.build_parser().parse_args(argv)))
print(json.dumps(sorted(m for m in sys.modules if sys.modules[m] is not None)))
"""


def loaded(*argv: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    return set(json.loads(out.splitlines()[-1]))


def test_a_point_to_point_tunnel_loads_none_of_the_other_modes() -> None:
    mods = loaded("-r", "192.0.2.1", "-E", "secret", "-d", "tun9", "-n", "10.9.0.1/24")
    present = [m for m in NEVER_FOR_A_PEER if any(x == m or x.startswith(m + ".")
                                                  for x in mods)]
    assert not present, present


@pytest.mark.parametrize("argv", [["--sync", "redis://127.0.0.1:6379/0"]])
def test_tls_stays_available_when_the_cluster_may_need_it(argv: list[str]) -> None:
    from relay import main
    assert main.needs_tls(argv) and main.needs_tls(["--sync=rediss://h:6379"])
    assert not main.needs_tls(["-r", "192.0.2.1"])
