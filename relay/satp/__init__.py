"""SATP, the anytun wire protocol: keys, key derivation, seal/open and the replay window.

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
from relay.satp.keys import KeyError_, MasterKey, from_passphrase
from relay.satp.replay import ReplayGuard, Verdict
from relay.satp.suite import Suite, SuiteError

__all__ = ["HEADER_LEN", "PT_ETHERNET", "PT_IPV4", "PT_IPV6", "KeyDerivation", "KeyError_",
           "MasterKey", "OpenError", "Opened", "ReplayGuard", "Role", "SatpContext",
           "SessionKeys", "Suite", "SuiteError", "Verdict", "from_passphrase", "peek"]
