"""Dependencies by role (pyproject.toml): a server install (`pip install recsvc`) carries what
`recsvc serve` needs and nothing of training, load tests or code generation; the serving code
path imports none of them either."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
NOT_ON_A_SERVER = {"optuna", "matplotlib", "grpcio-tools", "implicit", "locust", "mlflow", "pyspark"}


def _closure(requirements: list[str]) -> set[str]:
    """Every installed distribution the requirements pull in (extras not taken)."""
    seen: set[str] = set()
    todo = [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        name = canonicalize_name(req.name)
        if name in seen:
            continue
        seen.add(name)
        try:
            todo.extend(Requirement(r) for r in metadata.requires(req.name) or [])
        except metadata.PackageNotFoundError:
            continue
    return seen


def test_a_server_install_pulls_nothing_of_training_load_tests_or_codegen() -> None:
    core = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pulled = _closure(core)
    assert "grpcio" in pulled and "faiss-cpu" in pulled  # the walk follows real metadata
    assert not pulled & NOT_ON_A_SERVER, sorted(pulled & NOT_ON_A_SERVER)


def test_no_benchmark_code_is_packaged() -> None:
    from setuptools import find_packages

    found = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    packaged = find_packages(where=str(ROOT), include=found["include"])
    assert "recsvc" in packaged and "training" in packaged
    assert not [p for p in packaged if p == "bench" or ".bench" in p or p.startswith("bench.")], packaged


def test_the_closure_walk_finds_a_heavy_dependency_when_there_is_one() -> None:
    assert "matplotlib" in _closure(["mlflow>=3.17,<3.18"])


def test_a_command_whose_extra_is_missing_names_the_extra_to_install() -> None:
    import typer

    from recsvc.cli.common import console, friendly_errors

    @friendly_errors
    def command() -> None:
        raise ModuleNotFoundError("No module named 'implicit'", name="implicit")

    with console.capture() as printed, pytest.raises(typer.Exit) as stopped:
        command()
    assert stopped.value.exit_code == 2
    assert "pip install 'recsvc[train]'" in printed.get()


def test_the_serving_path_imports_no_training_code() -> None:
    # (grpc_tools is not in the list: grpc's own __init__ imports it when it happens to be installed.)
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from recsvc.cli import app\n"
        "import recsvc.server.app, recsvc.server.runner, recsvc.models, recsvc.engine.recommender\n"
        "assert CliRunner().invoke(app, ['serve', '--help']).exit_code == 0\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'training', 'implicit', 'optuna', 'matplotlib', 'locust', 'pyspark'})\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "", out.stdout
