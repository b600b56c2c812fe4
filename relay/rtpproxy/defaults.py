"""Relay mode's defaults and choices that its command line states in --help: apart from the
settings and the session table, so that building the parser loads neither."""

from __future__ import annotations

DEFAULT_CONTROL_PORT = 22222
LATCH_POLICIES = ("ip", "any")   # how a party's real source is learned (sessions.admit)
