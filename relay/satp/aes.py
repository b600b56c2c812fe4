"""AES for the Python SATP core, from the cryptography package imported on first use: a node
whose packets all run on the C data plane never loads it (its Rust extension alone keeps
about 6 MiB resident)."""

from __future__ import annotations

from typing import Any

_lib: tuple[Any, Any, Any] | None = None


def _load() -> tuple[Any, Any, Any]:
    global _lib
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    _lib = (Cipher, algorithms, modes)
    return _lib


def ecb(key: bytes) -> Any:
    """An AES-ECB encryptor under `key`."""
    cipher, algorithms, modes = _lib or _load()
    return cipher(algorithms.AES(key), modes.ECB()).encryptor()


def ctr(key: bytes, counter_block: bytes) -> Any:
    """An AES-CTR encryptor under `key` from the 16-byte initial counter block."""
    cipher, algorithms, modes = _lib or _load()
    return cipher(algorithms.AES(key), modes.CTR(counter_block)).encryptor()
