"""What the nodes of one anycast address share, and how two copies of it merge.

Pure code: values in, values out; the caller passes the wall clock in milliseconds.

Every piece of shared state is a `Record` named by (kind, key) and stamped with a `Version`
(hybrid logical clock milliseconds, writer node). Two copies of a record merge by one rule that
is commutative, associative and idempotent, so nodes may exchange records in any order, any
number of times, and still end up equal:

* **last writer wins** for most kinds: the higher (stamp, node) wins; at an equal version a
  tombstone (a delete) wins, then the canonical text of the data, so equal versions never make
  two nodes disagree;
* **join** for `progress`: send seq and per-sender receive high-water marks only ever move
  forward (serial-number max), whichever node saw them, so a failover never reopens a window.
  Progress is kept per key epoch (a tag derived from the connection's keys): new keys start
  from zero, the same keys resume where they were, also after a delete and re-create;
  progress itself is never deleted (it holds no secret and must not go backwards);
* deletes are tombstones (data None) that beat every older version and are purged only after
  a grace period longer than any partition the operator expects -- except a relay session's,
  which needs to outlive only a few of its timeouts (SESSION_GRACE_MS, Store.grace_ms).

Record kinds and their data (all JSON values):

    connection  key mux   {mux, role, kd_bits, window, key, salt}  (key/salt: sealed or absent)
    endpoint    key mux   {transport, host, port}      the learned remote of a connection
    progress    key mux   {epochs: {epoch: {send_seq, recv_high: {sender_id: seq}}}}
    route       key prefix {prefix, mux}
    session     key call-id/media/tag   a relay-mode session (parties, ports, latched addresses)
    translation key flow  an open-tunnel translation (reserved; see docs/cluster.md)
    node        key node  {sid, address, ports, vxlan}  a member of open tunnel mode across
                          nodes (relay.cluster.handover)
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from relay.runtime.errors import RelayError

LWW_KINDS = ("connection", "endpoint", "route", "session", "translation", "node", "tcpconn",
             "tcpnode")
JOIN_KINDS = ("progress",)
KINDS = LWW_KINDS + JOIN_KINDS
SEQ_SPACE = 1 << 32
NODE_RE = re.compile(r"\A[A-Za-z0-9._:-]{1,64}\Z")  # \Z: "$" would let a newline through
DAY_MS = 86_400_000
# A live relay session is rewritten ("touched") every third of its timeout while it carries
# media, and one that carries none expires on its own: an older version of an ended call
# cannot be on its way for longer than a few timeouts. So its tombstone is kept for minutes,
# not a day (the default timeout is 60 s), and a busy relay does not hold a day of calls.
SESSION_GRACE_TIMEOUTS = 5
SESSION_GRACE_MS = SESSION_GRACE_TIMEOUTS * 60_000
KIND_GRACE_MS = {"session": SESSION_GRACE_MS}  # kinds whose grace differs (own purge horizon)


class RecordError(RelayError, ValueError):
    """A record that does not follow the model (bad kind, key, version or data)."""


@dataclass(frozen=True, order=True, slots=True)
class Version:
    """Hybrid logical clock: milliseconds (at least the wall clock, always increasing per
    writer), then the writer node as tie-break."""

    stamp: int
    node: str


def canonical(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class Record:
    kind: str
    key: str
    version: Version
    data: Mapping[str, Any] | None  # None: tombstone

    @property
    def deleted(self) -> bool:
        return self.data is None

    @property
    def ident(self) -> tuple[str, str]:
        return (self.kind, self.key)

    def order(self) -> tuple:
        """Total order of last-writer-wins: version, then tombstone, then the data's text."""
        return (self.version, self.data is None, "" if self.data is None else canonical(self.data))

    def to_json(self) -> dict:
        return {"k": self.kind, "id": self.key, "t": self.version.stamp, "n": self.version.node,
                "d": None if self.data is None else dict(self.data)}

    @classmethod
    def from_json(cls, obj: Any) -> Record:
        if not isinstance(obj, dict):
            raise RecordError("a record is a JSON object")
        try:
            kind, key, stamp, node, data = obj["k"], obj["id"], obj["t"], obj["n"], obj["d"]
        except KeyError as exc:
            raise RecordError(f"record lacks field {exc}") from None
        return make(kind, key, Version(stamp, node), data)


def decode(raw: bytes | str) -> Record:
    """A record from the JSON text a backend stores or a peer sends; RecordError for anything
    else, also for JSON nested too deep to parse (json raises RecursionError then)."""
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise RecordError(f"not a JSON record: {exc}") from None
    return Record.from_json(obj)


def make(kind: Any, key: Any, version: Version, data: Any) -> Record:
    """A validated record (untrusted input from Redis or a peer goes through here)."""
    if kind not in KINDS:
        raise RecordError(f"unknown record kind {kind!r}")
    if not isinstance(key, str) or not 0 < len(key) <= 512:
        raise RecordError(f"bad {kind} key {key!r}")
    if not isinstance(version.stamp, int) or isinstance(version.stamp, bool) \
            or not 0 <= version.stamp < 1 << 62:
        raise RecordError(f"bad version stamp {version.stamp!r}")
    if not isinstance(version.node, str) or not NODE_RE.match(version.node):
        raise RecordError(f"bad node name {version.node!r}")
    if data is None and kind in JOIN_KINDS:
        raise RecordError(f"{kind} records are never deleted")
    if data is not None:
        if not isinstance(data, dict):
            raise RecordError(f"{kind} data must be an object")
        if kind == "progress":
            data = _check_progress(data)
    return Record(kind, key, version, data)


def _check_progress(data: dict) -> dict:
    epochs = data.get("epochs")
    if not isinstance(epochs, dict) or len(epochs) > 16:
        raise RecordError("progress needs epochs {epoch: {send_seq, recv_high}} (at most 16)")
    out = {}
    for epoch, p in epochs.items():
        if not isinstance(epoch, str) or not 0 < len(epoch) <= 64 or not isinstance(p, dict):
            raise RecordError(f"bad progress epoch {epoch!r}")
        seq = p.get("send_seq", 0)
        high = p.get("recv_high", {})
        if not _is_seq(seq) or not isinstance(high, dict) or len(high) > 4096:
            raise RecordError("progress needs send_seq (u32) and recv_high {sender: u32}")
        clean: dict[str, int] = {}
        for sid, value in high.items():
            if not str(sid).isdigit() or int(sid) > 0xFFFF or not _is_seq(value):
                raise RecordError(f"bad receive high-water mark {sid!r}: {value!r}")
            clean[str(int(sid))] = value
        out[epoch] = {"send_seq": seq, "recv_high": clean}
    return {"epochs": out}


def progress_data(epoch: str, send_seq: int, recv_high: Mapping[int, int]) -> dict:
    return {"epochs": {epoch: {"send_seq": send_seq,
                               "recv_high": {str(k): v for k, v in recv_high.items()}}}}


def progress_of(rec: Record | None, epoch: str) -> tuple[int, dict[int, int]] | None:
    """(send seq, {sender ID: high-water}) of one key epoch, if known."""
    if rec is None or rec.data is None or epoch not in rec.data["epochs"]:
        return None
    p = rec.data["epochs"][epoch]
    return p["send_seq"], {int(k): v for k, v in p["recv_high"].items()}


def _is_seq(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < SEQ_SPACE


# -- merge ---------------------------------------------------------------------------------------
def seq_max(a: int, b: int) -> int:
    """The later of two 32-bit sequence numbers (serial arithmetic); exactly half the space
    apart, the numerically larger, so the choice never depends on the argument order."""
    d = (b - a) % SEQ_SPACE
    if d == 0:
        return a
    if d == SEQ_SPACE // 2:
        return max(a, b)
    return b if d < SEQ_SPACE // 2 else a


def _join_one(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict:
    high = dict(a["recv_high"])
    for sid, seq in b["recv_high"].items():
        high[sid] = seq_max(high[sid], seq) if sid in high else seq
    return {"send_seq": seq_max(a["send_seq"], b["send_seq"]), "recv_high": high}


def join_progress(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict:
    epochs = dict(a["epochs"])
    for e, p in b["epochs"].items():
        epochs[e] = _join_one(epochs[e], p) if e in epochs else p
    return {"epochs": epochs}


def merge(a: Record | None, b: Record | None) -> Record | None:
    """The merged copy of two versions of the same record (either may be missing)."""
    if a is None or b is None:
        return a if b is None else b
    if a.ident != b.ident:
        raise RecordError(f"cannot merge {a.ident} with {b.ident}")
    if a.kind in JOIN_KINDS and a.data is not None and b.data is not None:
        # (join kinds have no tombstones: a semilattice needs none)
        return Record(a.kind, a.key, max(a.version, b.version), join_progress(a.data, b.data))
    return a if a.order() >= b.order() else b


# -- the store -----------------------------------------------------------------------------------
Listener = Callable[[Record, Record | None], None]  # (new winner, what it replaced)


class Store:
    """One node's copy of the shared state. Local writes go through put()/delete() (they get
    a fresh version); records from elsewhere go through apply(), which merges."""

    def __init__(self, node: str) -> None:
        if not NODE_RE.match(node):
            raise RecordError(f"bad node name {node!r}: use letters, digits and ._:- "
                              "(at most 64)")
        self.node = node
        self._records: dict[tuple[str, str], Record] = {}
        self._clock = 0
        self._listeners: list[Listener] = []
        # per kind, how long a tombstone is kept at most (the backend's grace applies to the
        # rest); raised by the relay for a longer session timeout (ClusterSync.attach_sessions)
        self.grace_ms: dict[str, int] = dict(KIND_GRACE_MS)

    def grace(self, kind: str, default_ms: int = DAY_MS) -> int:
        """How long a tombstone of `kind` is kept."""
        return min(default_ms, self.grace_ms.get(kind, default_ms))

    # -- observing
    def subscribe(self, fn: Listener) -> Callable[[], None]:
        self._listeners.append(fn)
        return lambda: self._listeners.remove(fn) if fn in self._listeners else None

    def _notify(self, new: Record, old: Record | None) -> None:
        for fn in list(self._listeners):
            fn(new, old)

    # -- clock
    def tick(self, now_ms: int) -> Version:
        self._clock = max(self._clock + 1, int(now_ms))
        return Version(self._clock, self.node)

    def observe(self, version: Version) -> None:
        """Later local writes must win over anything this node has seen."""
        self._clock = max(self._clock, version.stamp)

    # -- reading
    def get(self, kind: str, key: str) -> Record | None:
        return self._records.get((kind, key))

    def live(self, kind: str) -> Iterator[Record]:
        return (r for r in list(self._records.values()) if r.kind == kind and r.data is not None)

    def snapshot(self) -> list[Record]:
        return list(self._records.values())

    def __len__(self) -> int:
        return len(self._records)

    # -- writing
    def put(self, kind: str, key: str, data: Mapping[str, Any], now_ms: int) -> Record | None:
        """A local change; returns the record to publish, or None when nothing changed."""
        old = self._records.get((kind, key))
        if old is not None and old.data is not None:
            candidate = join_progress(old.data, data) if kind in JOIN_KINDS else dict(data)
            if canonical(candidate) == canonical(old.data):
                return None
            data = candidate
        rec = make(kind, key, self.tick(now_ms), dict(data))
        self._records[rec.ident] = rec
        self._notify(rec, old)
        return rec

    def delete(self, kind: str, key: str, now_ms: int) -> Record | None:
        if kind in JOIN_KINDS:
            raise RecordError(f"{kind} records are never deleted")
        old = self._records.get((kind, key))
        if old is not None and old.data is None:
            return None
        rec = make(kind, key, self.tick(now_ms), None)
        self._records[rec.ident] = rec
        self._notify(rec, old)
        return rec

    def forget(self, kind: str, key: str) -> None:
        """Drop the tombstone of (kind, key), for a store that nobody else merges with: it
        has no older version to beat, and kept for the grace period it is only memory."""
        rec = self._records.get((kind, key))
        if rec is not None and rec.data is None:
            del self._records[(kind, key)]

    def apply(self, rec: Record) -> Record | None:
        """Merge a record from elsewhere; returns the new local copy if it changed."""
        self.observe(rec.version)
        old = self._records.get(rec.ident)
        new = merge(old, rec)
        if new is None or new is old or (old is not None and new.order() == old.order()):
            return None
        self._records[new.ident] = new
        self._notify(new, old)
        return new

    def apply_all(self, records: Iterable[Record]) -> list[Record]:
        """Anti-entropy: merge a full snapshot from elsewhere; returns what changed here."""
        return [c for c in (self.apply(r) for r in records) if c is not None]

    def newer_than(self, remote: Mapping[tuple[str, str], Record],
                   horizons_ms: Mapping[str, int] | None = None) -> list[Record]:
        """Local records the other side lacks or holds in an older version; a record it lacks
        that is older than its kind's purge horizon is not among them (see forget_purged)."""
        horizons_ms = horizons_ms or {}
        return [r for r in self._records.values()
                if merge(remote.get(r.ident), r) != remote.get(r.ident)
                and not (r.ident not in remote and r.version.stamp < horizons_ms.get(r.kind, 0))]

    def forget_purged(self, remote: Mapping[tuple[str, str], Record],
                      horizons_ms: Mapping[str, int]) -> list[Record]:
        """The other side purged its tombstones older than each kind's horizon (`horizons_ms`,
        kind -> stamp): a live last-writer-wins record it lacks and that is older than that was
        deleted there while this node did not hear it (a node cut off for longer than the grace
        period). Delete it here too -- a tombstone of the same version, which wins -- instead
        of resurrecting it. Returns the tombstones that replaced live records."""
        gone = []
        for r in list(self._records.values()):
            if r.data is not None and r.kind in LWW_KINDS and r.ident not in remote \
                    and r.version.stamp < horizons_ms.get(r.kind, 0):
                tomb = Record(r.kind, r.key, r.version, None)
                self._records[r.ident] = tomb
                self._notify(tomb, r)
                gone.append(tomb)
        return gone

    def purge_tombstones(self, now_ms: int, grace_ms: int = DAY_MS) -> int:
        """Drop the tombstones older than their kind's grace (`grace_ms` unless shorter)."""
        dead = [i for i, r in self._records.items()
                if r.data is None and r.version.stamp < now_ms - self.grace(r.kind, grace_ms)]
        for i in dead:
            del self._records[i]
        return len(dead)
