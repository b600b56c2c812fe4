"""ExaBGP's text API and the check loop that ExaBGP runs as a `process`.

ExaBGP starts the process, reads commands from its stdout (`announce route P next-hop self`,
`withdraw route P next-hop self`) and writes acknowledgements to its stdin. The loop runs the
checks every `interval`, feeds the combined result to the dampener and prints the commands
for every prefix when the dampener says so. It withdraws once at start (a previous instance
may have announced for a node that is unhealthy now) and when it stops.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import TextIO

from relay.announce.checks import Check, CheckResult, combine
from relay.announce.dampen import Action, Dampener, Health

log = logging.getLogger("anytun-relay.exabgp")


def route_lines(action: Action, prefixes: Sequence[str], attributes: str = "") -> list[str]:
    """ExaBGP commands announcing or withdrawing every prefix (pure)."""
    extra = f" {attributes}" if attributes and action is Action.ANNOUNCE else ""
    return [f"{action.value} route {p} next-hop self{extra}" for p in prefixes]


class Announcer:
    def __init__(self, checks: Sequence[Check], dampener: Dampener, prefixes: Sequence[str],
                 out: TextIO, *, attributes: str = "", interval: float = 1.0,
                 timeout: float = 1.0) -> None:
        self.checks, self.dampener, self.prefixes = list(checks), dampener, list(prefixes)
        self.out, self.attributes = out, attributes
        self.interval, self.timeout = interval, timeout
        self.stopping = threading.Event()
        self.last: CheckResult | None = None

    def emit(self, action: Action) -> None:
        for line in route_lines(action, self.prefixes, self.attributes):
            self.out.write(line + "\n")
        self.out.flush()

    def step(self) -> Action | None:
        result = combine([c.run(self.timeout) for c in self.checks])
        if self.last is None or result.health is not self.last.health:
            log.log(logging.WARNING if result.health is not Health.UP else logging.INFO,
                    "health %s%s", result.health.value,
                    f": {result.reason}" if result.reason else "")
        self.last = result
        action = self.dampener.feed(result.health)
        if action is not None:
            log.warning("%s %s", action.value, ", ".join(self.prefixes))
            self.emit(action)
        return action

    def run(self) -> None:
        """Until stop() or a closed pipe to ExaBGP."""
        try:
            self.emit(Action.WITHDRAW)
            while not self.stopping.is_set():
                started = time.monotonic()
                self.step()
                self.stopping.wait(max(0.0, self.interval - (time.monotonic() - started)))
            self.emit(Action.WITHDRAW)
        except (BrokenPipeError, ValueError):   # ExaBGP went away (ValueError: closed file)
            log.info("ExaBGP closed the pipe; stopping")

    def stop(self) -> None:
        self.stopping.set()

    def follow(self, inp: TextIO) -> None:
        """Read ExaBGP's acknowledgements; stop when it closes our stdin or shuts down."""
        for line in inp:
            word = line.strip()
            if word == "shutdown":
                break
            if word.startswith("error"):
                log.error("ExaBGP refused a command: %s", word)
        self.stop()
