"""kill -9 of the controller at any moment, then `campaign resume`: nothing lost, nothing repeated, and
the same campaign an uninterrupted run with the same seed records."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import yaml

from hybridnas.store import Store


@pytest.fixture(scope="module")
def write(tiny_campaign: Callable[..., dict[str, Any]]) -> Callable[[Path], Path]:
    """write(folder): the campaign file, in `folder`."""
    campaign = tiny_campaign(
        "resume",
        seed=3,
        # Evolution (its proposals depend on every result so far) with promotions: the hardest to resume.
        search={"strategy": "evolution", "budget": 6, "population": 3, "tournament": 2,
                "successive_halving": {"eta": 2, "rungs": 2}},
        execution={"executor": "inprocess", "workers": 1, "timeout_s": 120},
        hardware={"context_len": 32, "batch_size": 1, "prompt_len": 4, "decode_tokens": 4, "repeats": 1, "warmup": 0},
    )

    def write_(tmp: Path) -> Path:
        path = tmp / "resume.yaml"
        path.write_text(yaml.safe_dump(campaign))
        return path

    return write_

# One torch thread everywhere: training is bit-identical for a fixed thread count.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}


def hybridnas(*args: str, url: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "hybridnas.cli", *args, "--store", url, "--no-export"],
        env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=cwd, text=True,
    )


def history(url: str, name: str) -> list[tuple]:
    """What must not depend on interruptions: each evaluation's design, parents, fidelity, seed and scores."""
    with Store.open(url) as store:
        info = store.get_campaign(name)
        out = []
        for e in store.evaluations(info.id):
            parents = store.candidate(e.candidate_id).parents
            out.append((e.spec_hash, parents, e.fidelity, e.seed, e.origin, e.status, e.metrics.get("accuracy"), e.metrics.get("loss")))
        assert info.status == "finished"
        return out


def count_done(url: str, db: Path, name: str) -> int:
    if not db.exists():
        return 0
    with Store.open(url) as store:
        try:
            info = store.get_campaign(name)
        except LookupError:
            return 0
        return sum(e.status == "done" for e in store.evaluations(info.id))


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, write: Callable[[Path], Path]) -> list[tuple]:
    tmp = tmp_path_factory.mktemp("ref")
    url = f"sqlite:///{tmp / 'ref.db'}"
    path = write(tmp)
    proc = hybridnas("campaign", "launch", str(path), url=url, cwd=tmp)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    return history(url, "resume")


@pytest.mark.parametrize("kill_after", [1, 3])
def test_kill_9_then_resume_equals_an_uninterrupted_run(
    tmp_path: Path, reference: list[tuple], kill_after: int, write: Callable[[Path], Path]
) -> None:
    db = tmp_path / "hnas.db"
    url = f"sqlite:///{db}"
    path = write(tmp_path)
    proc = hybridnas("campaign", "launch", str(path), url=url, cwd=tmp_path)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None and count_done(url, db, "resume") < kill_after:
        time.sleep(0.05)
    assert proc.poll() is None, "the campaign ended before it could be killed; make it longer"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with Store.open(url) as store:
        info = store.get_campaign("resume")
        before = {e.id: e for e in store.evaluations(info.id) if e.status == "done"}
        assert info.lease_owner is not None  # a killed controller leaves its lease behind
    assert kill_after <= len(before) < len(reference)

    # The lease names a dead process of this host, so resume takes over at once.
    resumed = hybridnas("campaign", "resume", "resume", url=url, cwd=tmp_path)
    _, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr
    assert history(url, "resume") == reference
    with Store.open(url) as store:
        after = {e.id: e for e in store.evaluations(info.id)}
        for eid, e in before.items():  # recorded results survived untouched
            assert after[eid].metrics == e.metrics and after[eid].finished_at == e.finished_at


def test_campaign_stop_then_resume_equals_an_uninterrupted_run(
    tmp_path: Path, reference: list[tuple], write: Callable[[Path], Path]
) -> None:
    """`campaign stop` from another process: the controller hands its work back and exits 0; resume finishes it."""
    from typer.testing import CliRunner

    from hybridnas.cli import app

    db = tmp_path / "hnas.db"
    url = f"sqlite:///{db}"
    proc = hybridnas("campaign", "launch", str(write(tmp_path)), url=url, cwd=tmp_path)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None and count_done(url, db, "resume") < 1:
        time.sleep(0.05)
    assert proc.poll() is None, "the campaign ended before it could be stopped; make it longer"
    r = CliRunner().invoke(app, ["campaign", "stop", "resume", "--store", url, "--wait", "120"])
    assert r.exit_code == 0, r.output
    assert "stopped (stopped)" in r.output
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    with Store.open(url) as store:
        info = store.get_campaign("resume")
        assert info.status == "stopped" and info.lease_owner is None and info.stop_requested
        assert not any(e.status == "running" for e in store.evaluations(info.id))
    # Stopping a campaign that is not running says so and changes nothing.
    r = CliRunner().invoke(app, ["campaign", "stop", "resume", "--store", url])
    assert r.exit_code == 0 and "stopped already" in r.output
    resumed = hybridnas("campaign", "resume", "resume", url=url, cwd=tmp_path)
    _, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr
    assert history(url, "resume") == reference
