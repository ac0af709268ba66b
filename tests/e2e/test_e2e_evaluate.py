"""An export re-scored on fresh data agrees with the score it was exported with."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

import hybridnas
from hybridnas.cli import app

CONFIG = {
    "name": "rescore",
    "seed": 3,
    "task": {"name": "mqar", "vocab_size": 24, "seq_len": 16, "num_kv_pairs": 2, "num_train": 600, "num_test": 200},
    "space": {"d_model": [32], "n_layers": [2], "n_heads": [2], "hybrid": {"ratio": [1], "linear_mixer": ["gated_deltanet"], "short_conv": [True]}},
    "training": {"steps": 60, "batch_size": 32, "lr": 3e-3, "eval_batch_size": 200},
    "search": {"strategy": "grid", "budget": 1},
    "execution": {"executor": "inprocess", "workers": 1, "timeout_s": 300},
}


def test_export_records_what_reproduces_it_and_rescoring_agrees(tmp_path: Path) -> None:
    with hybridnas.run_campaign(CONFIG, store=f"sqlite:///{tmp_path / 'r.db'}") as run:
        out = run.export(tmp_path / "export")
    meta = json.loads((out / "config.json").read_text())["metadata"]
    assert meta["task_config"] == {**CONFIG["task"], "name": "mqar", "power_a": 0.01}
    assert meta["seed"] == 3 and meta["seeds"] == [3]
    assert meta["training"]["lr"] == 3e-3 and meta["training"]["val_fraction"] == 0.1
    stored = meta["metrics"]["accuracy"]
    assert 0.4 < stored < 1.0  # learned something, not saturated: agreement is informative

    result = CliRunner().invoke(app, ["evaluate", str(out), "--num-test", "600", "--format", "json"])
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.output)
    assert row["fresh_seed"] == 1003 and row["trained_seed"] == 3 and row["sequences"] == 600
    assert row["fresh_low"] <= row["fresh_accuracy"] <= row["fresh_high"]
    assert row["agree"] is True, row
    assert abs(row["fresh_accuracy"] - stored) <= row["margin"]

    table = CliRunner().invoke(app, ["evaluate", str(out)])
    assert table.exit_code == 0 and "agree" in table.output and "stored accuracy" in table.output
    refused = CliRunner().invoke(app, ["evaluate", str(out), "--seed", "3"])
    assert refused.exit_code == 2 and "--seed: 3 was used by the campaign" in " ".join(refused.output.split())
    missing = CliRunner().invoke(app, ["evaluate", str(tmp_path / "nowhere")])
    assert missing.exit_code == 2 and "has no config.json" in " ".join(missing.output.split())
