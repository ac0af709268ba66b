"""Re-score an exported model on test data generated with a seed its campaign never used.

An export's config.json records the task config, the seed the model was trained with, the training
protocol and the stored test metrics. `rescore_export` loads the module from the folder, draws
`num_test` fresh test sequences (none of them a training sequence of the trained seed), scores the
model on them and puts the fresh accuracy, with a 95% bootstrap interval over sequences, next to the
stored one: a reproducible export scores the same, within that spread, on data it has never seen.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from hybridnas.workers.suite import build_task
from hybridnas.workers.tasks import IGNORE_INDEX, fresh_test_set

__all__ = ["Rescore", "load_export", "rescore_export"]

#: Offset of the default fresh seed from the largest seed the candidate was evaluated with.
FRESH_SEED_OFFSET = 1_000
BOOTSTRAP = 2_000  # resamples for the interval


@dataclass(frozen=True)
class Rescore:
    """Stored against fresh test accuracy of one export."""

    task: str  # the task (a suite: its main member) the model was scored on
    trained_seed: int  # the seed its training data and weights came from
    seed: int  # the fresh seed the test sequences were drawn with
    num_sequences: int  # fresh test sequences scored
    accuracy: float  # fresh test accuracy over target positions
    low: float  # 95% bootstrap interval of that accuracy, over sequences
    high: float
    loss: float  # fresh test cross-entropy
    stored_accuracy: float | None  # the accuracy recorded at export
    stored_num_test: int | None  # test sequences the stored figure was measured on
    margin: float | None  # how far apart the two may be: 1.96 standard errors of their difference

    @property
    def agree(self) -> bool | None:
        """Stored and fresh accuracies differ by no more than the margin (None without a stored figure)."""
        if self.stored_accuracy is None or self.margin is None:
            return None
        return abs(self.stored_accuracy - self.accuracy) <= self.margin


def load_export(directory: str | Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """(the model of an export folder with its weights, its config.json)."""
    directory = Path(directory)
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"EXPORT_DIR: {directory} has no config.json; is it a hybridnas export?")
    config = json.loads(config_path.read_text(encoding="utf-8"))
    name = config.get("name")
    source = directory / f"modeling_{name}.py"
    if not isinstance(name, str) or not source.is_file():
        raise FileNotFoundError(f"EXPORT_DIR: {directory} has no modeling_{name}.py")
    module_name = f"hybridnas_export_{name}_{abs(hash(str(directory.resolve())))}"
    spec = importlib.util.spec_from_file_location(module_name, source)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise
    return module.load(directory), config


@torch.no_grad()
def _per_sequence(model: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor, batch: int = 256) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(correct positions per sequence, scored positions per sequence, mean cross-entropy)."""
    model.eval()
    device = next(model.parameters()).device
    correct, total, loss_sum = [], [], 0.0
    for i in range(0, inputs.shape[0], batch):
        x, y = inputs[i : i + batch].to(device), targets[i : i + batch].to(device)
        logits = model(x).float()
        mask = y != IGNORE_INDEX
        loss_sum += float(torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"))
        correct.append(((logits.argmax(-1) == y) & mask).sum(1).cpu())
        total.append(mask.sum(1).cpu())
    c, t = torch.cat(correct).double(), torch.cat(total).double()
    return c, t, loss_sum / float(t.sum())


def rescore_export(
    directory: str | Path, seed: int | None = None, num_test: int | None = None, device: str | None = None
) -> Rescore:
    """Score the export in `directory` on `num_test` fresh test sequences (default: as many as the
    campaign's test set) drawn with `seed` (default: a seed the campaign never used)."""
    model, config = load_export(directory)
    meta = config.get("metadata") or {}
    task_config = meta.get("task_config")
    if not isinstance(task_config, dict):
        raise ValueError(f"EXPORT_DIR: {directory}/config.json records no task_config (exported by an older hybridnas?)")
    trained_seed = meta.get("seed")
    if not isinstance(trained_seed, int):
        raise ValueError(f"EXPORT_DIR: {directory}/config.json records no training seed")
    task = build_task(dict(task_config))
    metrics = meta.get("metrics") or {}
    stored_key = "accuracy"
    main = getattr(task, "main_member", None)
    if main is not None:  # a suite: the exported weights are its main member's
        member = main()
        task, stored_key = member.task, f"{member.key}.accuracy"
    stored_n = task.to_dict().get("num_test")
    used = [int(s) for s in meta.get("seeds", [trained_seed])]
    fresh_seed = max(used) + FRESH_SEED_OFFSET if seed is None else seed
    if fresh_seed in used:
        raise ValueError(f"--seed: {fresh_seed} was used by the campaign ({', '.join(map(str, used))}); pick another")
    n = num_test or stored_n or 500
    if device is not None:
        model = model.to(device)
    inputs, targets = fresh_test_set(task, trained_seed, fresh_seed, n)
    correct, total, loss = _per_sequence(model, inputs, targets)
    accuracy = float(correct.sum() / total.sum())
    gen = torch.Generator().manual_seed(fresh_seed)
    idx = torch.randint(0, len(correct), (BOOTSTRAP, len(correct)), generator=gen)
    boots = correct[idx].sum(1) / total[idx].sum(1)
    low, high = (float(v) for v in torch.quantile(boots, torch.tensor([0.025, 0.975], dtype=boots.dtype)))
    stored = metrics.get(stored_key)
    stored = float(stored) if isinstance(stored, (int, float)) and math.isfinite(stored) else None
    margin = None
    if stored is not None and stored_n:
        # Same population, two samples: the stored one's standard error scales from the fresh spread.
        se_fresh = float(boots.std())
        se_stored = se_fresh * math.sqrt(len(correct) / stored_n)
        margin = 1.96 * math.hypot(se_fresh, se_stored)
    return Rescore(task.name, trained_seed, fresh_seed, len(correct), accuracy, low, high, loss, stored, stored_n, margin)
