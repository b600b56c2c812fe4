"""The anytun-relay program (`anytun-relay ...`, `python -m relay`): relay.cli's command line,
started so that it loads only what the configured modes use.

Python's OpenSSL bindings cost a point-to-point node about 3.5 MiB of its ~20: libcrypto's
relocations and OpenSSL 3's provider tables, which `import hashlib` builds at once. A node
needs them only for TLS, which only the cluster can use (asyncio and redis import the ssl
module whenever they load), and for the Python data plane's per-packet HMAC. Elsewhere the
program runs without them: no TLS support, and hashlib on Python's own SHA code, which
hashes the few things hashed outside the packet path (passphrases, AARP tags) the same.
The C data plane needs neither (relay/fastpath/cipher.h). Everything else a mode needs is
imported by that mode (relay.node).
"""

from __future__ import annotations

import sys


def _option(argv: list[str], name: str) -> str | None:
    """The value of `--name VALUE` or `--name=VALUE` (the last one), or None."""
    value = None
    for i, a in enumerate(argv):
        if a == name and i + 1 < len(argv):
            value = argv[i + 1]
        elif a.startswith(name + "="):
            value = a[len(name) + 1:]
    return value


def _config(argv: list[str]) -> dict:
    """The --config file's tables, or {} (a file that cannot be read is reported later, by
    relay.configfile, with its line)."""
    path = _option(argv, "--config")
    if path is None:
        return {}
    import tomllib
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except (OSError, ValueError):
        return {}


def _table(config: dict, name: str) -> dict:
    value = config.get(name)
    return value if isinstance(value, dict) else {}


def needs_tls(argv: list[str], config: dict | None = None) -> bool:
    """A cluster is configured (--sync, or sync in the file's [cluster])."""
    config = _config(argv) if config is None else config
    return _option(argv, "--sync") is not None or "sync" in _table(config, "cluster")


def needs_openssl_digests(argv: list[str], config: dict | None = None) -> bool:
    """TLS may be used, or the Python data plane was chosen (--dataplane python, or
    dataplane = "python" in the file's [tunnel] or [node])."""
    config = _config(argv) if config is None else config
    planes = {_option(argv, "--dataplane"), _table(config, "tunnel").get("dataplane"),
              _table(config, "node").get("dataplane")}
    return needs_tls(argv, config) or "python" in planes


def keep_openssl_out(argv: list[str]) -> None:
    """Before anything else is imported: block the ssl and _hashlib modules the command line
    (and its --config file) will not need."""
    config = _config(argv)
    if not needs_tls(argv, config) and "ssl" not in sys.modules:
        sys.modules["ssl"] = None  # type: ignore[assignment]  # asyncio then skips TLS
    if not needs_openssl_digests(argv, config) and "_hashlib" not in sys.modules:
        sys.modules["_hashlib"] = None  # type: ignore[assignment]  # hashlib: Python's SHA


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    keep_openssl_out(argv)
    from relay.cli import main as cli_main
    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
