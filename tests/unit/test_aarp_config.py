"""/etc/aarp.conf parsing and AARP_* overrides: the shared vectors and file handling."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pytest

from aarp import config as c

VECTORS = json.loads((Path(__file__).parents[1] / "vectors" / "aarp" / "config.json").read_text())


def _norm(cfg: c.Config) -> dict:
    return cfg.to_dict()


@pytest.mark.parametrize("case", VECTORS["cases"], ids=[k["name"] for k in VECTORS["cases"]])
def test_config_vectors(case: dict) -> None:
    if "error" in case:
        with pytest.raises(c.ConfigError) as err:
            c.parse(case["text"], "aarp.conf", case["env"])
        assert str(err.value) == case["error"]
        assert "\n" not in str(err.value)
    else:
        assert _norm(c.parse(case["text"], "aarp.conf", case["env"])) == case["config"]


def test_vectors_cover_every_key_and_variable() -> None:
    texts = "\n".join(k["text"] for k in VECTORS["cases"])
    for key in c.KEYS:
        assert f"{key} =" in texts or f"{key}=" in texts, key
    env = {var for k in VECTORS["cases"] for var in k["env"]}
    assert env == set(c.ENV_KEYS)


def test_missing_default_file_is_fine_but_a_named_one_is_not(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(c, "DEFAULT_PATH", str(tmp_path / "absent.conf"))
    cfg = c.load(environ={"AARP_ANYCAST": "10.255.0.0/24"})
    assert cfg.source is None and [str(p) for p in cfg.anycast] == ["10.255.0.0/24"]
    with pytest.raises(c.ConfigError, match="no such file"):
        c.load(environ={"AARP_CONF": str(tmp_path / "nope.conf")})
    with pytest.raises(c.ConfigError, match="no such file"):
        c.load(tmp_path / "nope.conf", environ={})
    with pytest.raises(c.ConfigError, match="is a directory"):
        c.load(tmp_path, environ={})


def test_load_reads_aarp_conf_then_environment(tmp_path: Path) -> None:
    conf = tmp_path / "a.conf"
    conf.write_text("anycast = fd00:aa::/64\nport = 5000\nlog = info\n")
    cfg = c.load(environ={"AARP_CONF": str(conf), "AARP_PORT": "5001"})
    assert cfg.source == str(conf)
    assert (cfg.port, cfg.log, cfg.anycast) == (5001, "info",
                                                (ipaddress.ip_network("fd00:aa::/64"),))
    conf.write_text("anycast = fd00:aa::/64\nbogus = 1\n")
    with pytest.raises(c.ConfigError) as err:
        c.load(conf, environ={})
    assert str(err.value) == f"{conf}:2: unknown key 'bogus'"


def test_binary_garbage_gives_a_line_error_not_a_crash() -> None:
    with pytest.raises(c.ConfigError, match=r"^aarp\.conf:2: "):
        c.parse(b"port = 1\n\xff\xfe\x00garbage = \x80\n")


def test_prefix_matching_and_mapped_addresses() -> None:
    cfg = c.parse("anycast = fd00:aa::/64, fd00:aa::/120, 10.255.0.0/24\n"
                  "allow = fd00:aa::/64 fd00:2::/32\nallow = 10.255.0.0/16 10.2.0.0/16\n"
                  "allow = 10.255.0.0/24 10.9.0.0/16")
    assert str(cfg.anycast_prefix("fd00:aa::1")) == "fd00:aa::/120"
    assert str(cfg.anycast_prefix("fd00:aa::1:0")) == "fd00:aa::/64"
    assert str(cfg.anycast_prefix("::ffff:10.255.0.1")) == "10.255.0.0/24"
    assert cfg.anycast_prefix("fd00:ab::1") is None
    assert cfg.anycast_prefix("10.2.1.2") is None
    assert [str(p) for p in cfg.allowed_unicast("10.255.0.1")] == ["10.9.0.0/16"]
    assert [str(p) for p in cfg.allowed_unicast("fd00:aa::5")] == ["fd00:2::/32"]
    assert cfg.allowed_unicast("fd00:ab::1") is None
    assert cfg.clamp_ttl(0) == 1 and cfg.clamp_ttl(10**9) == 3600 and cfg.clamp_ttl(60) == 60
