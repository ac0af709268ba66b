"""Export a stored candidate: its generated module, its config and lineage, and the weights that earned its score."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from hybridnas.codegen import export
from hybridnas.space import ArchSpec
from hybridnas.store import Store
from hybridnas.workers.suite import build_task


def module_name(label: str) -> str:
    """A Python-identifier-safe name for `modeling_<name>.py`."""
    name = re.sub(r"[^0-9a-zA-Z_]+", "_", label).strip("_").lower() or "model"
    return name if not name[0].isdigit() else f"m_{name}"


def export_candidate(store: Store, candidate_id: int, out_dir: str | Path, name: str | None = None) -> Path:
    """Write `out_dir` with modeling_<name>.py, config.json and model.safetensors.

    config.json's metadata records what it takes to reproduce the score: the whole task config
    (sizes, generator settings), the seed the weights were trained with and every seed the candidate
    was evaluated with, the training protocol (learning rates, validation split, target), the
    fidelity, the metrics of the evaluation whose weights these are, and the lineage.
    """
    info = store.candidate(candidate_id)
    spec = info.spec if isinstance(info.spec, ArchSpec) else ArchSpec.from_dict(info.spec)
    weights = store.weights_path(candidate_id)
    done = [e for e in info.evaluations if e.status == "done"]
    # The weights kept are those of the highest-fidelity evaluation with the campaign's own seed.
    best = max(done, key=lambda e: (e.fidelity, -e.seed)) if done else None
    campaign = store.get_campaign(store.campaign_of(candidate_id))
    config = campaign.config or {}
    task_config = build_task(dict(config["task"])).to_dict() if "task" in config else None
    metadata: dict[str, Any] = {
        "candidate_id": candidate_id,
        "spec_hash": spec.spec_hash,
        "label": spec.describe(),
        "campaign": campaign.name,
        "task": best.task if best else None,
        "task_config": task_config,
        "training": config.get("training"),
        "fidelity": best.fidelity if best else None,
        "seed": best.seed if best else None,
        "seeds": sorted({e.seed for e in info.evaluations}),
        "metrics": dict(best.metrics or {}) if best else {},
        "lineage": [
            {"child_id": e.child_id, "parent_id": e.parent_id, "operator": e.operator} for e in store.lineage(candidate_id)
        ],
        "weights": "trained" if weights is not None else "none (no finished evaluation kept weights)",
    }
    return export(spec, out_dir, name=name or module_name(f"c{candidate_id}"), weights_path=weights, metadata=metadata)
