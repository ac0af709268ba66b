"""The installed package: public names resolve, stages import only as hybridnas.<stage>."""

from __future__ import annotations

import subprocess
import sys

import pytest

import hybridnas


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
