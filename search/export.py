"""Export a stored candidate: its generated module, its config and lineage, and the weights that earned its score."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from hybridnas.codegen import export
from hybridnas.space import ArchSpec
from hybridnas.store import Store


def module_name(label: str) -> str:
    """A Python-identifier-safe name for `modeling_<name>.py`."""
    name = re.sub(r"[^0-9a-zA-Z_]+", "_", label).strip("_").lower() or "model"
    return name if not name[0].isdigit() else f"m_{name}"


def export_candidate(store: Store, candidate_id: int, out_dir: str | Path, name: str | None = None) -> Path:
    """Write `out_dir` with modeling_<name>.py, config.json (spec, task, metrics, lineage) and model.safetensors."""
    info = store.candidate(candidate_id)
    spec = info.spec if isinstance(info.spec, ArchSpec) else ArchSpec.from_dict(info.spec)
    weights = store.weights_path(candidate_id)
    done = [e for e in info.evaluations if e.status == "done"]
    best = max(done, key=lambda e: e.fidelity) if done else None
    campaign = store.campaign_of(candidate_id) if hasattr(store, "campaign_of") else None
    metadata: dict[str, Any] = {
        "candidate_id": candidate_id,
        "spec_hash": spec.spec_hash,
        "label": spec.describe(),
        "campaign": campaign,
        "task": best.task if best else None,
        "fidelity": best.fidelity if best else None,
        "seed": best.seed if best else None,
        "metrics": dict(best.metrics or {}) if best else {},
        "lineage": [
            {"child_id": e.child_id, "parent_id": e.parent_id, "operator": e.operator} for e in store.lineage(candidate_id)
        ],
        "weights": "trained" if weights is not None else "none (no finished evaluation kept weights)",
    }
    return export(spec, out_dir, name=name or module_name(f"c{candidate_id}"), weights_path=weights, metadata=metadata)
