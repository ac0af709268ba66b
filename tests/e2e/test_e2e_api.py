"""A campaign driven from Python through the public API only: `hybridnas.run_campaign` and its handle."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import hybridnas
from hybridnas.search import Observation, Proposal, Strategy

CONFIG = {
    "name": "api",
    "seed": 0,
    "task": {"name": "mqar", "vocab_size": 32, "seq_len": 24, "num_kv_pairs": 3, "num_train": 256, "num_test": 64},
    "space": {
        "d_model": [16],
        "n_layers": [2],
        "n_heads": [2],
        "hybrid": {"ratio": [0, 1, "all_linear"], "linear_mixer": ["gla", "kda"], "gate": ["none", "swish"]},
    },
    "training": {"steps": 10, "batch_size": 16, "eval_batch_size": 64},
    "search": {"strategy": "random", "budget": 4},
    "execution": {"executor": "inprocess", "workers": 1, "timeout_s": 120},
    "objectives": [{"metric": "accuracy", "direction": "maximize"}, {"metric": "cost_state_bytes", "direction": "minimize"}],
}


class LowestStateFirst(Strategy):
    """A strategy of the user's own, never registered: proposes designs by increasing decode state."""

    def __init__(self, space, seed, directions=("maximize",)) -> None:
        super().__init__(space, seed, directions)
        from hybridnas.space import estimate_cost

        self.queue = sorted(space.designs(), key=lambda s: (estimate_cost(s, 512).state_bytes, s.spec_hash))
        self.seen: list[Observation] = []

    def propose(self, n: int) -> list[Proposal]:
        return [Proposal(self.queue.pop(0) if self.queue else self.space.sample(self.rng)) for _ in range(n)]

    def observe(self, observation: Observation) -> None:
        self.seen.append(observation)


def test_run_campaign_leaderboard_pareto_export(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'api.db'}"
    with hybridnas.run_campaign(CONFIG, store=url) as run:
        assert run.name == "api" and run.status == "finished"
        assert run.summary is not None and run.summary.evaluated == 4
        board = run.leaderboard()
        assert len(board) == 4 and [r["rank"] for r in board] == [1, 2, 3, 4]
        assert board[0]["accuracy"] >= board[-1]["accuracy"]
        front = run.pareto()
        assert front and {r["candidate_id"] for r in front} <= {r["candidate_id"] for r in board}
        assert run.winner()["text"]
        out = run.export(tmp_path / "export")
    config = json.loads((out / "config.json").read_text())
    assert config["metadata"]["candidate_id"] == board[0]["candidate_id"]
    # The export runs where only torch and safetensors can be imported.
    code = (
        "import sys; sys.modules['hybridnas'] = None; sys.path.insert(0, sys.argv[1]); import torch, glob, importlib, os\n"
        "name = os.path.basename(glob.glob(sys.argv[1] + '/modeling_*.py')[0])[:-3]\n"
        "m = importlib.import_module(name); model = m.load(sys.argv[1])\n"
        "assert m.KERNELS == 'torch'; print(tuple(model(torch.zeros(1, 5, dtype=torch.long)).shape))"
    )
    done = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "(1, 5, 32)"
    # The same results, opened later.
    with hybridnas.open_campaign("api", store=url) as again:
        assert again.leaderboard() == board


def test_a_strategy_of_ones_own_runs_without_registering(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'own.db'}"
    strategy_holder: dict[str, LowestStateFirst] = {}

    class Recording(LowestStateFirst):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            strategy_holder["it"] = self

    with hybridnas.run_campaign(CONFIG, store=url, strategy=Recording, name="own") as run:
        rows = run.leaderboard()
    strategy = strategy_holder["it"]
    assert len(strategy.seen) == 4  # the controller told it every result
    # It proposed the four designs with the smallest decode state, in that order.
    designs = sorted(strategy.space.designs(), key=lambda s: (hybridnas.estimate_cost(s, 512).state_bytes, s.spec_hash))
    assert [o.spec.spec_hash for o in strategy.seen] == [s.spec_hash for s in designs[:4]]
    assert sorted(r["spec_hash"] for r in rows) == sorted(s.spec_hash for s in designs[:4])


def test_existing_name_needs_resume(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'twice.db'}"
    config = {**CONFIG, "name": "twice", "search": {"strategy": "random", "budget": 2}}
    hybridnas.run_campaign(config, store=url).close()
    with pytest.raises(ValueError, match="name: campaign 'twice' already exists"):
        hybridnas.run_campaign(config, store=url)
    with hybridnas.run_campaign(config, store=url, resume=True) as run:
        assert run.summary.evaluated == 2  # nothing left to run: the recorded two


def test_to_dataframe(tmp_path: Path) -> None:
    import pandas as pd  # an optional extra of the package (hybridnas[pandas]); the test extra installs it

    with hybridnas.run_campaign({**CONFIG, "name": "df", "search": {"strategy": "random", "budget": 2}}, store=f"sqlite:///{tmp_path / 'df.db'}") as run:
        frame = run.to_dataframe()
    assert isinstance(frame, pd.DataFrame) and len(frame) == 2 and "accuracy" in frame.columns


@pytest.mark.parametrize("mixer", ["kda", "mamba"])
def test_new_mixers_are_searchable_end_to_end(tmp_path: Path, mixer: str) -> None:
    """Campaign -> export -> reload where only torch (and safetensors) can be imported: same logits."""
    import torch

    config = {
        **CONFIG,
        "name": f"e2e-{mixer}",
        "space": {"d_model": [16], "n_layers": [2], "n_heads": [2], "hybrid": {"ratio": [1], "linear_mixer": [mixer], "short_conv": [True]}},
        "search": {"strategy": "grid", "budget": 1},
    }
    with hybridnas.run_campaign(config, store=f"sqlite:///{tmp_path / 'm.db'}") as run:
        (row,) = run.leaderboard()
        assert row["label"].startswith(mixer) and row["accuracy"] > 0
        out = run.export(tmp_path / "export")
    ids = torch.randint(0, 32, (2, 9), generator=torch.Generator().manual_seed(0))
    from hybridnas.workers.rescore import load_export

    model, _ = load_export(out)
    with torch.no_grad():
        expected = model(ids)
    torch.save(ids, tmp_path / "ids.pt")
    code = (
        "import sys, glob, importlib, os; sys.modules['hybridnas'] = None; sys.path.insert(0, sys.argv[1]); import torch\n"
        "name = os.path.basename(glob.glob(sys.argv[1] + '/modeling_*.py')[0])[:-3]\n"
        "m = importlib.import_module(name); assert m.KERNELS == 'torch'\n"
        "with torch.no_grad(): torch.save(m.load(sys.argv[1])(torch.load(sys.argv[2])), sys.argv[3])"
    )
    subprocess.run([sys.executable, "-c", code, str(out), str(tmp_path / "ids.pt"), str(tmp_path / "out.pt")], check=True)
    torch.testing.assert_close(torch.load(tmp_path / "out.pt"), expected, rtol=1e-4, atol=1e-5)
