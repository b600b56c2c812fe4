"""anytun's -L <target>:<level>[,<params>] logging and -U, on Python's logging, in the one
format of the distribution (aarp.ops.logfmt; journald's variant under systemd).

Levels as anytun numbers them: 0 off, 1 error, 2 warning, 3 notice, 4 info, 5 debug.
Targets: syslog[,name[,facility]], file[,path], stdout, stderr. A target that cannot work
(no /dev/log, a file that cannot be opened) is an error, never a silent fallback.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass

from aarp.ops import logfmt
from aarp.ops.logfmt import NOTICE, LogTargetError
from relay.runtime.errors import ConfigError

LEVELS = {0: None, 1: logging.ERROR, 2: logging.WARNING, 3: NOTICE, 4: logging.INFO,
          5: logging.DEBUG}
ROOT = "anytun-relay"
__all__ = ["LEVELS", "NOTICE", "LogSpecError", "LogTarget", "configure", "default_targets"]


class LogSpecError(ConfigError):
    """A -L target that cannot be used."""


@dataclass(frozen=True)
class LogTarget:
    target: str
    level: int
    params: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> LogTarget:
        target, sep, rest = text.partition(":")
        target = target.strip().lower()
        if target not in ("syslog", "file", "stdout", "stderr"):
            raise LogSpecError(f"-L {text!r}: unknown target {target!r}; use syslog, file, "
                               "stdout or stderr")
        parts = rest.split(",") if sep else ["3"]
        try:
            level = int(parts[0])
        except ValueError:
            raise LogSpecError(f"-L {text!r}: the level must be a number 0..5") from None
        if level not in LEVELS:
            raise LogSpecError(f"-L {text!r}: the level must be 0..5, not {level}")
        return cls(target, level, tuple(p for p in parts[1:]))

    def __str__(self) -> str:
        return ":".join((self.target, ",".join((str(self.level), *self.params))))


def _handler(t: LogTarget) -> logging.Handler:
    try:
        if t.target in ("stdout", "stderr"):
            return logfmt.stream_handler(sys.stdout if t.target == "stdout" else sys.stderr)
        if t.target == "file":
            return logfmt.file_handler(t.params[0] if t.params else f"{ROOT}.log")
        return logfmt.syslog_handler(t.params[0] if t.params else ROOT,
                                     t.params[1] if len(t.params) > 1 else "daemon")
    except LogTargetError as exc:
        raise LogSpecError(f"-L {t}: {exc}") from None


def default_targets(foreground: bool) -> list[LogTarget]:
    """Without -L: the journal under systemd; else syslog (and stderr in the foreground).
    Without a syslog socket a daemon says on stderr, before it detaches, that it logs
    nowhere (anytun's command lines must keep working; a chosen -L syslog is an error)."""
    if logfmt.on_journal(sys.stderr):
        return [LogTarget("stderr", 3)]
    targets = [LogTarget("stderr", 3)] if foreground else []
    if os.path.exists(logfmt.DEVLOG):
        targets.append(LogTarget("syslog", 3, (ROOT, "daemon")))
    elif not foreground:
        print(f"anytun-relay: no syslog socket {logfmt.DEVLOG}: this daemon logs nowhere; "
              "give -L file:3,/var/log/anytun-relay.log (or -D for stderr)", file=sys.stderr)
    return targets


def configure(targets: list[LogTarget]) -> None:
    """Install one handler per target on the root logger (replacing earlier ones)."""
    logfmt.install([(_handler(t), LEVELS[t.level]) for t in targets
                    if LEVELS[t.level] is not None])
