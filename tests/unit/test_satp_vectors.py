"""Every datagram captured between the real anytun/uanytun: decrypt to its inner packet,
re-encrypt to the same bytes."""

from __future__ import annotations

import pytest

from relay.satp import OpenError, Role, SatpContext, Suite, from_passphrase
from relay.satp import keys as satp_keys
from tests.satp_captures import ENTRIES, ENTRY_IDS, master_of, suite_of


@pytest.mark.parametrize("e", ENTRIES, ids=ENTRY_IDS)
def test_captured_datagram_round_trip(e: dict) -> None:
    suite, master, sender = suite_of(e), master_of(e), Role.parse(e["role_of_sender"])
    outer = bytes.fromhex(e["outer_hex"])
    opened = SatpContext(suite, master, sender.peer).open(outer)
    assert opened.payload.hex() == e["inner_hex"]
    assert opened.payload_type == int(e["payload_type"], 16)
    assert (opened.seq, opened.sender_id, opened.mux) == (e["seq"], e["sender_id"], e["mux"])
    resealed = SatpContext(suite, master, sender).seal(opened.seq, opened.sender_id, opened.mux,
                                                       opened.payload_type, opened.payload)
    assert resealed == outer


@pytest.mark.parametrize("e", [e for e in ENTRIES if e["auth_algo"] == "sha1"][:12],
                         ids=lambda e: e["case"])
def test_captured_datagram_rejected_by_the_same_role(e: dict) -> None:
    """Opposite roles are required: the sender's own role does not authenticate it."""
    ctx = SatpContext(suite_of(e), master_of(e), Role.parse(e["role_of_sender"]))
    with pytest.raises(OpenError):
        ctx.open(bytes.fromhex(e["outer_hex"]))


def test_every_captured_configuration_is_covered() -> None:
    cases = {e["case"] for e in ENTRIES}
    assert {"u_aes", "u_null", "u_sid_mux", "u_inner6", "u_outer6", "u_tap", "a_aes", "a_null",
            "x_a_left_u_right", "x_u_left_a_right_autodetect", "q_mux_autodetect"} <= cases


@pytest.mark.parametrize("e", [e for e in ENTRIES if e["passphrase"]][:4],
                         ids=lambda e: e["case"])
def test_passphrase_gives_the_captured_master(e: dict) -> None:
    m = from_passphrase(e["passphrase"], len(bytes.fromhex(e["master_key"])))
    assert (m.key.hex(), m.salt.hex()) == (e["master_key"], e["master_salt"])


def test_anytun_key_length_quirk_is_refused_not_copied() -> None:
    """anytun ran -K <128 bit> -k aes-ctr-256 with all-zero keys (captured); we refuse."""
    e = next(x for x in ENTRIES if x["case"] == "q_anytun_kd_keylen_mismatch")
    # the capture really is the zero-key quirk: it opens with the null PRF ...
    SatpContext(Suite(16, 0, True, 10), None, Role.parse(e["role_of_sender"]).peer).open(
        bytes.fromhex(e["outer_hex"]))
    # ... and the same options are an error for us
    with pytest.raises(satp_keys.KeyMaterialError, match="128 bits but the key derivation"):
        satp_keys.resolve(None, e["master_key"], e["master_salt"], 32)
