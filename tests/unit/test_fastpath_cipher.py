"""The C data plane's two crypto implementations (relay/fastpath/cipher.h): AES-NI/SHA-NI and
OpenSSL's libcrypto give the same bytes; a node on the first never maps libcrypto, and the
program keeps Python's OpenSSL bindings out unless TLS or the Python data plane needs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay import fastpath, main
from relay.satp import MasterKey, OpenError, Role, Suite
from tests.conftest import cpu_has_aes_and_sha, require


@pytest.fixture(autouse=True)
def _both() -> Iterator[None]:
    require(fastpath.available(), f"the C fast path ({fastpath.unavailable_reason()})")
    if not cpu_has_aes_and_sha():
        pytest.skip("needs a CPU with AES-NI and SHA-NI to compare them with OpenSSL")
    yield
    fastpath.use_crypto("auto")


def _on(impl: str, suite: Suite, master: MasterKey | None, role: Role) -> fastpath.SatpCrypto:
    fastpath.use_crypto(impl)   # a connection keeps the implementation it was made with
    return fastpath.SatpCrypto(suite, master, role)


suites = st.builds(
    lambda ckey, kd, auth, tag: Suite(ckey, kd, auth, tag if auth else 0),
    st.sampled_from([0, 16, 24, 32]), st.sampled_from([16, 24, 32]), st.booleans(),
    st.integers(0, 20))


@settings(max_examples=150, deadline=None)
@given(suite=suites, key=st.binary(min_size=32, max_size=32),
       salt=st.binary(min_size=14, max_size=14), role=st.sampled_from(list(Role)),
       seq=st.integers(0, 2**32 - 1), label=st.integers(0, 2**32 - 1),
       payload=st.one_of(st.binary(max_size=300), st.binary(min_size=1400, max_size=9000)))
def test_both_implementations_give_the_same_bytes(suite: Suite, key: bytes, salt: bytes,
                                                  role: Role, seq: int, label: int,
                                                  payload: bytes) -> None:
    master = MasterKey(key[:suite.kd_key_len], salt)
    ours, ssl = _on("builtin", suite, master, role), _on("openssl", suite, master, role)
    dgram = ours.seal(seq, 7, 3, 0x0800, payload)
    assert dgram == ssl.seal(seq, 7, 3, 0x0800, payload)
    assert ours.prf(label, seq, 100) == ssl.prf(label, seq, 100)
    rx_ours, rx_ssl = (_on("builtin", suite, master, role.peer),
                       _on("openssl", suite, master, role.peer))
    assert rx_ours.open(dgram) == rx_ssl.open(dgram)
    if suite.tag_len:   # a flipped bit fails on both
        bad = bytes([dgram[0] ^ 1]) + dgram[1:]
        for rx in (rx_ours, rx_ssl):
            with pytest.raises(OpenError, match="auth"):
                rx.open(bad)


def test_an_unknown_implementation_is_refused_and_the_choice_stays() -> None:
    before = fastpath.use_crypto("builtin")
    with pytest.raises(fastpath.FastpathError, match="unknown crypto 'aes-gcm'"):
        fastpath.use_crypto("aes-gcm")
    assert fastpath.crypto_name() == before == "aes-ni/sha-ni"


PROBE = """
import json, sys
from relay import main
argv = sys.argv[1:]
main.keep_openssl_out(argv)   # as the program does, without running it
from relay import fastpath
from relay.satp import MasterKey, Role, Suite
import hashlib
crypto = "none"
if fastpath.available():
    c = fastpath.SatpCrypto(Suite(), MasterKey(bytes(16), bytes(14)), Role.LEFT)
    c.seal(1, 0, 0, 0x0800, bytes(100))
    crypto = fastpath.crypto_name()
with open("/proc/self/maps") as f:
    maps = f.read()
print(json.dumps({"libcrypto": "libcrypto" in maps, "crypto": crypto,
                  "sha256": hashlib.sha256(b"abc").hexdigest()}))
"""


def _probe(*argv: str, env: dict[str, str] | None = None) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True,
                         timeout=60, check=True, env={**os.environ, **(env or {})}).stdout
    return json.loads(out.splitlines()[-1])


SHA256_ABC = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_a_node_on_the_builtin_crypto_never_maps_libcrypto() -> None:
    r = _probe("-r", "192.0.2.1", "-E", "secret")
    assert r == {"libcrypto": False, "crypto": "aes-ni/sha-ni", "sha256": SHA256_ABC}


def test_openssl_is_loaded_when_asked_for_or_needed() -> None:
    assert _probe("-r", "192.0.2.1", env={"ANYTUN_RELAY_CRYPTO": "openssl"}) == {
        "libcrypto": True, "crypto": "openssl", "sha256": SHA256_ABC}
    # the Python data plane's HMAC and a cluster's TLS use Python's OpenSSL bindings
    assert _probe("-r", "192.0.2.1", "--dataplane", "python")["libcrypto"]
    assert _probe("--sync", "redis://127.0.0.1:6379/0")["libcrypto"]


def test_a_bad_crypto_choice_leaves_the_c_plane_unavailable_with_the_reason() -> None:
    code = ("from relay import fastpath; print(fastpath.available()); "
            "print(fastpath.unavailable_reason())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True,
                         env={**os.environ, "ANYTUN_RELAY_CRYPTO": "rot13"}).stdout.splitlines()
    assert out[0] == "False"
    assert "ANYTUN_RELAY_CRYPTO=rot13" in out[1] and "unknown crypto" in out[1]


def test_the_config_file_decides_like_the_command_line(tmp_path: Path) -> None:
    peer = tmp_path / "peer.toml"
    peer.write_text('[tunnel]\nremote_host = "192.0.2.1"\n')
    python_plane = tmp_path / "python.toml"
    python_plane.write_text('[tunnel]\nremote_host = "192.0.2.1"\ndataplane = "python"\n')
    server = tmp_path / "server.toml"
    server.write_text('[node]\ndataplane = "python"\n')
    cluster = tmp_path / "cluster.toml"
    cluster.write_text('[tunnel]\nremote_host = "192.0.2.1"\n'
                       '[cluster]\nsync = "rediss://127.0.0.1:6379/0"\n')
    broken = tmp_path / "broken.toml"
    broken.write_text("[tunnel\n")
    for path, tls, digests in ((peer, False, False), (python_plane, False, True),
                               (server, False, True), (cluster, True, True),
                               (broken, False, False), (tmp_path / "missing.toml", False, False)):
        argv = ["--config", str(path)]
        assert (main.needs_tls(argv), main.needs_openssl_digests(argv)) == (tls, digests), path
    assert main.needs_tls([f"--config={cluster}"])
    assert main.needs_openssl_digests(["--dataplane=python"])
    # a cluster from the file keeps the ssl module, which redis needs even without TLS
    assert _probe("--config", str(cluster))["libcrypto"]
