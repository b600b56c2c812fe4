"""SATP, the anytun wire protocol, and the anytun archive format its control messages use.

    keys.py     master key and salt (-E passphrase, -K/-A hex)
    suite.py    the algorithm choices (-c, -a, -b, -k)
    kdf.py      key derivation (per-packet session key, salt, auth key)
    codec.py    seal and open datagrams
    replay.py   the receive replay window
    archive.py  anytun's Boost text archives: the sync protocol's and anytun-controld's messages

Pure code (no sockets, no clocks of its own); see docs/tunnel.md for the protocol summary.
"""

from relay.satp.codec import (
    HEADER_LEN,
    PT_ETHERNET,
    PT_IPV4,
    PT_IPV6,
    Opened,
    OpenError,
    SatpContext,
    peek,
)
from relay.satp.kdf import KeyDerivation, Role, SessionKeys
from relay.satp.keys import KeyMaterialError, MasterKey, from_passphrase
from relay.satp.replay import ReplayGuard, Verdict
from relay.satp.suite import Suite, SuiteError

__all__ = ["HEADER_LEN", "PT_ETHERNET", "PT_IPV4", "PT_IPV6", "KeyDerivation", "KeyMaterialError",
           "MasterKey", "OpenError", "Opened", "ReplayGuard", "Role", "SatpContext",
           "SessionKeys", "Suite", "SuiteError", "Verdict", "from_passphrase", "peek"]
