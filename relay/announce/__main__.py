"""`python -m relay.announce` is `anytun-relay exabgp`."""

import sys

from relay.announce.cli import main

sys.exit(main())
