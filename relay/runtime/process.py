"""Process-level behaviour of anytun: daemonizing (unless -D), -P pid file, -u/-g/-C, -L/-U.

The parent of a daemon waits until the child reports that every service started (or exits
with the child's status), so `anytun-relay ...; echo $?` tells the truth.
"""

from __future__ import annotations

import contextlib
import grp
import logging
import os
import pwd
import sys
from dataclasses import dataclass

from relay.runtime import daemon, logtargets
from relay.runtime.errors import ConfigError
from relay.runtime.logtargets import NOTICE, LogTarget

log = logging.getLogger("anytun-relay")


class Daemonizer:
    def __init__(self) -> None:
        self._ready_fd: int | None = None

    def detach(self) -> None:
        """Fork; the parent waits for ready() or the child's exit and then exits itself."""
        r, w = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid:
            os.close(w)
            with os.fdopen(r, "rb") as pipe:
                ok = pipe.read(1) == b"1"
            if ok:
                os._exit(0)
            _, status = os.waitpid(pid, 0)
            os._exit(os.waitstatus_to_exitcode(status) or 1)
        os.close(r)
        os.setsid()
        os.chdir("/")
        self._ready_fd = w

    def ready(self) -> None:
        """Services are up: release the parent, detach from the terminal."""
        if self._ready_fd is None:
            return
        os.write(self._ready_fd, b"1")
        os.close(self._ready_fd)
        self._ready_fd = None
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            with contextlib.suppress(OSError):
                os.dup2(devnull, fd)
        os.close(devnull)


def write_pidfile(path: str) -> None:
    with open(path, "w") as f:
        f.write(f"{os.getpid()}\n")


def drop_privileges(user: str | None, group: str | None, chroot: str | None) -> None:
    """After setup: chroot, then group, then user (like anytun: -g without -u is ignored)."""
    uid = gid = None
    if user:
        pw = pwd.getpwnam(user)
        uid, gid = pw.pw_uid, pw.pw_gid
        if group:
            gid = grp.getgrnam(group).gr_gid
    if chroot:
        try:
            os.chroot(chroot)
            os.chdir("/")
        except OSError as exc:
            raise ConfigError(f"-C {chroot}: {exc.strerror or exc}") from None
        log.log(NOTICE, "chrooted to %s", chroot)
    if uid is not None and gid is not None:
        try:
            os.setgroups([gid])
            os.setgid(gid)
            os.setuid(uid)
        except OSError as exc:
            raise ConfigError(f"-u {user}: {exc.strerror or exc}") from None
        log.log(NOTICE, "dropped privileges to %s:%s", user, group or gid)


def check_identity(user: str | None, group: str | None) -> str | None:
    """Error text if -u/-g name nobody."""
    if user:
        try:
            pwd.getpwnam(user)
        except KeyError:
            return f"-u {user}: no such user"
    if group:
        try:
            grp.getgrnam(group)
        except KeyError:
            return f"-g {group}: no such group"
    return None


@dataclass(frozen=True)
class ProcessSettings:
    """anytun's process options, parsed once (relay.cli)."""

    foreground: bool = False          # -D (or -U)
    debug: bool = False               # -U: foreground, everything to stdout
    user: str | None = None           # -u
    group: str | None = None          # -g (with -u)
    chroot: str | None = None         # -C
    pidfile: str | None = None        # -P
    log: tuple[LogTarget, ...] = ()   # -L, in order


def prepare(settings: ProcessSettings, *, daemonize: bool) -> None:
    """Before the loop starts (after the services were built): log targets, the daemon's
    fork, the pid file, and the privilege drop once every service has started."""
    targets = list(settings.log)
    foreground = settings.foreground or settings.debug
    if settings.debug:
        targets.append(LogTarget("stdout", 5))
    if not targets:
        targets.append(LogTarget("syslog", 3, ("anytun-relay", "daemon")))
        if foreground:
            targets.append(LogTarget("stderr", 3))
    logtargets.configure(targets)
    err = check_identity(settings.user, settings.group)
    if err:
        raise ConfigError(err)
    if settings.chroot and not os.path.isdir(settings.chroot):
        raise ConfigError(f"-C {settings.chroot}: no such directory")
    d = Daemonizer() if not foreground and daemonize else None
    if d is not None:
        d.detach()
    if settings.pidfile:
        try:
            write_pidfile(settings.pidfile)
        except OSError as exc:
            raise ConfigError(f"-P {settings.pidfile}: {exc.strerror}") from None
    # privileges go before the parent is released: its exit status then tells whether the
    # daemon really runs as it was asked to
    if settings.user or settings.chroot:
        daemon.READY_HOOKS.append(lambda: drop_privileges(
            settings.user, settings.group, settings.chroot))
    if d is not None:
        daemon.READY_HOOKS.append(d.ready)
