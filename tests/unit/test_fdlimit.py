"""raise_open_files: the soft open-file limit goes up as far as the hard one allows, never down."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import resource, sys
from relay.runtime.fdlimit import raise_open_files
resource.setrlimit(resource.RLIMIT_NOFILE, (100, 300))
print(raise_open_files(200), raise_open_files(50), raise_open_files(10_000),
      resource.getrlimit(resource.RLIMIT_NOFILE))
"""


def test_raises_to_what_is_needed_then_stops_at_the_hard_limit() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                         check=True, timeout=30).stdout.split(maxsplit=3)
    assert out[:3] == ["200", "200", "300"]
    assert out[3].strip() == "(300, 300)"
