"""Connection keys inside shared records: sealed with the cluster key, or not shared at all.

The native backends never carry a master key or salt in clear. Without a cluster key a node
publishes connections without their keys (every node then needs the connection in its own
configuration, the usual deployment: one config file for all nodes); with a cluster key the
key and salt travel sealed with AES-256-GCM, bound to the record they belong to, so a record
copied under another MUX does not open.
"""

from __future__ import annotations

import base64
import hashlib
import os
import string
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from relay.runtime.errors import RelayError

PREFIX = "gcm1:"


class SecretError(RelayError, ValueError):
    """A sealed value that does not open (wrong cluster key, tampered or malformed)."""


class ClusterKey:
    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("the cluster key is 32 bytes")
        self._aead = AESGCM(key)
        self.fingerprint = hashlib.sha256(b"anytun-relay cluster key" + key).hexdigest()[:16]

    @classmethod
    def from_text(cls, text: str) -> ClusterKey:
        """64 hex digits, or a passphrase of at least 16 characters (hashed)."""
        text = text.strip()
        if len(text) == 64 and all(c in string.hexdigits for c in text):
            return cls(bytes.fromhex(text))
        if len(text) < 16:
            raise ValueError("the cluster key must be 64 hex digits or a passphrase of at "
                             "least 16 characters")
        return cls(hashlib.sha256(b"anytun-relay cluster key:" + text.encode()).digest())

    @classmethod
    def from_file(cls, path: str | Path) -> ClusterKey:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ValueError(f"cannot read the cluster key file {path}: {exc.strerror}") from None
        return cls.from_text(text)

    def seal(self, value: bytes, context: str) -> str:
        nonce = os.urandom(12)
        ct = self._aead.encrypt(nonce, value, context.encode())
        return PREFIX + base64.b64encode(nonce + ct).decode()

    def open(self, sealed: str, context: str) -> bytes:
        if not isinstance(sealed, str) or not sealed.startswith(PREFIX):
            raise SecretError("not a sealed value")
        try:
            raw = base64.b64decode(sealed[len(PREFIX):], validate=True)
        except ValueError:
            raise SecretError("sealed value is not base64") from None
        if len(raw) < 12 + 16:
            raise SecretError("sealed value too short")
        try:
            return self._aead.decrypt(raw[:12], raw[12:], context.encode())
        except InvalidTag:
            raise SecretError("sealed value does not open with this cluster key") from None
