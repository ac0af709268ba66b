"""The installed package: public names resolve, stages import only as hybridnas.<stage>, and a wheel
ships every stage's code (each folder with Python or template files is a package in pyproject.toml, so
a non-editable install, e.g. a wheel on a cluster node, imports all of it)."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import hybridnas

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", hybridnas.__all__)
def test_public_names_resolve(name: str) -> None:
    assert getattr(hybridnas, name) is not None


@pytest.mark.parametrize("stage", ["space", "codegen", "kernels", "store", "workers", "search"])
def test_stages_are_not_top_level_packages(stage: str, tmp_path) -> None:
    # Run from an empty folder so the repository root is not on sys.path.
    code = f"import importlib.util, sys; sys.exit(importlib.util.find_spec({stage!r}) is not None and 'hybridnas' in str(importlib.util.find_spec({stage!r}).origin))"
    ok = subprocess.run([sys.executable, "-c", f"import hybridnas.{stage}"], cwd=tmp_path)
    assert ok.returncode == 0
    plain = subprocess.run([sys.executable, "-c", code], cwd=tmp_path)
    assert plain.returncode == 0, f"`import {stage}` resolves to hybridnas's folder"


def test_cli_help_lists_every_stage_command() -> None:
    out = subprocess.run([sys.executable, "-m", "hybridnas.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for cmd in ("campaign", "query", "space", "export"):
        assert cmd in out.stdout

def _setuptools() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def _folder(package: str, package_dir: dict[str, str]) -> Path:
    # The longest mapped prefix decides, as in setuptools.
    parts = package.split(".")
    for n in range(len(parts), 0, -1):
        head = ".".join(parts[:n])
        if head in package_dir:
            return ROOT / package_dir[head] / Path(*parts[n:])
    raise AssertionError(f"{package} is under no package-dir entry")


def test_every_code_folder_is_a_listed_package() -> None:
    cfg = _setuptools()
    listed = {_folder(p, cfg["package-dir"]).resolve() for p in cfg["packages"]}
    roots = {(ROOT / d).resolve() for d in cfg["package-dir"].values()}
    shipped = set()
    for root in roots:
        for f in root.rglob("*"):
            if f.suffix in (".py", ".j2") and "__pycache__" not in f.parts:
                shipped.add(f.parent.resolve())
    missing = sorted(str(d.relative_to(ROOT)) for d in shipped - listed)
    assert not missing, f"folders with code or templates missing from [tool.setuptools] packages: {missing}"
    for p in cfg["packages"]:
        assert _folder(p, cfg["package-dir"]).is_dir(), f"listed package {p} has no folder"


def test_templates_are_package_data() -> None:
    cfg = _setuptools()
    for package in ("hybridnas.codegen.templates", "hybridnas.report.templates"):
        folder = _folder(package, cfg["package-dir"])
        assert list(folder.glob("*.j2")), folder
        assert cfg["package-data"][package] == ["*.j2"]
