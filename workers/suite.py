"""A weighted suite of proxy tasks, scored as one objective.

A campaign file names a suite as

    task:
      name: suite
      members:
        - {name: mqar, weight: 2.0, vocab_size: 64, seq_len: 64}
        - {name: selective_copying, key: copy}

Each member is any registered task (its own settings beside `name`), with an optional `key` that names
it in the metrics (`<key>.accuracy`; default: its task name) and a `weight` > 0 (default 1). The
evaluator trains a fresh model per member and reports the weight-averaged accuracy and loss.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from hybridnas.workers.tasks import TASKS, Task, TaskConfigError, make_task

SUITE = "suite"  # the task name that selects a suite
_KEY = re.compile(r"[A-Za-z0-9_-]+")  # member keys become metric prefixes: no dots, no spaces
_SUITE_FIELDS = ("name", "members")
_MEMBER_FIELDS = ("key", "weight")  # suite settings of a member; the rest configure its task
MAX_MEMBERS = 64  # each member trains its own model per evaluation


@dataclass(frozen=True)
class SuiteMember:
    key: str  # names the member's metrics: "<key>.accuracy", "<key>.loss", ...
    task: Task  # the member's task, as make_task builds it
    weight: float  # > 0: its share of the suite's averaged accuracy and loss


@dataclass(frozen=True)
class TaskSuite:
    """Several tasks a candidate is trained on separately (a fresh model each) and scored on together."""

    members: tuple[SuiteMember, ...]  # at least one, keys unique
    name: str = SUITE  # registry-style name, as every task has

    def __post_init__(self) -> None:
        if not self.members:
            raise TaskConfigError("task.members", "must list at least one task")
        keys = [m.key for m in self.members]
        for i, key in enumerate(keys):
            if key in keys[:i]:
                message = f"{key!r} is used by an earlier member; keys must be unique"
                raise TaskConfigError(f"task.members[{i}].key", message)

    @property
    def vocab_size(self) -> int:
        """The largest member vocabulary: one model vocabulary serves every member."""
        return max(m.task.vocab_size for m in self.members)

    @property
    def seq_len(self) -> int:
        """The longest member sequence."""
        return max(m.task.seq_len for m in self.members)

    @property
    def total_weight(self) -> float:
        return sum(m.weight for m in self.members)

    def main_member(self) -> SuiteMember:
        """The member with the largest weight, the first one on ties (its trained weights are kept)."""
        return max(self.members, key=lambda m: m.weight)  # max returns the first of equal maxima

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TaskSuite:
        """From the `task:` block (with or without `name: suite`); errors name the field path."""
        if not isinstance(d, dict):
            raise TaskConfigError("task", f"expected a mapping, got {type(d).__name__}")
        unknown = sorted(set(d) - set(_SUITE_FIELDS))
        if unknown:
            raise TaskConfigError(f"task.{unknown[0]}", f"unknown suite option; allowed: {', '.join(_SUITE_FIELDS)}")
        if d.get("name", SUITE) != SUITE:
            raise TaskConfigError("task.name", f"got {d['name']!r}, a suite is named {SUITE!r}")
        members = d.get("members")
        if not isinstance(members, list) or not members:
            raise TaskConfigError("task.members", f"got {members!r}, must be a non-empty list of tasks")
        if len(members) > MAX_MEMBERS:
            raise TaskConfigError("task.members", f"got {len(members)} tasks, at most {MAX_MEMBERS} are allowed")
        return cls(tuple(_member(i, m) for i, m in enumerate(members)))

    def to_dict(self) -> dict[str, Any]:
        """The canonical config: every member's full task settings with its key and weight."""
        return {
            "name": SUITE,
            "members": [{**m.task.to_dict(), "key": m.key, "weight": m.weight} for m in self.members],
        }


def _member(i: int, d: Any) -> SuiteMember:
    where = f"task.members[{i}]"
    if not isinstance(d, dict):
        raise TaskConfigError(where, f"expected a mapping, got {type(d).__name__}")
    name = d.get("name")
    if name == SUITE:
        raise TaskConfigError(f"{where}.name", "a suite cannot contain a suite")
    if not isinstance(name, str) or name not in TASKS:
        raise TaskConfigError(f"{where}.name", f"got {name!r}, allowed: {', '.join(sorted(TASKS))}")
    task_config = {k: v for k, v in d.items() if k not in _MEMBER_FIELDS}
    try:
        task = make_task(task_config)
    except TaskConfigError as e:
        # make_task names fields "task.<field>": re-root them at this member.
        field = e.field[len("task.") :] if e.field.startswith("task.") else e.field
        raise TaskConfigError(f"{where}.{field}", str(e).split(": ", 1)[-1]) from None
    except ValueError as e:
        raise TaskConfigError(where, str(e)) from None
    key = d.get("key", name)
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        raise TaskConfigError(f"{where}.key", f"got {key!r}, must be letters, digits, '_' or '-'")
    weight = d.get("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not (math.isfinite(weight) and weight > 0):
        raise TaskConfigError(f"{where}.weight", f"got {weight!r}, must be a number > 0")
    return SuiteMember(key=key, task=task, weight=float(weight))


def build_task(config: dict[str, Any]) -> Task | TaskSuite:
    """A suite when `config["name"] == "suite"`, otherwise the registered task (`make_task`)."""
    if not isinstance(config, dict):
        raise TaskConfigError("task", f"expected a mapping, got {type(config).__name__}")
    name = config.get("name")
    if name == SUITE:
        return TaskSuite.from_dict(config)
    if not isinstance(name, str) or name not in TASKS:  # a list or mapping here is not hashable
        raise TaskConfigError("task.name", f"got {name!r}, allowed: {', '.join(sorted([*TASKS, SUITE]))}")
    return make_task(config)


def suite_members(task: Task | TaskSuite) -> tuple[SuiteMember, ...]:
    """The members of a suite; a single task as the one member it is (key: its name, weight 1)."""
    if isinstance(task, TaskSuite):
        return task.members
    return (SuiteMember(key=task.name, task=task, weight=1.0),)


__all__ = ["MAX_MEMBERS", "SUITE", "SuiteMember", "TaskSuite", "build_task", "suite_members"]
