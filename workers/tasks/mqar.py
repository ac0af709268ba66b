"""Multi-query associative recall (MQAR), as in Zoology (Arora et al., 2023).

A sequence opens with `num_kv_pairs` key-value pairs `k1 v1 k2 v2 ...`; the rest holds every key
again once, as a query, at an even offset of the remainder, with the pad token elsewhere. The
target at a query position is the value paired with that key earlier in the same sequence; every
other target is IGNORE_INDEX. Keys and values come from disjoint parts of the vocabulary:

    0                 pad
    [1, 1 + K)        keys     (K = (vocab_size - 1) // 2)
    [1 + K, vocab)    values

Query offsets follow Zoology's power law p(g) ∝ g^(a-1) over the slots (a = `power_a`; small a
puts most queries close to the context, a = 1 is uniform).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch

from hybridnas.workers.tasks import IGNORE_INDEX, TaskConfigError, TaskData

PAD = 0  # the filler token between queries
_MAX_ROUNDS = 50  # sampling rounds before giving up on finding enough distinct examples


def _check_int(name: str, value: Any, lo: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < lo:
        raise TaskConfigError(name, f"got {value!r}, must be an integer >= {lo}")


@dataclass(frozen=True)
class MQARConfig:
    vocab_size: int = 64  # token ids in [0, vocab_size): pad 0, then keys, then values
    seq_len: int = 64  # tokens per sequence: 2*num_kv_pairs context + the query region
    num_kv_pairs: int = 4  # key-value pairs per sequence, each queried once
    num_train: int = 2_000  # distinct training sequences
    num_test: int = 200  # distinct test sequences, none of them in the training set
    power_a: float = 0.01  # query-offset power law p(g) ∝ g^(a-1); 1.0 = uniform (Zoology uses 0.01)

    def __post_init__(self) -> None:
        _check_int("num_kv_pairs", self.num_kv_pairs, 1)
        # Key and value pools of at least 2*num_kv_pairs each, so a sequence never uses every key.
        _check_int("vocab_size", self.vocab_size, 4 * self.num_kv_pairs + 1)
        # Context (2 per pair) plus one query slot per pair, queries two tokens apart.
        _check_int("seq_len", self.seq_len, 4 * self.num_kv_pairs)
        _check_int("num_train", self.num_train, 1)
        _check_int("num_test", self.num_test, 1)
        a = self.power_a
        if not isinstance(a, (int, float)) or isinstance(a, bool) or not 0 < a <= 1:
            raise TaskConfigError("power_a", f"got {a!r}, must be a number in (0, 1]")
        object.__setattr__(self, "power_a", float(a))

    @property
    def num_keys(self) -> int:
        return (self.vocab_size - 1) // 2

    @property
    def num_values(self) -> int:
        return self.vocab_size - 1 - self.num_keys

    @property
    def num_slots(self) -> int:
        """Query slots: even offsets of the region after the key-value context."""
        return (self.seq_len - 2 * self.num_kv_pairs) // 2


def _random_subsets(rng: np.random.Generator, n: int, pool: int, k: int) -> np.ndarray:
    """`n` random ordered k-subsets of range(pool), without replacement within a row. [n, k]"""
    return np.argsort(rng.random((n, pool)), axis=1, kind="stable")[:, :k]


def _sample(cfg: MQARConfig, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """`n` sequences (possibly repeating): inputs and targets, both [n, T] int64."""
    k, t = cfg.num_kv_pairs, cfg.seq_len
    keys = 1 + _random_subsets(rng, n, cfg.num_keys, k)  # [n, k]
    values = 1 + cfg.num_keys + _random_subsets(rng, n, cfg.num_values, k)  # [n, k]

    # Weighted sampling of k distinct slots per row (Gumbel top-k): slot g (1-based) has weight
    # a * g^(a-1), as in Zoology.
    g = np.arange(1, cfg.num_slots + 1, dtype=np.float64)
    log_p = np.log(cfg.power_a) + (cfg.power_a - 1.0) * np.log(g)  # [S]
    scores = log_p[None, :] + rng.gumbel(size=(n, cfg.num_slots))  # [n, S]
    slots = np.argsort(-scores, axis=1, kind="stable")[:, :k]  # [n, k]
    query_pos = 2 * k + 2 * slots  # [n, k]

    inputs = np.full((n, t), PAD, dtype=np.int64)
    inputs[:, 0 : 2 * k : 2] = keys
    inputs[:, 1 : 2 * k : 2] = values
    np.put_along_axis(inputs, query_pos, keys, axis=1)
    targets = np.full((n, t), IGNORE_INDEX, dtype=np.int64)
    np.put_along_axis(targets, query_pos, values, axis=1)
    return inputs, targets


def _distinct(
    cfg: MQARConfig, rng: np.random.Generator, count: int, exclude: set[bytes], field: str
) -> tuple[np.ndarray, np.ndarray]:
    """`count` sequences, pairwise distinct and none in `exclude`, in sampling order."""
    seen = set(exclude)
    keep_in: list[np.ndarray] = []
    keep_tg: list[np.ndarray] = []
    for _ in range(_MAX_ROUNDS):
        need = count - len(keep_in)
        if need == 0:
            break
        inputs, targets = _sample(cfg, rng, need + need // 8 + 8)  # a margin for duplicates
        for row_in, row_tg in zip(inputs, targets):
            key = row_in.tobytes()  # targets are a function of the inputs
            if key in seen:
                continue
            seen.add(key)
            keep_in.append(row_in)
            keep_tg.append(row_tg)
            if len(keep_in) == count:
                break
    if len(keep_in) < count:
        raise TaskConfigError(
            field, f"could only find {len(keep_in)} distinct sequences; raise vocab_size or seq_len, or lower {field}"
        )
    return np.stack(keep_in), np.stack(keep_tg)


def generate_mqar(cfg: MQARConfig, seed: int) -> TaskData:
    """Train and test sets for `cfg`; the same (cfg, seed) gives identical tensors.

    The test set is drawn from its own stream, so it does not change with `num_train`; training
    sequences that also occur in the test set are dropped and replaced.
    """
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed: got {seed!r}, must be an integer >= 0")
    test_in, test_tg = _distinct(cfg, np.random.default_rng([seed, 1]), cfg.num_test, set(), "num_test")
    test_rows = {row.tobytes() for row in test_in}
    train_in, train_tg = _distinct(cfg, np.random.default_rng([seed, 0]), cfg.num_train, test_rows, "num_train")
    assert test_rows.isdisjoint(row.tobytes() for row in train_in), "train and test share an example"
    return TaskData(
        train_inputs=torch.from_numpy(train_in),
        train_targets=torch.from_numpy(train_tg),
        test_inputs=torch.from_numpy(test_in),
        test_targets=torch.from_numpy(test_tg),
    )


@dataclass(frozen=True)
class MQARTask:
    """The registry entry for MQAR: `make_task({"name": "mqar", ...})` returns one."""

    config: MQARConfig
    name: str = "mqar"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MQARTask:
        known = {f.name for f in fields(MQARConfig)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise TaskConfigError(f"task.{unknown[0]}", f"unknown mqar option; allowed: {', '.join(sorted(known))}")
        try:
            return cls(MQARConfig(**d))
        except TaskConfigError as e:
            raise TaskConfigError(f"task.{e.field}", str(e).split(": ", 1)[1]) from None

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def seq_len(self) -> int:
        return self.config.seq_len

    def generate(self, seed: int) -> TaskData:
        return generate_mqar(self.config, seed)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **asdict(self.config)}


__all__ = ["PAD", "MQARConfig", "MQARTask", "generate_mqar"]
