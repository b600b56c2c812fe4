"""relay.cluster.records: any JSON a peer or Redis may hand over either becomes a valid record
or is refused with the errors the sync backends catch (ValueError, RecordError), and merging
is commutative, associative and idempotent, so nodes that exchange records in any order end
up equal. Input: JSON text (one record or a list of them)."""

from __future__ import annotations

import itertools
import json

from fuzz.py import instrumented, run

with instrumented():
    from relay.cluster import records as rc
    from relay.cluster.records import NODE_RE, SEQ_SPACE, Record, RecordError, Store, merge


def decode(raw: bytes) -> Record | None:
    """What the sync backends do with a record they read: it or RecordError, nothing else."""
    try:
        return rc.decode(raw)
    except RecordError:
        return None


def _within_half(records: list[Record]) -> bool:
    """The progress values of each (epoch, field) fit in less than half the seq space. Only
    then is serial-number max associative (three seqs a third of the space apart each beat
    another): the join's guarantee, documented in relay/cluster/records.py, stops there."""
    values: dict[tuple, list[int]] = {}
    for r in records:
        if r.kind == "progress" and r.data is not None:
            for epoch, p in r.data["epochs"].items():
                values.setdefault((epoch, "send"), []).append(p["send_seq"])
                for sid, high in p["recv_high"].items():
                    values.setdefault((epoch, sid), []).append(high)
    for vs in values.values():
        vs = sorted(set(vs))
        gaps = [b - a for a, b in itertools.pairwise(vs)] + [vs[0] + SEQ_SPACE - vs[-1]]
        if max(gaps) <= SEQ_SPACE // 2:
            return False
    return True


def test_one_input(data: bytes) -> None:
    try:
        items = json.loads(data)
    except (ValueError, RecursionError):
        items = None
    raws = [json.dumps(x).encode() for x in items] if isinstance(items, list) else [data]
    records = [r for r in map(decode, raws[:8]) if r is not None]
    for r in records:
        assert NODE_RE.fullmatch(r.version.node), r.version.node
        assert decode(json.dumps(r.to_json()).encode()) == r  # what we ship, we read back
    for a, b in itertools.product(records, repeat=2):
        if a.ident != b.ident:
            continue
        assert merge(a, b) == merge(b, a)
        assert merge(a, a) == a
        for c in records:
            if c.ident == a.ident and _within_half([a, b, c]):
                assert merge(a, merge(b, c)) == merge(merge(a, b), c)
    if not _within_half(records):
        return
    forward, backward = Store("fuzz-a"), Store("fuzz-b")
    forward.apply_all(records)
    backward.apply_all(reversed(records))
    key = lambda r: r.ident  # noqa: E731
    assert sorted(forward.snapshot(), key=key) == sorted(backward.snapshot(), key=key)


if __name__ == "__main__":
    run(test_one_input)
