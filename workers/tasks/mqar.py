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

`preset` fills the sizes of one of Zoology's MQAR settings (`MQAR_PRESETS`); fields given
explicitly override it. The presets are the ICLR 2024 Zoology figure-2 sweep
(zoology/experiments/paper_configs/iclr24_zoology_figure2/configs.py): vocabulary 8192,
(seq_len, num_kv_pairs) in (64, 4), (128, 8), (256, 16), (512, 64), 100,000 training and
3,000 test sequences, power_a 0.01. They are sized for a GPU; the defaults are for a CPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from hybridnas.workers.tasks import (
    IGNORE_INDEX,
    MAX_SEQ_LEN,
    MAX_VOCAB,
    ConfigTask,
    KeyValueTokens,
    TaskConfigError,
    TaskData,
    check_counts,
    check_int,
    split_data,
)

PAD = 0  # the filler token between queries
_SORT_POOL_MAX = 256  # pools up to this size draw subsets by sorting random keys; larger ones shuffle partially
_SHUFFLE_CELLS = 1 << 22  # rows x pool cells per chunk of the partial shuffle (bounds its memory)

#: The sizes every MQARConfig field takes when neither given nor set by a preset.
MQAR_DEFAULTS: dict[str, Any] = {
    "vocab_size": 64,
    "seq_len": 64,
    "num_kv_pairs": 4,
    "num_train": 2_000,
    "num_test": 200,
    "power_a": 0.01,
}


def _zoology(seq_len: int, num_kv_pairs: int) -> dict[str, Any]:
    return {
        "vocab_size": 8_192,
        "seq_len": seq_len,
        "num_kv_pairs": num_kv_pairs,
        "num_train": 100_000,
        "num_test": 3_000,
        "power_a": 0.01,
    }


#: Preset name -> the field values it fills.
MQAR_PRESETS: dict[str, dict[str, Any]] = {
    "zoology-64": _zoology(64, 4),
    "zoology-128": _zoology(128, 8),
    "zoology-256": _zoology(256, 16),
    "zoology-512": _zoology(512, 64),
}


@dataclass(frozen=True)
class MQARConfig(KeyValueTokens):
    """MQAR sizes. A size left as None comes from `preset`, else from MQAR_DEFAULTS (the value in
    brackets below), so every size is an int once the config exists."""

    vocab_size: int | None = None  # token ids in [0, vocab_size): pad 0, then keys, then values (64)
    seq_len: int | None = None  # tokens per sequence: 2*num_kv_pairs context + the query region (64)
    num_kv_pairs: int | None = None  # key-value pairs per sequence, each queried once (4)
    num_train: int | None = None  # distinct training sequences (2000)
    num_test: int | None = None  # distinct test sequences, none of them in the training set (200)
    power_a: float | None = None  # query-offset power law p(g) ∝ g^(a-1); 1.0 = uniform (0.01, as Zoology)
    preset: str | None = None  # a name in MQAR_PRESETS, or None for MQAR_DEFAULTS

    def __post_init__(self) -> None:
        if self.preset is not None and (not isinstance(self.preset, str) or self.preset not in MQAR_PRESETS):
            raise TaskConfigError("preset", f"got {self.preset!r}, allowed: {', '.join(MQAR_PRESETS)}")
        base = MQAR_PRESETS[self.preset] if self.preset is not None else MQAR_DEFAULTS
        for name, value in base.items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        check_int("num_kv_pairs", self.num_kv_pairs, 1, limit=MAX_SEQ_LEN // 4)
        # Key and value pools of at least 2*num_kv_pairs each, so a sequence never uses every key.
        check_int("vocab_size", self.vocab_size, 4 * self.num_kv_pairs + 1, limit=MAX_VOCAB)
        # Context (2 per pair) plus one query slot per pair, queries two tokens apart.
        check_int("seq_len", self.seq_len, 4 * self.num_kv_pairs, limit=MAX_SEQ_LEN)
        check_counts(self.num_train, self.num_test)
        a = self.power_a
        if not isinstance(a, (int, float)) or isinstance(a, bool) or not 0 < a <= 1:
            raise TaskConfigError("power_a", f"got {a!r}, must be a number in (0, 1]")
        object.__setattr__(self, "power_a", float(a))

    @property
    def num_kv_tokens(self) -> int:
        return self.vocab_size - 1  # every token but the pad

    @property
    def num_slots(self) -> int:
        """Query slots: even offsets of the region after the key-value context."""
        return (self.seq_len - 2 * self.num_kv_pairs) // 2


def _random_subsets(rng: np.random.Generator, n: int, pool: int, k: int) -> np.ndarray:
    """`n` random ordered k-subsets of range(pool), without replacement within a row. [n, k]"""
    if pool <= _SORT_POOL_MAX:
        return np.argsort(rng.random((n, pool)), axis=1, kind="stable")[:, :k]
    # Partial Fisher-Yates: k swaps per row instead of sorting `pool` keys (Zoology's vocab of
    # 8192 with 100k rows would need ~1e9 keys), in row chunks so memory stays bounded.
    u = rng.random((n, k))  # [n, k]
    out = np.empty((n, k), dtype=np.int64)
    rows = max(1, _SHUFFLE_CELLS // pool)
    for lo in range(0, n, rows):
        hi = min(n, lo + rows)
        r = np.arange(hi - lo)
        perm = np.tile(np.arange(pool, dtype=np.int64), (hi - lo, 1))  # [rows, pool]
        for i in range(k):
            j = i + (u[lo:hi, i] * (pool - i)).astype(np.int64)  # uniform in [i, pool)
            picked = perm[r, j]
            perm[r, j] = perm[r, i]
            perm[r, i] = picked
        out[lo:hi] = perm[:, :k]
    return out


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


def generate_mqar(cfg: MQARConfig, seed: int) -> TaskData:
    """Train and test sets for `cfg`; the same (cfg, seed) gives identical tensors.

    The test set is drawn from its own stream, so it does not change with `num_train`; training
    sequences that also occur in the test set are dropped and replaced.
    """
    sample = partial(_sample, cfg)
    return split_data(sample, sample, seed, cfg.num_train, cfg.num_test)


@dataclass(frozen=True)
class MQARTask(ConfigTask):
    """The registry entry for MQAR: `make_task({"name": "mqar", ...})` returns one."""

    config: MQARConfig = MQARConfig()
    name: str = "mqar"
    generator = staticmethod(generate_mqar)

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        if d["preset"] is None:
            del d["preset"]  # the dict of a preset-free config is unchanged from before presets existed
        return d


__all__ = ["MQAR_DEFAULTS", "MQAR_PRESETS", "PAD", "MQARConfig", "MQARTask", "generate_mqar"]
