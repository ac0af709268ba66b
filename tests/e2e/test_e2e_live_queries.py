"""Read commands hammering a SQLite store while a real campaign process writes to it.

The store promises (WAL, reads that never take the write lock) that queries run during a campaign and
never see "database is locked". Here the campaign is a separate process, as in real use, and the
queries run back to back in this one through the CLI until the campaign exits.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from hybridnas.cli import app

BUDGET = 6
CAMPAIGN = {  # seconds of work: six tiny designs, a few steps each, in the campaign's own process
    "name": "live",
    "seed": 0,
    "task": {"name": "mqar", "vocab_size": 16, "seq_len": 16, "num_kv_pairs": 2, "num_train": 64, "num_test": 32},
    "space": {
        "d_model": [16],
        "n_layers": [2],
        "n_heads": [2],
        "hybrid": {"ratio": [0, 1, "all_linear"], "linear_mixer": ["gla", "deltanet", "mamba2"], "gate": ["none", "swish"]},
    },
    "training": {"steps": 8, "batch_size": 8, "eval_batch_size": 32},
    "search": {"strategy": "evolution", "budget": BUDGET, "population": 3, "tournament": 2},
    "execution": {"executor": "inprocess", "workers": 1, "timeout_s": 120},
}
# What a read prints (exit 2) when it runs before the campaign has created its store or its row.
NOT_YET = ("no hybridnas store at", "campaign 'live' not found; no campaigns in")


def _plain(text: str) -> str:
    """Output with rich's error box and line wrapping undone, so phrases can be searched for."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


def _reads(url: str) -> list[list[str]]:
    """One round of every read command, against the campaign being written."""
    store = ["--store", url]
    return [
        ["query", "leaderboard", "live", "--format", "json", *store],
        ["query", "pareto", "live", "-o", "accuracy:max", "-o", "params:min", "--format", "json", *store],
        ["campaign", "show", "live", "--format", "json", *store],
        ["campaign", "show", "live", *store],  # the table, with its top-5 leaderboard
        ["campaign", "list", "--format", "json", *store],
    ]


@pytest.mark.slow
def test_queries_during_a_live_sqlite_campaign_never_see_locked(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'live.db'}"
    path = tmp_path / "live.yaml"
    path.write_text(yaml.safe_dump(CAMPAIGN))
    log = tmp_path / "campaign.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # torch on one thread: the other core runs the queries
    env.pop("HYBRIDNAS_STORE", None)
    with log.open("w") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "hybridnas.cli", "campaign", "launch", str(path), "--store", url, "--no-export"],
            env=env, cwd=tmp_path, stdout=log_file, stderr=subprocess.STDOUT,
        )
        runner = CliRunner()
        calls: list[tuple[list[str], int, str]] = []  # (args, exit code, output + any exception)
        seen_running: list[dict] = []  # `campaign show` while the campaign was mid-way
        deadline = time.monotonic() + 300
        try:
            while proc.poll() is None:
                assert time.monotonic() < deadline, "the campaign did not finish in 300 s"
                for args in _reads(url):
                    r = runner.invoke(app, args)
                    text = _plain(r.output + ("" if r.exception is None else f" {r.exception!r}"))
                    calls.append((args, r.exit_code, text))
                    if args[:2] == ["campaign", "show"] and "--format" in args and r.exit_code == 0:
                        info = json.loads(r.stdout)
                        if info["status"] == "running" and 0 < info["n_done"] < BUDGET:
                            seen_running.append(info)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()

    output = log.read_text()
    assert proc.returncode == 0, output[-3000:]
    assert "locked" not in output.lower(), output[-3000:]

    for args, code, text in calls:
        assert "locked" not in text.lower(), (args, text)
        assert code == 0 or (code == 2 and any(s in text for s in NOT_YET)), (args, code, text)
    # "Not there yet" only before the campaign first showed up; never once it could be read.
    first_ok = next((i for i, (args, code, _) in enumerate(calls) if args[0] == "query" and code == 0), None)
    assert first_ok is not None, f"no query succeeded in {len(calls)} calls"
    late = [(args, code, text) for args, code, text in calls[first_ok:] if code != 0]
    assert not late, late[:3]
    # The reads overlapped the writes: some saw the campaign part-way through.
    assert seen_running, f"no read saw the campaign mid-way in {len(calls)} calls; make the campaign longer"
    assert len(calls) - first_ok >= 20, f"only {len(calls) - first_ok} reads ran while the campaign did"

    r = runner.invoke(app, ["campaign", "show", "live", "--format", "json", "--store", url])
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)
    assert info["status"] == "finished" and info["n_done"] == BUDGET, info
    r = runner.invoke(app, ["query", "leaderboard", "live", "--format", "json", "--store", url])
    assert r.exit_code == 0 and len(json.loads(r.stdout)) == info["n_done"] > 0, r.output
