"""The prepared device check: valid shell, and its CPU rehearsal runs the same three steps end to end."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


def test_script_is_valid_shell_and_refuses_unknown_modes() -> None:
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    bad = subprocess.run(["bash", str(SCRIPT), "--bogus"], capture_output=True, text=True)
    assert bad.returncode == 2 and "usage" in bad.stderr


@pytest.mark.ray
@pytest.mark.slow
def test_cpu_rehearsal_runs_every_step(tmp_path: Path) -> None:
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run(["bash", str(SCRIPT), "--cpu"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "passed" in (tmp_path / "1_triton_tests.log").read_text()
    assert "chunk" in (tmp_path / "2_kernels.log").read_text()
    log = (tmp_path / "3_campaign.log").read_text()
    assert "rehearsal ok: 4 evaluations" in log and "fp32, chunk kernels" in log
