"""--seq-file: send sequence numbers that never repeat across restarts.

SATP derives every per-packet key from the seq alone, so a peer that restarts at seq 0 with
the same master key reuses keystream (anytun and uanytun do). With a seq file the node writes
(and fsyncs) a reservation `chunk` seqs ahead before it sends any seq inside it, and starts
the next run at the reservation: a crash loses at most a chunk of numbers, never reuses one.
A clean stop records the exact next seq. The file is JSON: {"<mux>": next_seq, ...}.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os

from relay.runtime.errors import RelayError
from relay.tunnel.table import ConnectionTable, Event, Progress

log = logging.getLogger("anytun-relay.seq")
_MOD = 1 << 32
CHUNK = 1 << 20


class SeqFileError(RelayError):
    """The seq file cannot be read or written."""


class SeqStore:
    def __init__(self, path: str, chunk: int = CHUNK) -> None:
        self.path = path
        self.chunk = chunk
        self.reserved: dict[int, int] = {}
        self._table: ConnectionTable | None = None
        try:
            with open(path) as f:
                raw = json.load(f)
            self.saved = {int(k): int(v) % _MOD for k, v in raw.items()}
        except FileNotFoundError:
            self.saved = {}
        except (OSError, ValueError, AttributeError) as exc:
            raise SeqFileError(f"--seq-file {path}: unreadable ({exc}); fix or remove it") \
                from None

    def start_seq(self, mux: int) -> int:
        """Where mux's sending starts (0 for a new mux); reserves ahead at once."""
        start = self.saved.get(mux, 0)
        self.reserved[mux] = (start + self.chunk) % _MOD
        if not self._write(self.reserved):
            raise SeqFileError(f"--seq-file {self.path}: cannot write the reservation")
        return start

    def attach(self, table: ConnectionTable) -> None:
        self._table = table
        table.subscribe(self._on_event)

    def _on_event(self, event: Event) -> None:
        if not isinstance(event, Progress):
            return
        limit = self.reserved.get(event.mux)
        if limit is None:
            self.reserved[event.mux] = (event.send_seq + self.chunk) % _MOD
            self._write(self.reserved)
            return
        left = (limit - event.send_seq) % _MOD
        if left < self.chunk // 2:
            self.reserved[event.mux] = (event.send_seq + self.chunk) % _MOD
            self._write(self.reserved)

    def close(self) -> None:
        """Record the exact next seq of every connection (clean stop)."""
        if self._table is None:
            return
        exact = dict(self.reserved)
        for conn in self._table:
            exact[conn.mux] = conn.send_seq
        self._write(exact)

    def _write(self, values: dict[int, int]) -> bool:
        tmp = f"{self.path}.tmp"
        try:
            with open(tmp, "w") as f:
                json.dump({str(k): v for k, v in sorted(values.items())}, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError as exc:
            log.error("cannot write the seq file %s: %s", self.path, exc)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            return False
        return True
