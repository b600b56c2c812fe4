"""`python -m bench.relay_c_media ARGS`: anytun-relay with relay mode's C media path.

relay/rtpproxy/server.py builds its media engine as `MediaEngine(...)`; until it asks
relay.fastpath.rtp.media_engine(...) instead (a one-line hook), the benchmark runs the daemon
through this launcher, which makes that substitution and changes nothing else.
"""

from __future__ import annotations

import sys

import relay.rtpproxy.server as server
from relay.cli import main
from relay.fastpath.rtp import media_engine

server.MediaEngine = media_engine  # type: ignore[misc,assignment]

if __name__ == "__main__":
    sys.exit(main())
