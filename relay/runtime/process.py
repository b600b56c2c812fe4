"""Process-level behaviour of anytun, the same for every mode: daemonizing (unless -D), the -P
pid file, -u/-g/-C, -L/-U, and capabilities.

The parent of a daemon waits until the child reports that every service started (or exits
with the child's status), so `anytun-relay ...; echo $?` tells the truth. Once every service
has opened its devices and sockets, the process chroots (-C), becomes -u/-g, and keeps only
the capabilities its modes still need (relay.node.capabilities says which and why).
"""

from __future__ import annotations

import contextlib
import grp
import logging
import os
import pwd
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from aarp.ops import caps
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


@dataclass(frozen=True)
class Identity:
    """-u/-g resolved: who the daemon becomes after its set-up."""

    user: str
    uid: int
    gid: int


def resolve_identity(user: str | None, group: str | None) -> Identity | None:
    """-u/-g as numbers (like anytun, -g without -u is ignored); ConfigError if they name
    nobody."""
    if not user:
        if group:
            try:
                grp.getgrnam(group)
            except KeyError:
                raise ConfigError(f"-g {group}: no such group") from None
        return None
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        raise ConfigError(f"-u {user}: no such user") from None
    gid = pw.pw_gid
    if group:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise ConfigError(f"-g {group}: no such group") from None
    return Identity(user, pw.pw_uid, gid)


def drop_privileges(identity: Identity | None, chroot: str | None,
                    keep: Mapping[str, str]) -> set[str]:
    """After setup: chroot, then become the user keeping only `keep` (capability -> why)."""
    if chroot:
        try:
            os.chroot(chroot)
            os.chdir("/")
        except OSError as exc:
            raise ConfigError(f"-C {chroot}: {exc.strerror or exc}") from None
        log.log(NOTICE, "chrooted to %s", chroot)
    have = caps.read()["permitted"]
    if identity is None and not have:
        return set()   # nothing to give up (an unprivileged user with a prepared device)
    try:
        kept = caps.restrict(keep, identity.uid if identity else None,
                             identity.gid if identity else None)
    except caps.CapabilityError as exc:
        who = f"-u {identity.user}: " if identity else ""
        raise ConfigError(f"{who}{exc.strerror or exc}") from None
    if identity is not None:
        log.log(NOTICE, "dropped privileges to %s (uid %d, gid %d)", identity.user,
                identity.uid, identity.gid)
    for cap in sorted(kept):
        log.log(NOTICE, "keeping %s: %s", cap, keep[cap])
    for cap in sorted(set(keep) - kept):
        log.warning("%s is not available to this process: %s will fail", cap, keep[cap])
    return kept


def prepare_directories(paths: Iterable[str], identity: Identity | None) -> None:
    """Create the missing parent directories of files the daemon writes (a seq file under
    /var/lib/anytun-relay, a pid file under /run/...); what it creates belongs to -u."""
    for path in paths:
        directory = os.path.dirname(os.path.abspath(path))
        missing = []
        while directory and not os.path.isdir(directory):
            missing.append(directory)
            directory = os.path.dirname(directory)
        for d in reversed(missing):
            try:
                os.mkdir(d, 0o750)
                if identity is not None:
                    os.chown(d, identity.uid, identity.gid)
            except OSError as exc:
                raise ConfigError(f"cannot create the directory {d} for {path}: "
                                  f"{exc.strerror}") from None


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


def check(settings: ProcessSettings) -> Identity | None:
    """What can be checked without touching the system (also by check-config)."""
    identity = resolve_identity(settings.user, settings.group)
    if settings.chroot and not os.path.isdir(settings.chroot):
        raise ConfigError(f"-C {settings.chroot}: no such directory")
    return identity


def prepare_files(settings: ProcessSettings, files: Iterable[str]) -> None:
    """Before the services are built: the directories of the files the daemon will write
    (seq files, sockets, the pid file) exist, and belong to -u when they are new."""
    prepare_directories([*files, *([settings.pidfile] if settings.pidfile else [])],
                        check(settings))


def prepare(settings: ProcessSettings, *, capabilities: Mapping[str, str] | None = None
            ) -> None:
    """Before the loop starts (after the services were built): log targets, the daemon's
    fork, the pid file, and the privilege drop once every service has started;
    `capabilities` is what it keeps after the set-up, with the reason for each."""
    foreground = settings.foreground or settings.debug
    targets = list(settings.log)
    if settings.debug:
        targets.append(LogTarget("stdout", 5))
    identity = check(settings)
    logtargets.configure(targets or logtargets.default_targets(foreground))
    d = Daemonizer() if not foreground else None
    if d is not None:
        d.detach()
    if settings.pidfile:
        try:
            write_pidfile(settings.pidfile)
        except OSError as exc:
            raise ConfigError(f"-P {settings.pidfile}: {exc.strerror}") from None
    keep = dict(capabilities or {})
    # privileges go before the parent is released: its exit status then tells whether the
    # daemon really runs as it was asked to
    daemon.READY_HOOKS.append(lambda: drop_privileges(identity, settings.chroot, keep))
    if d is not None:
        daemon.READY_HOOKS.append(d.ready)
