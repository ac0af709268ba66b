"""The training protocol (lr sweep on validation, early-stopping target) composes with successive
halving, extra seeds, task suites and resume."""

from __future__ import annotations

from pathlib import Path

import hybridnas

TASK = {"name": "mqar", "vocab_size": 24, "seq_len": 16, "num_kv_pairs": 2, "num_train": 200, "num_test": 48}
CONFIG = {
    "name": "protocol",
    "seed": 0,
    "task": {"name": "suite", "members": [{**TASK, "key": "easy", "weight": 2.0}, {**TASK, "num_kv_pairs": 3, "key": "hard"}]},
    "space": {"d_model": [16], "n_layers": [2], "n_heads": [2], "hybrid": {"ratio": [0, 1, "all_linear"], "linear_mixer": ["gla", "deltanet"]}},
    "training": {
        "steps": 12,
        "batch_size": 16,
        "lr": [1e-3, 1e-2],
        "target": {"metric": "accuracy", "value": 0.5},
        "eval_every": 3,
        "eval_batch_size": 64,
    },
    "search": {"strategy": "random", "budget": 4, "successive_halving": {"eta": 2, "rungs": 2}, "reevaluate": {"top_k": 1, "seeds": 1}},
    "execution": {"executor": "inprocess", "workers": 1, "timeout_s": 300},
    "objectives": [{"metric": "accuracy", "direction": "maximize"}],
    "hardware": {"context_len": 32, "repeats": 1, "decode_tokens": 2},
}


def test_protocol_composes_with_halving_reseeds_suites_and_resume(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'p.db'}"
    seen: list[str] = []

    def stop_after_three(event: hybridnas.search.Event) -> None:
        seen.append(event.kind)
        if seen.count("done") == 3:
            raise KeyboardInterrupt  # a kill mid-campaign: recorded results stay

    try:
        hybridnas.run_campaign(CONFIG, store=url, on_event=stop_after_three)
    except KeyboardInterrupt:
        pass
    with hybridnas.run_campaign(CONFIG, store=url, resume=True) as run:
        evs = run.store.evaluations(run.id)
        assert all(e.status == "done" for e in evs), [e.error for e in evs]
        origins = {e.origin for e in evs}
        assert origins == {"search", "promotion", "reseed"}
        fidelities = sorted({e.fidelity for e in evs})
        assert fidelities == [6, 12]
        for e in evs:
            m = e.metrics
            for key in ("easy", "hard"):  # every member ran the sweep, was validated, and counted its steps
                assert m[f"{key}.lr"] in (1e-3, 1e-2)
                assert {f"{key}.val_accuracy@lr=0.001", f"{key}.val_accuracy@lr=0.01"} <= set(m)
                assert 1 <= m[f"{key}.steps_to_target"] <= 2 * e.fidelity
                assert m[f"{key}.steps"] <= e.fidelity
            assert "steps_to_target" in m and "lr" not in m  # a suite averages the first, not the second
        reseeded = [e for e in evs if e.origin == "reseed"]
        assert len(reseeded) == 1 and reseeded[0].seed == 1 and reseeded[0].fidelity == 12
        assert len({e.candidate_id for e in evs if e.origin == "search"}) == 4
