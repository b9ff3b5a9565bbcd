"""Pseudonyms (stable, keyed) and the erasure list / apply_erasures."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pandas as pd
import pytest

from recsvc.errors import ConfigError, InvalidArgument
from recsvc.security.privacy import ErasureList, Pseudonymizer, apply_erasures
from recsvc.security.wiring import build_server_security
from recsvc.settings import load_settings

KEY_A = "key-a-0123456789abcdef"
KEY_B = "key-b-0123456789abcdef"


def test_pseudonym_stable_and_keyed() -> None:
    a1, a2, b = Pseudonymizer(KEY_A), Pseudonymizer(KEY_A), Pseudonymizer(KEY_B)
    assert a1("M0001") == a2("M0001")
    assert a1("M0001") != a1("M0002")
    assert a1("M0001") != b("M0001")
    assert "M0001" not in a1("M0001")
    assert a1("M0001").startswith("p_") and len(a1("M0001")) == 34


def test_short_key_refused() -> None:
    with pytest.raises(ConfigError, match="16 characters"):
        Pseudonymizer("short")


def test_pseudonyms_under_every_key_current_first() -> None:
    rotated = Pseudonymizer(KEY_B, [KEY_A])
    assert rotated.pseudonyms("M0001") == (Pseudonymizer(KEY_B)("M0001"), Pseudonymizer(KEY_A)("M0001"))
    assert rotated("M0001") == Pseudonymizer(KEY_B)("M0001")  # records are named under the current key
    assert Pseudonymizer(KEY_A).pseudonyms("M0001") == (Pseudonymizer(KEY_A)("M0001"),)
    assert Pseudonymizer(KEY_A, [KEY_A]).pseudonyms("M0001") == (Pseudonymizer(KEY_A)("M0001"),)


def test_previous_keys_from_the_environment_reach_the_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECSVC_SECURITY__PSEUDONYM_KEY", KEY_B)
    monkeypatch.setenv("RECSVC_SECURITY__PREVIOUS_PSEUDONYM_KEYS", json.dumps([KEY_A]))
    settings = load_settings()
    assert settings.security.previous_pseudonym_keys == [KEY_A]
    security = build_server_security(settings)
    assert security.pseudonymizer.pseudonyms("M1") == (Pseudonymizer(KEY_B)("M1"), Pseudonymizer(KEY_A)("M1"))


def test_short_previous_key_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECSVC_SECURITY__PREVIOUS_PSEUDONYM_KEYS", json.dumps([KEY_A, "old-and-short"]))
    with pytest.raises(
        ConfigError, match=r"security\.previous_pseudonym_keys\[1\] must be at least 16 characters"
    ):
        build_server_security(load_settings())


def test_dev_key_detected() -> None:
    assert Pseudonymizer("dev-only-change-me").is_dev_key
    assert not Pseudonymizer(KEY_A).is_dev_key


def test_erasure_list_appends_once_and_reads_as_set(tmp_path: Path) -> None:
    el = ErasureList(tmp_path / "privacy" / "erasures.txt")
    assert el.read() == frozenset()
    assert el.add("M1") is True
    assert el.add("M2") is True
    assert el.add("M1") is False
    assert el.read() == {"M1", "M2"}
    assert "M2" in el and "M3" not in el
    assert el.path.read_text() == "M1\nM2\n"


def test_the_start_up_check_of_the_erasure_list_tries_the_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: security.erasure_list was checked with os.access, which says yes to root for a
    folder under /proc, so the server started and the first ForgetMember failed. Like the audit
    log's check it now tries the write itself, and writes nothing."""
    from recsvc.security.wiring import check_server_security

    monkeypatch.setenv("RECSVC_SECURITY__ALLOW_INSECURE_DEV", "true")
    monkeypatch.setenv("RECSVC_SECURITY__AUDIT_LOG", str(tmp_path / "audit" / "audit.log"))
    for path, why in (
        (f"/proc/recsvc-no-such-{tmp_path.name}/erasures.txt", "cannot be created"),
        ("/proc/version", "cannot be opened for appending"),
    ):
        with pytest.raises(OSError):
            ErasureList(Path(path)).check_appendable()
        settings = load_settings(overrides={"security": {"erasure_list": path}})
        with pytest.raises(ConfigError, match=f"security.erasure_list '{path}' {why}"):
            check_server_security(settings)
    good = tmp_path / "privacy" / "erasures.txt"
    check_server_security(load_settings(overrides={"security": {"erasure_list": str(good)}}))
    assert good.parent.is_dir() and list(good.parent.iterdir()) == []  # the folder only
    ErasureList(good).add("M1")
    ErasureList(good).check_appendable()
    assert good.read_text() == "M1\n"


def test_erasure_list_refuses_multiline_ids(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument):
        ErasureList(tmp_path / "e.txt").add("M1\nM2")


def _events() -> pd.DataFrame:
    return pd.DataFrame({"member_id": ["M1", "M2", "M1", "M3"], "item_id": ["A", "B", "C", "D"]})


def test_apply_erasures_dataframe() -> None:
    out = apply_erasures(_events(), {"M1"})
    assert list(out["member_id"]) == ["M2", "M3"]
    assert list(out["item_id"]) == ["B", "D"]


def test_apply_erasures_mapping_and_frames_without_members() -> None:
    catalog = pd.DataFrame({"item_id": ["A"]})
    out = apply_erasures({"events": _events(), "catalog": catalog}, ["M3", "M2"])
    assert set(out["events"]["member_id"]) == {"M1"}
    assert out["catalog"] is catalog


def test_apply_erasures_dataclass_does_not_modify_input() -> None:
    @dataclasses.dataclass(frozen=True)
    class Dataset:
        events: pd.DataFrame
        members: pd.DataFrame
        name: str

    ds = Dataset(_events(), pd.DataFrame({"member_id": ["M1", "M2"]}), "x")
    out = apply_erasures(ds, {"M2"})
    assert list(out.members["member_id"]) == ["M1"]
    assert "M2" not in set(out.events["member_id"])
    assert len(ds.events) == 4 and out.name == "x"


def test_apply_erasures_unknown_shape_refused() -> None:
    with pytest.raises(TypeError, match="cannot filter"):
        apply_erasures([1, 2], {"M1"})


def test_apply_erasures_plain_object_with_frames() -> None:
    import types

    ds = types.SimpleNamespace(events=_events(), counts={"events": 4})
    out = apply_erasures(ds, {"M1", "M3"})
    assert list(out.events["member_id"]) == ["M2"]
    assert len(ds.events) == 4 and out.counts == {"events": 4}
