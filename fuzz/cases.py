"""Fixed parameters that a harness and its initial inputs must agree on (the C harnesses keep the
same tables; keep them in step)."""

from __future__ import annotations

SECRET_KEY = bytes.fromhex("bde0eacd7162fef6a25fe97bf527a25b")  # -E secret, 128 bits
SECRET_SALT = bytes.fromhex("cd1ae84f75caaa474f3a663f05f4")
COUNT_KEY = bytes.fromhex("00112233445566778899aabbccddeeff"
                          "1032547698badcfe0123456789abcdef")
COUNT_SALT = bytes(range(1, 15))

# SATP configurations (fuzz/c/satp_open.c CONFIGS): the first input byte picks one.
# (cipher key length, kd key length, auth, tag length, master key, master salt); each
# appears twice, receiving as left (even index) and as right (odd index).
SATP_SUITES = (
    (16, 16, True, 10, SECRET_KEY, SECRET_SALT),
    (0, 0, False, 0, b"", b""),
    (16, 16, True, 10, COUNT_KEY[:16], COUNT_SALT),
    (16, 0, True, 10, b"", b""),
    (32, 32, True, 20, COUNT_KEY, COUNT_SALT),
    (32, 16, True, 4, COUNT_KEY[:16], COUNT_SALT),
    (0, 16, True, 10, COUNT_KEY[:16], COUNT_SALT),
    (24, 24, False, 0, COUNT_KEY[:24], COUNT_SALT),
)


def satp_config(index: int) -> tuple[tuple, str]:
    """(suite tuple, receiving role "left"/"right") for a first input byte."""
    suite = SATP_SUITES[(index % (2 * len(SATP_SUITES))) // 2]
    return suite, ("left", "right")[index % 2]


def satp_index(cipher: int, kd: int, auth: bool, tag: int, key: bytes, receiver: str) -> int:
    for i, (c, k, a, t, mk, _) in enumerate(SATP_SUITES):
        if (c, k, a, t) == (cipher, kd, auth, tag) and (not k or mk == key[:k]):
            return 2 * i + (receiver == "right")
    raise KeyError("no harness configuration for this suite")


# The replay harnesses: window sizes the first byte picks from.
REPLAY_SIZES = (0, 1, 2, 63, 64, 65, 1000, 1024, 4096, 1 << 20)


# The aarp config harnesses (fuzz/c/shim_env.c NAMES): a variable's first byte picks its name.
AARP_ENV_NAMES = ("AARP_ANYCAST", "AARP_TIMEOUT_MS", "AARP_METHOD", "AARP_PORT", "AARP_LOG",
                  "AARP_DISABLE", "AARP_CONF", "AARP_NONBLOCK_WAIT_MS", "AARP_HOST_CACHE",
                  "AARP_OTHER")
