"""A bound on the connections of a control socket that are still waiting for their request.

A client that connects and says nothing (or trickles a line) costs an fd and a task until its
read times out; a flood of them must not keep the node from answering the operator or the SIP
proxy. At most `limit` connections wait at once; a new one evicts the one waiting longest
(real clients write their request right after connecting, so the oldest waiter is the
likeliest attacker), and a request, once read, is never cancelled.
"""

from __future__ import annotations

import asyncio


class WaitingClients:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.evicted = 0
        self._waiting: dict[asyncio.Task, None] = {}   # insertion order: oldest first

    def __len__(self) -> int:
        return len(self._waiting)

    def enter(self) -> None:
        """The current task starts waiting for its request."""
        while len(self._waiting) >= self.limit:
            oldest = next(iter(self._waiting))
            del self._waiting[oldest]
            oldest.cancel()
            self.evicted += 1
        task = asyncio.current_task()
        if task is not None:
            self._waiting[task] = None

    def leave(self) -> None:
        """The current task has its request (or gave up): it no longer counts."""
        task = asyncio.current_task()
        if task is not None:
            self._waiting.pop(task, None)
