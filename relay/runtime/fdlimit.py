"""The open-file limit: a daemon that holds many sockets raises its soft limit towards the hard
one before it needs them, so accept() or socket() never fails with EMFILE mid-service."""

from __future__ import annotations

import resource


def raise_open_files(needed: int) -> int | None:
    """Raise the soft RLIMIT_NOFILE to `needed` as far as the hard limit allows; the soft limit
    now in force, or None when it is unlimited."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return None if soft == resource.RLIM_INFINITY else soft
