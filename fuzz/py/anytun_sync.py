"""relay.satp.archive, anytun's sync archive codec: any byte stream, fed in chunks of any
size, yields messages or one SyncProtocolError (after which the stream is dropped), never
another exception; every decoded message encodes back into a frame that decodes to the same
message. Input: the chunk size (first byte), then the stream."""

from __future__ import annotations

from fuzz.py import instrumented, run

with instrumented():
    from relay.satp.archive import MAX_BODY, Decoder, SyncProtocolError, encode, parse_body


def test_one_input(data: bytes) -> None:
    if not data:
        return
    step = data[0] or 1
    stream = data[1:]
    d = Decoder()
    got = []
    try:
        for at in range(0, len(stream), step):
            got += d.feed(stream[at:at + step])
            assert d.pending <= 6 + MAX_BODY + step
    except SyncProtocolError as exc:
        assert str(exc)
    for msg in got:
        frame = encode(msg)
        assert parse_body(frame[6:]) == msg
        assert Decoder().feed(frame) == [msg]


if __name__ == "__main__":
    run(test_one_input)
