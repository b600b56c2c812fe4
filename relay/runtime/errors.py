"""The exceptions of anytun-relay. Every error the package raises on purpose is a RelayError, so
a caller can catch them all; ConfigError is the user's mistake (one line, exit status 2)."""

from __future__ import annotations


class RelayError(Exception):
    """Base of every error anytun-relay raises on purpose."""


class ConfigError(RelayError):
    """A user mistake in options or configuration: printed as one line, exit status 2."""
