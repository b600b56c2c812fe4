"""Locate libaarp.so and reach its exported aarp_* API through cffi (ABI mode).

The API answers "what would the preload library do for this address" in this very process
(`resolve`), shows and flushes its cache, checks configurations, and exposes the C message
codec so the tests can hold it against the Python one.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import cffi

from aarp.cdef import cdef_from_header
from aarp.errors import NoAnswer, NotResolvable, ResolveError

if TYPE_CHECKING:
    from aarp.config import Config
    from aarp.resolver import Resolution

# The build installs shim_c/aarp.h beside libaarp.so; it is the one declaration of the API.
HEADER = Path(__file__).resolve().parent / "aarp.h"


ERR_LEN = 8192  # room for the longest one-line configuration error
STATUS = {0: "pass", 1: "pinned", 2: "negative", 3: "failed", 4: "disabled", -1: "bad-address"}
HOW = {0: None, 1: "icmp-source", 2: "icmp-answer", 3: "udp-answer"}
VERIFIED = {0: "none", 1: "prefix", 2: "tag"}


class ShimNotBuilt(RuntimeError):
    """libaarp.so is missing: the package was not built/installed with its C part."""


class ShimConfigError(ValueError):
    """The library's configuration is broken (it passes everything through); one line."""


class ShimMessageError(ValueError):
    """The C codec rejected a message; `code` is the rule's stable name."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


def library_path() -> Path:
    """Absolute path of the preload library shipped inside this package."""
    path = Path(__file__).resolve().parent / "libaarp.so"
    if not path.is_file():
        raise ShimNotBuilt(
            f"{path} does not exist; reinstall the package (pip install .) so the C part is built"
        )
    return path


@functools.cache
def _loaded() -> tuple[cffi.FFI, object]:
    path = library_path()
    if not HEADER.is_file():
        raise ShimNotBuilt(f"{HEADER} does not exist; reinstall the package (pip install .)")
    ffi = cffi.FFI()
    ffi.cdef(cdef_from_header(HEADER.read_text(), drop_tokens=("AARP_API",)))
    # RTLD_NOW: a missing symbol shows up here, not at first use.
    lib = ffi.dlopen(str(path), ffi.RTLD_NOW)
    return ffi, lib


def ffi_and_lib() -> tuple[cffi.FFI, object]:
    """The cffi FFI and the loaded library (loaded once per process)."""
    return _loaded()


def version() -> str:
    ffi, lib = _loaded()
    return ffi.string(lib.aarp_version()).decode()


def preload_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """A copy of `base` (default: os.environ) with libaarp.so first in LD_PRELOAD."""
    env = dict(os.environ if base is None else base)
    existing = env.get("LD_PRELOAD", "").strip()
    lib = str(library_path())
    env["LD_PRELOAD"] = f"{lib} {existing}".strip() if existing else lib
    return env


# -- what the library would do --------------------------------------------------------------
@dataclass(frozen=True)
class ShimResult:
    """The library's decision for one destination address."""

    status: str          # pass | pinned | negative | failed | disabled | bad-address
    address: str         # the address a hooked connect() would use
    cached: bool = False
    how: str | None = None   # icmp-source | icmp-answer | udp-answer
    ttl: int = 0
    verified: str = "none"   # none | prefix | tag


@dataclass(frozen=True)
class CacheEntry:
    """One live entry of the library's cache."""

    anycast: str
    unicast: str | None
    status: str
    how: str | None
    expires_in_ms: int


def resolve(address: str) -> ShimResult:
    """Resolve `address` with the library's own cache, probe and policy (may probe now).

    The configuration is the process's (AARP_CONF, AARP_*), read once at first use; see
    reload_config().
    """
    ffi, lib = _loaded()
    out = ffi.new("struct aarp_result *")
    lib.aarp_resolve(address.encode(), out)
    return ShimResult(STATUS.get(out.status, str(out.status)), ffi.string(out.address).decode(),
                      bool(out.cached), HOW.get(out.how), int(out.ttl),
                      VERIFIED.get(out.verified, "none"))


def cache_entries(limit: int = 1024) -> list[CacheEntry]:
    ffi, lib = _loaded()
    buf = ffi.new("struct aarp_cache_entry[]", limit)
    n = lib.aarp_cache_entries(buf, limit)
    return [CacheEntry(ffi.string(e.anycast).decode(), ffi.string(e.unicast).decode() or None,
                       STATUS.get(e.status, str(e.status)), HOW.get(e.how),
                       int(e.expires_in_ms)) for e in buf[0:n]]


def cache_flush() -> None:
    _loaded()[1].aarp_cache_flush()


def reload_config(path: str | os.PathLike[str] | None = None) -> None:
    """Re-read the configuration now; ShimConfigError if broken (the library is then off)."""
    ffi, lib = _loaded()
    err = ffi.new("char[]", ERR_LEN)
    rc = lib.aarp_config_reload(os.fsencode(path) if path is not None else ffi.NULL, err, ERR_LEN)
    if rc != 0:
        raise ShimConfigError(ffi.string(err).decode(errors="replace"))


def use_config_text(text: str, name: str = "aarp.conf") -> None:
    """Run the library with this configuration text (no environment overrides)."""
    ffi, lib = _loaded()
    data = text.encode()
    err = ffi.new("char[]", ERR_LEN)
    if lib.aarp_config_use(data, len(data), name.encode(), err, ERR_LEN) != 0:
        raise ShimConfigError(ffi.string(err).decode(errors="replace"))


def config_text(cfg: Config) -> str:
    """A configuration file that means exactly `cfg` (environment already applied)."""
    lines = [f"anycast = {p}" for p in cfg.anycast]
    lines += [f"allow = {a} {', '.join(str(u) for u in us)}" for a, us in cfg.allow]
    lines += [f"{k} = {getattr(cfg, k)}" for k in (
        "policy", "method", "port", "timeout_ms", "retries", "grace_ms", "ttl_min", "ttl_max",
        "negative_ttl", "failure_ttl", "key_id", "nonblock_wait_ms")]
    lines.append(f"host_cache = {cfg.host_cache or 'off'}")
    if cfg.key is not None:
        lines.append(f"key = {cfg.key.hex()}")
    if cfg.log is not None:
        lines.append(f"log = {cfg.log}")
    lines.append(f"disable = {'yes' if cfg.disable else 'no'}")
    return "\n".join(lines) + "\n"


_installed: dict[str, str] = {}


def resolution(address: str, cfg: Config) -> Resolution:
    """What libaarp.so does for `address` under `cfg`, probed afresh, as an aarp.resolver
    Resolution (for `aarp-resolve --via-shim`); raises the resolver's ResolveError family."""
    from aarp.resolver import Resolution

    text = config_text(cfg)
    if _installed.get("text") != text:  # each install keeps the old one alive: only on change
        use_config_text(text, cfg.source or "aarp.conf")
        _installed["text"] = text
    cache_flush()
    start = time.monotonic()
    res = resolve(str(address))
    rtt = time.monotonic() - start
    if res.status == "pinned":
        how = res.how or ""
        return Resolution(anycast=str(address), unicast=res.address,
                          learned="source" if how == "icmp-source" else "inband",
                          method="udp" if how == "udp-answer" else "icmp", ttl=res.ttl,
                          rtt=rtt, verified=res.verified != "none",
                          verification=res.verified)
    if res.status == "negative":
        raise NotResolvable(str(address), "libaarp.so: the address answers but nothing resolves "
                            "it; connections use it unchanged")
    if res.status == "failed":
        raise NoAnswer(str(address), "libaarp.so: no acceptable answer in time; connections "
                       "use the address unchanged (fail open)")
    if res.status == "pass":
        raise ResolveError(str(address), "outside the configured anycast prefixes: libaarp.so "
                           "leaves it unchanged (configure 'anycast' or AARP_ANYCAST)")
    if res.status == "disabled":
        why = config_error() or "disabled by the configuration"
        raise ResolveError(str(address), f"libaarp.so is disabled: {why}")
    raise ResolveError(str(address), "not an IP address")


def active_config() -> dict:
    """The configuration the library runs with, in tests/vectors/aarp/config.json's shape."""
    ffi, lib = _loaded()
    buf = ffi.new("char[]", 65536)
    lib.aarp_config_json(buf, 65536)
    return json.loads(ffi.string(buf).decode())


def config_error() -> str:
    """Why the library is disabled by its configuration; '' when it is fine."""
    ffi, lib = _loaded()
    return ffi.string(lib.aarp_config_error()).decode(errors="replace")


def check_config(text: str | bytes, name: str = "aarp.conf",
                 environ: Mapping[str, str] | None = None) -> dict:
    """Parse a configuration with the C reader (nothing global changes); ShimConfigError."""
    ffi, lib = _loaded()
    data = text.encode() if isinstance(text, str) else text
    keep = [ffi.new("char[]", os.fsencode(k) + b"=" + os.fsencode(v))
            for k, v in (environ or {}).items()]
    env = ffi.new("char *[]", [*keep, ffi.NULL])
    out = ffi.new("char[]", 65536)
    rc = lib.aarp_config_check(data, len(data), name.encode(), env, out, 65536)
    text_out = ffi.string(out).decode(errors="replace")
    if rc != 0:
        raise ShimConfigError(text_out)
    return json.loads(text_out)


def check_load(path: str | os.PathLike[str] | None = None,
               environ: Mapping[str, str] | None = None) -> dict:
    """Read a configuration the way the library does at start-up: `path` (None: AARP_CONF of
    `environ`, else /etc/aarp.conf) and then `environ`; ShimConfigError if it is broken."""
    ffi, lib = _loaded()
    keep = [ffi.new("char[]", os.fsencode(k) + b"=" + os.fsencode(v))
            for k, v in (environ or {}).items()]
    env = ffi.new("char *[]", [*keep, ffi.NULL])
    out = ffi.new("char[]", 65536)
    rc = lib.aarp_config_check_load(os.fsencode(path) if path is not None else ffi.NULL, env,
                                    out, 65536)
    text_out = ffi.string(out).decode(errors="replace")
    if rc != 0:
        raise ShimConfigError(text_out)
    return json.loads(text_out)


# -- the C message codec --------------------------------------------------------------------
def decode_message(data: bytes) -> dict:
    """Decode with the C codec: a dict of fields, or ShimMessageError(code)."""
    ffi, lib = _loaded()
    out = ffi.new("struct aarp_message *")
    rc = lib.aarp_message_decode(data, len(data), out)
    if rc != 0:
        raise ShimMessageError(ffi.string(lib.aarp_message_error(rc)).decode())
    fields: dict = {"kind": "query" if out.kind == 1 else "answer", "flags": out.flags,
                    "nonce": bytes(ffi.buffer(out.nonce)).hex()}
    if out.kind == 2:
        fields.update(
            unicast6=str(ipaddress.IPv6Address(bytes(ffi.buffer(out.unicast6))))
            if out.has_unicast6 else None,
            unicast4=str(ipaddress.IPv4Address(bytes(ffi.buffer(out.unicast4))))
            if out.has_unicast4 else None,
            ttl=out.ttl,
            anycast=str(ipaddress.ip_address(bytes(ffi.buffer(out.anycast))[:out.anycast_len])),
            key_id=out.key_id if out.has_key_id else None,
            tag=bytes(ffi.buffer(out.tag)).hex() if out.has_tag else None,
            signed_length=int(out.signed_len) if out.has_tag else None)
    return fields


def encode_query(nonce: bytes, size: int = 96) -> bytes:
    ffi, lib = _loaded()
    out = ffi.new("unsigned char[]", 512)
    n = lib.aarp_message_query(nonce, size, out)
    if n == 0:
        raise ValueError(f"impossible query size {size}")
    return bytes(ffi.buffer(out, n))


def encode_answer(nonce: bytes, anycast: str, ttl: int, *, unicast6: str | None = None,
                  unicast4: str | None = None, key: bytes | None = None,
                  key_id: int = 0) -> bytes:
    ffi, lib = _loaded()
    out = ffi.new("unsigned char[]", 512)
    n = lib.aarp_message_answer(nonce, anycast.encode(), (unicast6 or "").encode(),
                                (unicast4 or "").encode(), ttl, key or ffi.NULL,
                                len(key or b""), key_id, out)
    if n == 0:
        raise ValueError("bad answer fields")
    return bytes(ffi.buffer(out, n))


def tag_valid(data: bytes, key: bytes) -> bool:
    _, lib = _loaded()
    return bool(lib.aarp_message_tag_valid(data, len(data), key, len(key)))


def hmac_sha256(key: bytes, data: bytes) -> bytes:
    ffi, lib = _loaded()
    out = ffi.new("unsigned char[]", 32)
    lib.aarp_hmac_sha256(key, len(key), data, len(data), out)
    return bytes(ffi.buffer(out, 32))
