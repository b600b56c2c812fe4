"""aarp-shim: run a program with libaarp.so (preloaded, or supervised through seccomp for
programs a preload cannot reach), run the host cache daemon, or print the library's path."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import signal
import sys

from aarp import __version__, programs, shim
from aarp import config as aconfig
from aarp.ops import cli as opscli
from aarp.ops import logfmt

LOG_LEVELS = {"off": logging.CRITICAL + 10, "error": logging.ERROR, "info": logging.INFO,
              "debug": logging.DEBUG}


def _library_version() -> str:
    try:
        return f"libaarp {shim.version()}"
    except shim.ShimNotBuilt:
        return "libaarp not built"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="aarp-shim",
        description=(
            "Run a program with the AARP preload library (libaarp.so), so its connections to "
            "anycast addresses go to the unicast address of the server that answers them. "
            "Like proxychains4: 'aarp-shim -- curl http://[AA]/'. Static binaries and Go "
            "programs, which a preload cannot reach, are supervised through seccomp instead "
            "(automatically, or with --seccomp)."
        ),
        epilog="Configuration: /etc/aarp.conf (AARP_CONF) and AARP_* environment variables. "
        "Exit status: the program's; 2 usage or configuration error; 127 cannot run it.",
    )
    p.add_argument("--path", action="store_true", help="print the absolute path of libaarp.so")
    opscli.add_version(p, __version__, detail=_library_version)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--seccomp", action="store_true",
                      help="intercept connect/sendto/sendmsg with seccomp user notification "
                      "and rewrite them from outside the program (default for static and Go "
                      "binaries)")
    mode.add_argument("--preload", action="store_true",
                      help="always use LD_PRELOAD, even where it cannot reach the program")
    mode.add_argument("--cache-daemon", action="store_true",
                      help="run the host cache daemon in the foreground: one probe per host "
                      "for every process using the library (until SIGTERM/SIGINT)")
    p.add_argument("--cache-dir", metavar="DIR",
                   help="the host cache directory (default: config 'host_cache', /run/aarp)")
    p.add_argument("--log", choices=tuple(LOG_LEVELS),
                   help="the daemon's log level on stderr (default: config 'log', else info)")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD [ARGS...] to run")
    return p


def _cache_daemon(args: argparse.Namespace) -> int:
    from aarp.cache_daemon import CacheDaemon
    from aarp.hostcache import HostCacheError

    try:
        cfg = aconfig.load()
    except aconfig.ConfigError as exc:
        print(f"aarp-shim: {exc}", file=sys.stderr)
        return 2
    directory = args.cache_dir or cfg.host_cache
    if not directory:
        print("aarp-shim: the host cache is off ('host_cache = off'); give --cache-dir DIR",
              file=sys.stderr)
        return 2
    if not directory.startswith("/") or len(directory) > aconfig.MAX_HOST_CACHE:
        print(f"aarp-shim: --cache-dir must be an absolute path of at most "
              f"{aconfig.MAX_HOST_CACHE} bytes", file=sys.stderr)
        return 2
    level = args.log or cfg.log or "info"
    logfmt.to_stderr(LOG_LEVELS[level])
    try:
        daemon = CacheDaemon(directory)
    except (HostCacheError, OSError) as exc:
        print(f"aarp-shim: {exc}", file=sys.stderr)
        return 1

    async def run() -> None:
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping.set)
        await daemon.serve(stopping)

    try:
        asyncio.run(run())
    except OSError as exc:
        print(f"aarp-shim: {exc}", file=sys.stderr)
        return 1
    return 0


def _run(args: argparse.Namespace, command: list[str]) -> int:
    exe = shutil.which(command[0]) if "/" not in command[0] else command[0]
    if exe is None or not os.path.exists(exe):
        print(f"aarp-shim: cannot run {command[0]!r}: not found", file=sys.stderr)
        return 127
    kind = programs.inspect(exe)
    if kind.setuid:
        print(f"aarp-shim: {command[0]} is set-user-ID or set-group-ID: connections will not "
              "be pinned (the loader ignores LD_PRELOAD for it, and seccomp supervision would "
              "drop its privileges)", file=sys.stderr)
        return _exec(command, dict(os.environ))
    use_seccomp = args.seccomp or (kind.needs_seccomp and not args.preload)
    if kind.needs_seccomp and args.preload:
        print(f"aarp-shim: {command[0]} is {kind.why}: LD_PRELOAD cannot reach it, its "
              "connections will not be pinned (drop --preload to supervise it with seccomp)",
              file=sys.stderr)
    if not use_seccomp:
        return _exec(command, shim.preload_env())
    from aarp import supervise

    problem = supervise.unavailable()
    if problem:
        print(f"aarp-shim: cannot supervise {command[0]} with seccomp ({problem}): its "
              "connections will not be pinned", file=sys.stderr)
        return _exec(command, dict(os.environ) if kind.needs_seccomp else shim.preload_env())
    if kind.needs_seccomp and not args.seccomp:
        _note(f"{command[0]} is {kind.why}: supervising its system calls with seccomp")
    return supervise.run(command)


def _note(text: str) -> None:
    """A line for who asked for the library's own messages (AARP_LOG info or debug)."""
    if os.environ.get("AARP_LOG", "").strip() in ("info", "debug"):
        print(f"aarp-shim: {text}", file=sys.stderr)


def _exec(command: list[str], env: dict[str, str]) -> int:
    try:
        os.execvpe(command[0], command, env)
    except OSError as exc:
        print(f"aarp-shim: cannot run {command[0]!r}: {exc.strerror}", file=sys.stderr)
        return 127
    return 0  # not reached


def main(argv: list[str] | None = None) -> int:
    return opscli.run(lambda: _main(argv))


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    try:
        if args.path:
            print(shim.library_path())
            return 0
        if args.cache_daemon:
            if command:
                print("aarp-shim: --cache-daemon runs no program", file=sys.stderr)
                return 2
            return _cache_daemon(args)
        if not command:
            print("aarp-shim: nothing to run; usage: aarp-shim -- CMD [ARGS...]", file=sys.stderr)
            return 2
        return _run(args, command)
    except shim.ShimNotBuilt as exc:
        print(f"aarp-shim: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
