"""python -m relay: the same as the anytun-relay command."""

import sys

from relay.main import main

sys.exit(main())
