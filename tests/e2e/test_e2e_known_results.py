"""The fast subset of benchmarks/known_results.py: init parity over every mixer, and one published
ordering trained end to end through the campaign machinery (two-layer attention solves 8-pair MQAR)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _module():
    spec = importlib.util.spec_from_file_location("known_results", ROOT / "benchmarks" / "known_results.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["known_results"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_fast_subset_agrees_with_the_literature(tmp_path: Path) -> None:
    known = _module()
    out = tmp_path / "known.json"
    code = known.main(["--fast", "--executor", "inprocess", "--store-dir", str(tmp_path), "--json", str(out)])
    report = json.loads(out.read_text())
    assert [r["check"] for r in report] == ["init_parity", "attention_solves_mqar"]
    assert all(r["agrees"] for r in report), report
    assert code == 0
    assert "mqar8 attention:AA:" in report[1]["measured"] and "n=1" in report[1]["measured"]


def test_every_check_builds_valid_campaigns() -> None:
    """Every check's campaigns validate, and the designs they enumerate are the ones its verdict reads."""
    from hybridnas.search import parse_campaign

    known = _module()
    for name, make in known.CHECKS.items():
        check = make(3, [1e-3, 3e-3])
        designs = set()
        for tag, config in check.campaigns:
            campaign = parse_campaign(config)
            assert config["search"]["reevaluate"] == {"top_k": config["search"]["budget"], "seeds": 2}
            assert len(campaign.space.designs()) == config["search"]["budget"], name
            designs |= {(tag, known._design_key(d)) for d in campaign.space.designs()}
        # A verdict over made-up figures touches only designs the campaigns produce.
        fake = {key: known.Figure((0.5, 0.6, 0.7)) for key in designs}
        verdict = check.verdict(fake)
        assert isinstance(verdict.agrees, bool) and verdict.measured, name


def test_mqar_probe_trains_and_reports_every_rate(capsys: pytest.CaptureFixture[str]) -> None:
    """benchmarks/mqar_probe.py, the probe the known-results explanations quote, at a toy size."""
    spec = importlib.util.spec_from_file_location("mqar_probe", ROOT / "benchmarks" / "mqar_probe.py")
    assert spec is not None and spec.loader is not None
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    args = ["--mixer", "deltanet", "--layers", "1", "--vocab", "32", "--seq-len", "16", "--pairs", "4",
            "--num-train", "200", "--steps", "10", "--lr", "0.001", "0.003", "--expand-k", "0.25"]
    assert probe.main(args) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("deltanet d64 L conv | 4 pairs, seed 0: test "), line
    assert "lr 0.001: val " in line and "lr 0.003: val " in line and "10 steps" in line
