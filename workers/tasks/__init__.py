"""Proxy tasks: synthetic sequence problems a candidate is trained and scored on.

Every task is a frozen config plus `generate(seed) -> TaskData`. Inputs are token ids `[N, T]`;
targets are `[N, T]` with -100 wherever no loss is taken, so one trainer serves every task.
A task is built from a plain dict (the `task:` block of a campaign file) by `make_task`.

Tasks: `mqar` (Zoology), the six MAD tasks (`in_context_recall`, `fuzzy_in_context_recall`,
`noisy_in_context_recall`, `selective_copying`, `compression`, `memorization`) and `byte_lm`.
The helpers below (validation, distinct sampling, the train/test split) are shared by all of them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np
import torch

#: Target value on positions that carry no loss (matches `F.cross_entropy(ignore_index=...)`).
IGNORE_INDEX = -100

_MAX_ROUNDS = 50  # sampling rounds before giving up on finding enough distinct examples

# Hard bounds on task sizes, far above any proxy task: beyond them a typo (an extra three zeros)
# would only fail, or exhaust memory, once workers start generating data.
MAX_VOCAB = 1 << 20
MAX_SEQ_LEN = 1 << 16
MAX_EXAMPLES = 10_000_000  # num_train, num_test


class TaskConfigError(ValueError):
    """A task config value outside its allowed range. `field` names the offending key."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class TaskData:
    """One task instance. Train and test never share an example."""

    train_inputs: torch.Tensor  # [N_train, T] long token ids
    train_targets: torch.Tensor  # [N_train, T] long; IGNORE_INDEX where no loss is taken
    test_inputs: torch.Tensor  # [N_test, T] long
    test_targets: torch.Tensor  # [N_test, T] long
    # [N_train, T] long: the training examples' targets at the positions the test set scores, where
    # train_targets trains on more (MAD's every-token training); None: train_targets are those already.
    # A validation split carved from the training examples is scored on these, as the test set is.
    train_scored: torch.Tensor | None = None

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


# --- shared helpers -----------------------------------------------------------------------------

#: `sample(rng, n) -> (inputs, targets)` or `(inputs, targets, scored targets)`: n sequences, possibly
#: repeating, each [n, T] int64; the third where the training targets cover more positions than the
#: test set scores (see TaskData.train_scored).
Sampler = Callable[[np.random.Generator, int], tuple[np.ndarray, ...]]


def check_int(field: str, value: Any, lo: int, hi: int | None = None, limit: int | None = None) -> None:
    """Raise TaskConfigError(field) unless `value` is an int (not a bool) in [lo, hi] and at most `limit`
    (a hard bound such as MAX_SEQ_LEN, named on its own in the message)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < lo or (hi is not None and value > hi):
        bound = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise TaskConfigError(field, f"got {value!r}, must be an integer {bound}")
    if limit is not None and value > limit:
        raise TaskConfigError(field, f"got {value!r}, must be an integer <= {limit}")


def check_bool(field: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise TaskConfigError(field, f"got {value!r}, must be true or false")


def check_seed(seed: Any) -> None:
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed: got {seed!r}, must be an integer >= 0")


def check_counts(num_train: Any, num_test: Any) -> None:
    """Raise TaskConfigError unless both set sizes are integers in [1, MAX_EXAMPLES]."""
    check_int("num_train", num_train, 1, limit=MAX_EXAMPLES)
    check_int("num_test", num_test, 1, limit=MAX_EXAMPLES)


class KeyValueTokens:
    """A config whose first `num_kv_tokens` token ids (after any offset) hold keys and values: the
    lower half keys, the rest values."""

    num_kv_tokens: int

    @property
    def num_keys(self) -> int:
        return self.num_kv_tokens // 2

    @property
    def num_values(self) -> int:
        return self.num_kv_tokens - self.num_keys


def row_key(row: np.ndarray) -> bytes:
    """A fixed-size fingerprint of one sequence (a 128-bit hash keeps dedup sets small for long rows)."""
    return hashlib.blake2b(np.ascontiguousarray(row).tobytes(), digest_size=16).digest()


def draw_distinct(
    sample: Sampler, rng: np.random.Generator, count: int, exclude: set[bytes], field: str
) -> tuple[np.ndarray, ...]:
    """`count` sequences, pairwise distinct and none in `exclude`, in sampling order: every array the
    sampler returns (inputs first), cut to the same rows.

    Rows are compared by their inputs (every task's targets are a function of its inputs).
    Raises TaskConfigError(field) when the task has too few distinct sequences.
    """
    seen = set(exclude)
    parts: list[tuple[np.ndarray, ...]] = []
    found = 0
    for _ in range(_MAX_ROUNDS):
        need = count - found
        if need == 0:
            break
        arrays = sample(rng, need + need // 8 + 8)  # a margin for duplicates
        inputs = arrays[0]
        keep: list[int] = []
        for i, row in enumerate(inputs):
            key = row_key(row)
            if key in seen:
                continue
            seen.add(key)
            keep.append(i)
            if len(keep) == need:
                break
        parts.append(tuple(a[keep] for a in arrays))
        found += len(keep)
    if found < count:
        raise TaskConfigError(
            field,
            f"could only find {found} distinct sequences; make the task larger (vocab_size, seq_len) or lower {field}",
        )
    return tuple(np.concatenate([p[j] for p in parts]) for j in range(len(parts[0])))


def split_data(sample_train: Sampler, sample_test: Sampler, seed: int, num_train: int, num_test: int) -> TaskData:
    """Train and test sets from two samplers; the same arguments give identical tensors.

    The test set is drawn from its own random stream, so it does not change with `num_train`;
    training sequences that also occur in the test set are dropped and replaced. The streams are
    `default_rng([seed, 0])` (train) and `[seed, 1]` (test); a task needing more randomness per seed
    (a fixed mapping, say) draws it from `[seed, 2]` on.
    """
    check_seed(seed)
    test_in, test_tg = draw_distinct(sample_test, np.random.default_rng([seed, 1]), num_test, set(), "num_test")
    test_rows = {row_key(row) for row in test_in}
    train_rng = np.random.default_rng([seed, 0])
    train_in, train_tg, *scored = draw_distinct(sample_train, train_rng, num_train, test_rows, "num_train")
    assert test_rows.isdisjoint(row_key(row) for row in train_in), "train and test share an example"
    return TaskData(
        train_inputs=torch.from_numpy(train_in),
        train_targets=torch.from_numpy(train_tg),
        test_inputs=torch.from_numpy(test_in),
        test_targets=torch.from_numpy(test_tg),
        train_scored=torch.from_numpy(scored[0]) if scored else None,
    )


def config_from_dict(config_type: type, task_name: str, d: dict[str, Any]) -> Any:
    """Build `config_type(**d)`; an unknown key or a bad value raises TaskConfigError("task.<key>")."""
    known = {f.name for f in fields(config_type)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise TaskConfigError(f"task.{unknown[0]}", f"unknown {task_name} option; allowed: {', '.join(sorted(known))}")
    try:
        return config_type(**d)
    except TaskConfigError as e:
        raise TaskConfigError(f"task.{e.field}", e.message) from None


class ConfigTask:
    """The registry interface of a task that is a frozen config plus its generator. Subclasses are
    frozen dataclasses whose fields `config` and `name` have defaults, and set `generator`."""

    config: Any
    name: str
    generator: ClassVar[Callable[[Any, int], TaskData]]  # the module-level generate_* function

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Any:
        # A dataclass keeps a field's default as a class attribute: `cls.config` is the default config.
        return cls(config_from_dict(type(cls.config), cls.name, d))

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def seq_len(self) -> int:
        return self.config.seq_len

    def generate(self, seed: int) -> TaskData:
        return type(self).generator(self.config, seed)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **asdict(self.config)}


# Imported after the shared names above: task modules import them from this package.
from hybridnas.workers.tasks.bytelm import ByteLMConfig, ByteLMTask, CorpusMismatchError  # noqa: E402
from hybridnas.workers.tasks.mad import (  # noqa: E402
    CompressionConfig,
    CompressionTask,
    FuzzyRecallConfig,
    FuzzyRecallTask,
    InContextRecallTask,
    MemorizationConfig,
    MemorizationTask,
    NoisyRecallConfig,
    NoisyRecallTask,
    RecallConfig,
    SelectiveCopyingConfig,
    SelectiveCopyingTask,
)
from hybridnas.workers.tasks.mqar import MQAR_PRESETS, MQARConfig, MQARTask, generate_mqar  # noqa: E402

#: Task name -> class with `from_dict(config) -> Task`.
TASKS: dict[str, type] = {
    "mqar": MQARTask,
    "in_context_recall": InContextRecallTask,
    "fuzzy_in_context_recall": FuzzyRecallTask,
    "noisy_in_context_recall": NoisyRecallTask,
    "selective_copying": SelectiveCopyingTask,
    "compression": CompressionTask,
    "memorization": MemorizationTask,
    "byte_lm": ByteLMTask,
}


def fresh_test_set(task: Task, trained_seed: int, fresh_seed: int, num_test: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`num_test` test sequences (inputs, targets [N, T]) drawn with `fresh_seed`, none of them a
    training sequence of `trained_seed` (so a model trained with it has never seen one).

    A task whose examples depend on the seed beyond sampling (memorization's key-value table)
    defines `generate_fresh(trained_seed, fresh_seed)` to keep what the model learned.
    """
    check_seed(fresh_seed)
    config = task.to_dict()
    if "num_test" not in config:
        raise TaskConfigError("num_test", f"task {task.name} has no test set size to set")
    drawn = num_test + num_test // 4 + 16  # a margin for the sequences that were training ones
    fresh = make_task({**config, "num_test": drawn, "num_train": 1})
    generate_fresh = getattr(fresh, "generate_fresh", None)
    data = generate_fresh(trained_seed, fresh_seed) if generate_fresh is not None else fresh.generate(fresh_seed)
    seen = {row_key(row) for row in task.generate(trained_seed).train_inputs.numpy()}
    keep = [i for i, row in enumerate(data.test_inputs.numpy()) if row_key(row) not in seen][:num_test]
    if len(keep) < num_test:
        raise TaskConfigError("num_test", f"only {len(keep)} fresh sequences are not training ones; ask for fewer")
    return data.test_inputs[keep], data.test_targets[keep]


def make_task(config: dict[str, Any]) -> Task:
    """Build a task from a dict such as {"name": "mqar", "vocab_size": 64, "seq_len": 64, ...}."""
    if not isinstance(config, dict):
        raise TaskConfigError("task", f"expected a mapping, got {type(config).__name__}")
    name = config.get("name")
    if name not in TASKS:
        raise TaskConfigError("task.name", f"got {name!r}, allowed: {', '.join(sorted(TASKS))}")
    fields_ = {k: v for k, v in config.items() if k != "name"}
    return TASKS[name].from_dict(fields_)


__all__ = [
    "IGNORE_INDEX",
    "MAX_EXAMPLES",
    "MAX_SEQ_LEN",
    "MAX_VOCAB",
    "MQAR_PRESETS",
    "TASKS",
    "ByteLMConfig",
    "ByteLMTask",
    "CompressionConfig",
    "CompressionTask",
    "ConfigTask",
    "CorpusMismatchError",
    "FuzzyRecallConfig",
    "FuzzyRecallTask",
    "InContextRecallTask",
    "KeyValueTokens",
    "MQARConfig",
    "MQARTask",
    "MemorizationConfig",
    "MemorizationTask",
    "NoisyRecallConfig",
    "NoisyRecallTask",
    "RecallConfig",
    "Sampler",
    "SelectiveCopyingConfig",
    "SelectiveCopyingTask",
    "Task",
    "TaskConfigError",
    "TaskData",
    "check_bool",
    "check_counts",
    "check_int",
    "check_seed",
    "config_from_dict",
    "draw_distinct",
    "fresh_test_set",
    "generate_mqar",
    "make_task",
    "row_key",
    "split_data",
]
