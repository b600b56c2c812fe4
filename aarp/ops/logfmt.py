"""One log format for every tool of the distribution, and its journald and syslog variants.

    stderr, file   2026-12-02 18:03:42.572 NOTICE anytun-relay.udp: listening on udp ...
    journald       <5>anytun-relay.udp: listening on udp ...   (journald adds time and pid)
    syslog         anytun-relay[812]: anytun-relay.udp: listening on udp ...

A stream handler turns into the journald variant by itself when the stream is the one systemd
connected to the journal ($JOURNAL_STREAM names its device and inode), so a daemon under
systemd logs each line once, with its priority and without a second timestamp.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from typing import TextIO

NOTICE = 25            # anytun's level between INFO and WARNING: what an operator wants to see
logging.addLevelName(NOTICE, "NOTICE")
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
DEVLOG = "/dev/log"
# syslog priorities: 2 crit, 3 err, 4 warning, 5 notice, 6 info, 7 debug
_PRIORITY = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (NOTICE, 5),
             (logging.INFO, 6))


class LogTargetError(ValueError):
    """A log target that cannot work here (one line for the user)."""


def priority(levelno: int) -> int:
    return next((p for lvl, p in _PRIORITY if levelno >= lvl), 7)


class Formatter(logging.Formatter):
    default_time_format = "%Y-%m-%d %H:%M:%S"
    default_msec_format = "%s.%03d"

    def __init__(self) -> None:
        super().__init__(FORMAT)


class JournalFormatter(logging.Formatter):
    """`<priority>logger: message`; journald reads the prefix and records time and pid."""

    def __init__(self) -> None:
        super().__init__("%(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return f"<{priority(record.levelno)}>{super().format(record)}"


def on_journal(stream: TextIO) -> bool:
    """Whether `stream` is the journal stream systemd gave this service."""
    ident = os.environ.get("JOURNAL_STREAM", "")
    dev, _, ino = ident.partition(":")
    if not dev.isdigit() or not ino.isdigit():
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))


def stream_handler(stream: TextIO | None = None) -> logging.Handler:
    stream = stream if stream is not None else sys.stderr
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JournalFormatter() if on_journal(stream) else Formatter())
    return handler


def file_handler(path: str) -> logging.Handler:
    """Raises LogTargetError when the file cannot be opened (its directory is created)."""
    try:
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, mode=0o755, exist_ok=True)
        handler = logging.FileHandler(path)
    except OSError as exc:
        raise LogTargetError(f"cannot open the log file {path}: {exc.strerror}") from None
    handler.setFormatter(Formatter())
    return handler


# syslog's facility codes (RFC 5424 table 1, with the names syslog.conf uses)
FACILITIES = {"kern": 0, "user": 1, "mail": 2, "daemon": 3, "auth": 4, "syslog": 5, "lpr": 6,
              "news": 7, "uucp": 8, "cron": 9, "authpriv": 10, "ftp": 11, "ntp": 12,
              "security": 13, "console": 14, "solaris-cron": 15,
              **{f"local{n}": 16 + n for n in range(8)}}
# by level name, a level of another name is a warning (as the standard library's handler has it)
_SYSLOG_PRIORITY = {"CRITICAL": 2, "ERROR": 3, "WARNING": 4, "NOTICE": 5, "INFO": 6, "DEBUG": 7}


class SyslogHandler(logging.Handler):
    """`<PRI>ident[pid]: logger: message` and a NUL to the local syslog socket, a datagram
    socket (a stream one where the daemon offers only that); one reconnect when a send fails,
    as when the syslog daemon restarted and bound a new socket. The standard library's handler
    would do the same but costs logging.handlers with pickle and queue in every daemon."""

    def __init__(self, address: str, facility: int) -> None:
        super().__init__()
        self.address = address
        self.facility = facility
        self.socktype: int | None = None     # found at the first connect, then kept
        self.sock = self._connect()

    def _connect(self) -> socket.socket:
        try:
            return self._connect_as(self.socktype or socket.SOCK_DGRAM)
        except OSError:
            if self.socktype:
                raise
            return self._connect_as(socket.SOCK_STREAM)

    def _connect_as(self, kind: int) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, kind)
        try:
            sock.connect(self.address)
        except OSError:
            sock.close()
            raise
        self.socktype = kind
        return sock

    def encode(self, record: logging.LogRecord) -> bytes:
        pri = self.facility << 3 | _SYSLOG_PRIORITY.get(record.levelname, 4)
        return f"<{pri}>".encode() + (self.format(record) + "\0").encode()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            data = self.encode(record)
            try:
                self.sock.sendall(data)
            except OSError:
                self.sock.close()
                self.sock = self._connect()
                self.sock.sendall(data)
        except Exception:
            self.handleError(record)

    def close(self) -> None:
        with self.lock:    # (the lock: not while a record is being sent)
            self.sock.close()
        super().close()


def syslog_handler(ident: str, facility: str = "daemon") -> logging.Handler:
    """A handler writing to the local syslog socket; an error when there is none (rather than
    a silent fallback to UDP localhost:514, where nobody may listen)."""
    fac = FACILITIES.get(facility)
    if fac is None:
        raise LogTargetError(f"unknown syslog facility {facility!r}; use e.g. daemon, user, "
                             "local0 .. local7")
    if not os.path.exists(DEVLOG):
        raise LogTargetError(f"no syslog socket {DEVLOG} (no syslog daemon or journald "
                             "here); log to stderr or a file instead")
    try:
        handler = SyslogHandler(DEVLOG, fac)
    except OSError as exc:
        raise LogTargetError(f"cannot connect to {DEVLOG}: {exc.strerror or exc}") from None
    handler.setFormatter(logging.Formatter(f"{ident}[%(process)d]: %(name)s: %(message)s"))
    return handler


def install(handlers: list[tuple[logging.Handler, int]]) -> None:
    """Replace the root logger's handlers with these (handler, level) pairs."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
        h.close()
    for h, level in handlers:
        h.setLevel(level)
        root.addHandler(h)
    root.setLevel(min((lvl for _, lvl in handlers), default=logging.CRITICAL + 10))
    if not handlers:
        root.addHandler(logging.NullHandler())
    logging.getLogger("asyncio").setLevel(max(logging.WARNING, root.level))


def to_stderr(level: int) -> None:
    """The usual set-up of a command line tool: everything at `level` and above on stderr."""
    install([(stream_handler(sys.stderr), level)])
