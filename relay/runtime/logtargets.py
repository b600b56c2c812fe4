"""anytun's -L <target>:<level>[,<params>] logging and -U, on Python's logging.

Levels as anytun numbers them: 0 off, 1 error, 2 warning, 3 notice, 4 info, 5 debug.
Targets: syslog[,name[,facility]], file[,path], stdout, stderr.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys
from dataclasses import dataclass

from relay.runtime.errors import ConfigError

# anytun's "notice" level, between INFO and WARNING: what an operator wants in syslog.
NOTICE = 25
logging.addLevelName(NOTICE, "NOTICE")
LEVELS = {0: None, 1: logging.ERROR, 2: logging.WARNING, 3: NOTICE, 4: logging.INFO,
          5: logging.DEBUG}
FORMAT = "%(asctime)s %(levelname)s: %(message)s"
ROOT = "anytun-relay"


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


def _handler(t: LogTarget) -> logging.Handler:
    fmt = logging.Formatter(FORMAT)
    if t.target in ("stdout", "stderr"):
        h: logging.Handler = logging.StreamHandler(sys.stdout if t.target == "stdout"
                                                   else sys.stderr)
    elif t.target == "file":
        path = t.params[0] if t.params else f"{ROOT}.log"
        try:
            h = logging.FileHandler(path)
        except OSError as exc:
            raise LogSpecError(f"-L file: cannot open {path}: {exc.strerror}") from None
    else:
        name = t.params[0] if t.params else ROOT
        facility = t.params[1] if len(t.params) > 1 else "daemon"
        fac = logging.handlers.SysLogHandler.facility_names.get(facility)
        if fac is None:
            raise LogSpecError(f"-L syslog: unknown facility {facility!r}")
        address = "/dev/log" if os.path.exists("/dev/log") else ("localhost", 514)
        h = logging.handlers.SysLogHandler(address=address, facility=fac)
        fmt = logging.Formatter(f"{name}[{os.getpid()}]: %(levelname)s: %(message)s")
    h.setFormatter(fmt)
    h.setLevel(LEVELS[t.level] or logging.CRITICAL + 10)
    return h


def configure(targets: list[LogTarget]) -> None:
    """Install one handler per target on the root logger (replacing earlier ones)."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    levels = [LEVELS[t.level] for t in targets if LEVELS[t.level] is not None]
    root.setLevel(min(levels) if levels else logging.CRITICAL + 10)
    if not targets:
        root.addHandler(logging.NullHandler())
    for t in targets:
        if LEVELS[t.level] is not None:
            root.addHandler(_handler(t))
