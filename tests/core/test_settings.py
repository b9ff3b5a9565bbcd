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


def test_env_unsets_an_optional_setting_the_file_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[training]\ntrend_weight = 0.35\nblend_als_weight = 0.5\n")
    assert load_settings(cfg).training.trend_weight == 0.35
    for unset in ("", "none", "NULL"):
        monkeypatch.setenv("RECSVC_TRAINING__TREND_WEIGHT", unset)
        assert load_settings(cfg).training.trend_weight is None
    monkeypatch.setenv("RECSVC_TRAINING__BLEND_ALS_WEIGHT", "0.7")
    assert load_settings(cfg).training.blend_als_weight == 0.7
    # a setting that cannot be unset: empty is its value, judged as such (not "invalid JSON")
    monkeypatch.setenv("RECSVC_SERVING__PORT", "")
    with pytest.raises(ConfigError, match=r"serving\.port") as exc:
        load_settings(cfg)
    assert "JSON" not in str(exc.value)


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


def test_a_variant_name_is_one_a_log_line_or_label_can_hold() -> None:
    """A variant name goes into key=value log lines, metric labels and report headings: a space
    or '=' in it would forge a key in the log."""
    one = {"alias": "champion", "share": 1.0}
    with pytest.raises(ConfigError, match="name"):
        load_settings(overrides={"serving": {"variants": [{"name": "b x=1", **one}]}})
    assert load_settings(overrides={"serving": {"variants": [{"name": "spring-2026_b.v2", **one}]}})


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


def test_default_folders_are_under_the_project_home_wherever_a_command_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    for name in [n for n in os.environ if n.startswith("RECSVC_")]:
        monkeypatch.delenv(name)  # the suite points some of these at its own folders
    home = tmp_path / "home"
    monkeypatch.setenv("RECSVC_HOME", str(home))
    monkeypatch.chdir(tmp_path)
    s = load_settings()
    for path in (
        s.security.audit_log,
        s.security.erasure_list,
        s.events.log_dir,
        s.serving.bundle_cache_dir,
        s.data.data_dir,
    ):
        assert path.is_absolute() and path.is_relative_to(home.resolve()), path
    monkeypatch.setenv("RECSVC_EVENTS__LOG_DIR", "mine")
    assert load_settings().events.log_dir == Path("mine")  # a path given is taken as given
