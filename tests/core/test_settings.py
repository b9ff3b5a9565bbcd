from __future__ import annotations

from pathlib import Path

import pytest

from recsvc.errors import ConfigError
from recsvc.settings import load_settings


def test_defaults_validate() -> None:
    s = load_settings()
    assert s.serving.max_k == 200
    assert s.training.event_weights["purchase"] > s.training.event_weights["add_to_cart"]


def test_env_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[serving]\nport = 1111\nworkers = 3\n")
    monkeypatch.setenv("RECSVC_SERVING__PORT", "2222")
    s = load_settings(cfg)
    assert (s.serving.port, s.serving.workers) == (2222, 3)


def test_unknown_env_key_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECSVC_SERVING__PROT", "1")
    with pytest.raises(ConfigError, match="RECSVC_SERVING__PROT"):
        load_settings()


def test_unknown_file_key_rejected(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[training]\nfactorz = 3\n")
    with pytest.raises(ConfigError, match="factorz"):
        load_settings(cfg)


def test_bad_values_named(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[training]\nevent_weights = { purchase = 1.0, teleport = 2.0 }\n")
    with pytest.raises(ConfigError, match="teleport"):
        load_settings(cfg)


@pytest.mark.parametrize(
    ("toml", "named"),
    [
        ("alpha = inf", r"training\.alpha: Input should be a finite number"),
        ("regularization = nan", r"training\.regularization: Input should be a finite number"),
        ("regularization = 1e300", r"training\.regularization: Input should be less than or equal"),
        ("event_weights = { purchase = nan }", r"training\.event_weights\.purchase: .*finite"),
        ("event_weights = { purchase = 1e308, view = 1e308 }", "event weights must be between 0 and 1000"),
        ("half_life_days = 1e-300", "half_life_days must be 0 .no decay. or at least 0.1"),
        ("trend_weight = nan", r"training\.trend_weight: Input should be a finite number"),
    ],
)
def test_numbers_a_fit_cannot_use_are_refused_by_name(tmp_path: Path, toml: str, named: str) -> None:
    # each of these once passed and failed the fit with NaN factors, or ranked by NaN
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"[training]\n{toml}\n")
    with pytest.raises(ConfigError, match=named):
        load_settings(cfg)


def test_variant_shares_must_sum_to_one() -> None:
    with pytest.raises(ConfigError, match="sum to 1"):
        load_settings(overrides={"serving": {"variants": [{"name": "a", "alias": "champion", "share": 0.5}]}})


def test_the_catalog_writer_needs_its_own_port() -> None:
    with pytest.raises(ConfigError, match=r"catalog\.writer_port 7000 is serving\.port"):
        load_settings(overrides={"serving": {"port": 7000}, "catalog": {"writer_port": 7000}})
    assert load_settings(overrides={"serving": {"port": 7000}, "catalog": {"writer_port": 7001}})


def test_malformed_toml(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[serving\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(cfg)


def test_redis_cluster_url_names_its_seed_nodes() -> None:
    assert load_settings(None, {"redis": {"url": "redis+cluster://10.0.0.1:7000,10.0.0.2:7000"}})
    with pytest.raises(ConfigError, match="host:port"):
        load_settings(None, {"redis": {"url": "redis+cluster://10.0.0.1,10.0.0.2:7000"}})


def test_a_redis_url_without_a_known_scheme_and_a_config_file_not_in_utf8_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a Redis URL: 'notaurl'"):
        load_settings(None, {"redis": {"url": "notaurl"}})
    assert load_settings(None, {"redis": {"url": "unix:///tmp/redis.sock"}})
    cfg = tmp_path / "c.toml"
    cfg.write_bytes(b"[training]\nfactors = 8 # \xff\xfe\n")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load_settings(cfg)
