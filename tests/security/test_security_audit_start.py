"""`recsvc serve` refuses to start when its audit log cannot be appended to: a server that starts
anyway serves admin calls and loses their audit entries."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from bundle_factory import PlantedBundle
from serving_harness import serve_env, serve_subprocess, stop_subprocess, wait_serving

from recsvc.localstack import free_port

pytestmark = [pytest.mark.integration]


def _head_is_a_folder(tmp: Path) -> Path:
    log = tmp / "audit" / "audit.log"
    (tmp / "audit" / "audit.log.head").mkdir(parents=True)  # each append replaces the head file
    return log


def _under_proc(tmp: Path) -> Path:
    # no folder can be made in /proc, though os.access says root could
    return Path(f"/proc/recsvc-no-such-{tmp.name}/audit.log")


def _a_folder(tmp: Path) -> Path:
    (tmp / "logs").mkdir()
    return tmp / "logs"


@pytest.mark.parametrize("audit_log", [_head_is_a_folder, _under_proc, _a_folder])
def test_serve_refuses_an_audit_log_it_cannot_append_to(
    planted: PlantedBundle, redis_url: str, tmp_path: Path, audit_log: object
) -> None:
    path = audit_log(tmp_path)  # type: ignore[operator]
    env = serve_env(planted.path, redis_url, free_port(), tmp_path)
    env["RECSVC_SECURITY__AUDIT_LOG"] = str(path)
    proc = serve_subprocess(env)
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        stop_subprocess(proc)
        pytest.fail(f"recsvc serve started with security.audit_log {str(path)!r}")
    text = err.decode()
    assert proc.returncode == 2, text
    assert f"error INVALID_CONFIG: security.audit_log {str(path)!r}" in text, text
    not_logged = [line for line in text.splitlines() if line.strip() and " level=" not in line]
    assert "Traceback" not in text and len(not_logged) == 1, text


def test_serve_starts_with_an_audit_log_whose_folders_it_creates(
    planted: PlantedBundle, redis_url: str, tmp_path: Path
) -> None:
    port = free_port()
    env = serve_env(planted.path, redis_url, port, tmp_path)
    path = tmp_path / "var" / "audit" / "audit.log"
    env["RECSVC_SECURITY__AUDIT_LOG"] = str(path)
    proc = serve_subprocess(env)
    try:
        wait_serving(f"127.0.0.1:{port}")
    finally:
        assert stop_subprocess(proc) == 0
    # the start-up check writes nothing: an empty log without its head would fail `audit verify`
    assert path.parent.is_dir() and list(path.parent.iterdir()) == []
