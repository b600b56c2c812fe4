"""The datagrams captured between the real anytun and uanytun (a copy of the shared captures,
spec/satp.md section 7, kept with the tests) and the suite and master key each was sent with."""

from __future__ import annotations

import json
from pathlib import Path

from relay.satp import MasterKey, Suite

VECTORS = Path(__file__).resolve().parent / "vectors" / "satp" / "captured.json"
ENTRIES: list[dict] = json.loads(VECTORS.read_text())
ENTRY_IDS = [f"{e['case']}-{e['role_of_sender']}-{e['seq']}-{i}" for i, e in enumerate(ENTRIES)]


def suite_of(e: dict) -> Suite:
    suite = Suite.parse(e["cipher"], e["auth_algo"], e["kd_prf"], e["auth_tag_length"])
    if e["case"] == "q_uanytun_kd_keylen_mismatch":
        # uanytun was given -k aes-ctr-256 with a 128-bit key; libgcrypt ran AES-128.
        suite = Suite(suite.cipher_key_len, 16, suite.auth, suite.tag_len)
    return suite


def master_of(e: dict) -> MasterKey | None:
    if not e["master_key"]:
        return None
    return MasterKey(bytes.fromhex(e["master_key"]), bytes.fromhex(e["master_salt"]))
