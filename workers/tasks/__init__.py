"""Proxy tasks: synthetic sequence problems a candidate is trained and scored on.

Every task is a frozen config plus `generate(seed) -> TaskData`. Inputs are token ids `[N, T]`;
targets are `[N, T]` with -100 wherever no loss is taken, so one trainer serves every task.
A task is built from a plain dict (the `task:` block of a campaign file) by `make_task`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch

#: Target value on positions that carry no loss (matches `F.cross_entropy(ignore_index=...)`).
IGNORE_INDEX = -100


class TaskConfigError(ValueError):
    """A task config value outside its allowed range. `field` names the offending key."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True)
class TaskData:
    """One task instance. Train and test never share an example."""

    train_inputs: torch.Tensor  # [N_train, T] long token ids
    train_targets: torch.Tensor  # [N_train, T] long; IGNORE_INDEX where no loss is taken
    test_inputs: torch.Tensor  # [N_test, T] long
    test_targets: torch.Tensor  # [N_test, T] long

    @property
    def seq_len(self) -> int:
        return int(self.train_inputs.shape[1])


@runtime_checkable
class Task(Protocol):
    """What the trainer and the evaluator need from a task."""

    name: str  # registry key, e.g. "mqar"
    vocab_size: int  # token ids are in [0, vocab_size)
    seq_len: int  # length of every input sequence

    def generate(self, seed: int) -> TaskData: ...

    def to_dict(self) -> dict[str, Any]: ...


# Imported after the shared types above: task modules import them from this package.
from hybridnas.workers.tasks.mqar import MQARConfig, MQARTask, generate_mqar  # noqa: E402

#: Task name -> class with `from_dict(config) -> Task`.
TASKS: dict[str, type] = {"mqar": MQARTask}


def make_task(config: dict[str, Any]) -> Task:
    """Build a task from a dict such as {"name": "mqar", "vocab_size": 64, "seq_len": 64, ...}."""
    if not isinstance(config, dict):
        raise TaskConfigError("task", f"expected a mapping, got {type(config).__name__}")
    name = config.get("name")
    if name not in TASKS:
        raise TaskConfigError("task.name", f"got {name!r}, allowed: {', '.join(sorted(TASKS))}")
    fields = {k: v for k, v in config.items() if k != "name"}
    return TASKS[name].from_dict(fields)


__all__ = [
    "IGNORE_INDEX",
    "MQARConfig",
    "MQARTask",
    "TASKS",
    "Task",
    "TaskConfigError",
    "TaskData",
    "generate_mqar",
    "make_task",
]
