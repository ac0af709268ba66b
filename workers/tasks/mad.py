"""The six MAD tasks (Poli et al. 2024, "Mechanistic Design and Scaling of Hybrid Architectures").

Each follows the task of the same name in MAD's reference code (athms/mad-lab,
`mad/data/instances.py`; baselines in `configs/tasks/*.yml`), in our format: inputs `[N, T]` and a
per-position target, IGNORE_INDEX where nothing is scored. Defaults are MAD's baselines shrunk
for a CPU (shorter sequences, fewer examples); MAD's own sizes are field values (see each field).

in_context_recall
    MAD's multi-query recall. `seq_len/2` pairs `k v`, keys drawn with replacement; within a
    sequence a key always carries the same value (values drawn independently per key). The last
    pair repeats a key shown earlier. Scored: every key position whose key occurred earlier,
    target = its value. Tokens: keys [0, C//2), values [C//2, C), noise [C, vocab) where
    C = vocab_size - noise_vocab_size.
noisy_in_context_recall
    The same with noise: each pair but the last (and one guaranteed real pair) is, with
    probability `frac_noise`, two tokens from the noise vocabulary, never scored.
fuzzy_in_context_recall
    Keys and values are runs of 1..k_motif_size (1..v_motif_size) distinct tokens, so one "key"
    spans several tokens; key and value alphabets are disjoint, which makes the segmentation
    unambiguous. As in MAD, training keys have every length and test keys the longest length
    only. The body is left-padded with the pad token (vocab_size - 1) to the sequence length and
    ends with a query of a key shown earlier. Scored: each token of the value of a repeated key
    (the target at the position before it).
selective_copying
    `num_tokens_to_copy` data tokens at random (ordered) positions among blanks, a copy token,
    then as many blanks: at those the targets are the data tokens in their order.
    Tokens: data [0, vocab-2), blank vocab-2, copy vocab-1.
compression
    MAD trains an encoder to squeeze `num_tokens` random tokens plus a compression token into the
    compression token's vector, from which an MLP decoder given each position's embedding
    rebuilds the sequence. A causal model emits one prediction per position, so here the
    sequence is `x_1..x_L  C  m_1..m_L`: the L tokens, the compression token, then one position
    marker per token (the decoder's position embeddings); the target at m_i is x_i. A
    fixed-state mixer must carry the whole sequence through its state at C, which is MAD's
    bottleneck; attention may instead look back (MAD's encoder pools, so it cannot).
    Tokens: symbols [0, S), compression S, markers S+1..S+L (Task.vocab_size = S + 1 + L).
memorization
    `seq_len/2` pairs `k I` (I the insert token, vocab-1); the target at I is the value of k
    under one fixed mapping drawn from the seed and shared by train and test, so it can only be
    learned into the weights. Keys [0, C//2), values [C//2, C), C = vocab_size - 1; the map is
    injective, as MAD's.

Recall tasks are trained as MAD trains them: next-token prediction on every position
(`train_all_tokens`), scored on the recall positions only; `train_all_tokens: false` trains on
the scored positions alone. The other tasks train on the positions they score.

Smaller departures from MAD's code: a test sequence never occurs in the training set (MAD only
warns on overlap); recall inputs are exactly `seq_len` tokens, the final value included with no
target (MAD drops it); fuzzy recall's final query picks uniformly among the keys shown instead of
planting a pre-drawn probe pair earlier; selective copying spreads the data tokens uniformly over
the region before the copy token (MAD never puts a blank after the last one); noise exists only in
the recall tasks, as MAD's baselines use it nowhere else.
"""

from __future__ import annotations

import math
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
    check_bool,
    check_counts,
    check_int,
    check_seed,
    split_data,
)


def _check_frac(field: str, value: Any) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not (ok and 0 <= value < 1):
        raise TaskConfigError(field, f"got {value!r}, must be a number in [0, 1)")
    return float(value)


# --- in-context recall (plain and noisy) ----------------------------------------------------------


@dataclass(frozen=True)
class RecallConfig(KeyValueTokens):
    vocab_size: int = 16  # keys, values and noise tokens (MAD baseline 16; varied 32, 64, 128)
    seq_len: int = 64  # tokens per sequence, even: seq_len/2 pairs (MAD baseline 128; varied 256-1024)
    noise_vocab_size: int = 0  # noise tokens, the top of the vocabulary (MAD: 16 for noisy recall)
    frac_noise: float = 0.0  # chance that a pair is noise instead of a key-value pair, in [0, 1)
    num_train: int = 2_000  # distinct training sequences (MAD 12,800; varied 6,400-800)
    num_test: int = 256  # distinct test sequences, none in the training set (MAD 1,280)
    train_all_tokens: bool = True  # train on every next token, as MAD does; False: the scored positions only

    def __post_init__(self) -> None:
        check_int("noise_vocab_size", self.noise_vocab_size, 0, limit=MAX_VOCAB - 4)
        # At least two keys and two values besides the noise tokens.
        check_int("vocab_size", self.vocab_size, 4 + self.noise_vocab_size, limit=MAX_VOCAB)
        check_int("seq_len", self.seq_len, 4, limit=MAX_SEQ_LEN)
        if self.seq_len % 2:
            raise TaskConfigError("seq_len", f"got {self.seq_len}, must be even (the sequence is key-value pairs)")
        object.__setattr__(self, "frac_noise", _check_frac("frac_noise", self.frac_noise))
        if self.frac_noise > 0 and self.noise_vocab_size == 0:
            raise TaskConfigError("noise_vocab_size", "got 0, must be >= 1 when frac_noise > 0")
        check_counts(self.num_train, self.num_test)
        check_bool("train_all_tokens", self.train_all_tokens)

    @property
    def num_kv_tokens(self) -> int:
        """Key and value tokens: [0, num_kv_tokens); noise tokens follow."""
        return self.vocab_size - self.noise_vocab_size


@dataclass(frozen=True)
class NoisyRecallConfig(RecallConfig):
    vocab_size: int = 32  # 16 keys and values + 16 noise tokens (MAD baseline 32; varied 48, 80, 144)
    noise_vocab_size: int = 16  # noise tokens, the top of the vocabulary (MAD 16)
    frac_noise: float = 0.2  # chance that a pair is noise (MAD baseline 0.2; varied 0.4, 0.6, 0.8)


def _recall_sample(cfg: RecallConfig, rng: np.random.Generator, n: int, train: bool) -> tuple[np.ndarray, np.ndarray]:
    p, k = cfg.seq_len // 2, cfg.num_keys
    rows = np.arange(n)
    keys = rng.integers(0, k, size=(n, p))  # [n, P]
    table = k + rng.integers(0, cfg.num_values, size=(n, k))  # [n, K] this sequence's value of each key
    noise = np.zeros((n, p), dtype=bool)  # [n, P] pairs replaced by noise
    if cfg.frac_noise > 0:
        noise = rng.random((n, p)) < cfg.frac_noise
        noise[rows, rng.integers(0, p - 1, size=n)] = False  # at least one real pair before the last
        noise[:, -1] = False
        noise_tokens = cfg.num_kv_tokens + rng.integers(0, cfg.noise_vocab_size, size=(n, p, 2))  # [n, P, 2]

    # The last pair queries a key shown earlier, uniformly among the distinct ones shown.
    shown = np.zeros((n, k), dtype=bool)  # [n, K]
    body = ~noise[:, :-1]  # [n, P-1]
    shown[np.broadcast_to(rows[:, None], body.shape)[body], keys[:, :-1][body]] = True
    keys[:, -1] = np.where(shown, rng.random((n, k)), -1.0).argmax(axis=1)
    values = np.take_along_axis(table, keys, axis=1)  # [n, P]

    pairs = np.stack([keys, values], axis=2)  # [n, P, 2]
    if cfg.frac_noise > 0:
        pairs = np.where(noise[..., None], noise_tokens, pairs)
    inputs = pairs.reshape(n, 2 * p)  # [n, T]

    # A real pair whose key occurred in an earlier real pair is scored at its key position.
    seen = np.zeros((n, k), dtype=bool)
    repeat = np.zeros((n, p), dtype=bool)  # [n, P]
    for j in range(p):
        real = ~noise[:, j]
        repeat[:, j] = real & seen[rows, keys[:, j]]
        seen[rows[real], keys[real, j]] = True
    targets = np.full((n, 2 * p), IGNORE_INDEX, dtype=np.int64)
    targets[:, 0::2] = np.where(repeat, values, IGNORE_INDEX)
    if train and cfg.train_all_tokens:
        # Every next token; the last input (the final value) has none. The scored targets go along
        # for a validation split.
        every = np.concatenate([inputs[:, 1:], np.full((n, 1), IGNORE_INDEX, dtype=np.int64)], axis=1)
        return inputs, every, targets
    return inputs, targets


def generate_recall(cfg: RecallConfig, seed: int) -> TaskData:
    """Train and test sets of (noisy) in-context recall; the same (cfg, seed) gives identical tensors."""
    train, test = partial(_recall_sample, cfg, train=True), partial(_recall_sample, cfg, train=False)
    return split_data(train, test, seed, cfg.num_train, cfg.num_test)


# --- fuzzy in-context recall ------------------------------------------------------------------------


@dataclass(frozen=True)
class FuzzyRecallConfig(KeyValueTokens):
    vocab_size: int = 16  # keys, values and the pad token vocab_size-1 (MAD baseline 16; varied 32, 64, 128)
    seq_len: int = 64  # tokens per sequence (MAD baseline 128; varied 256-1024)
    k_motif_size: int = 3  # longest key, in tokens; test keys all have this length (MAD 3)
    v_motif_size: int = 3  # longest value, in tokens (MAD 3)
    num_train: int = 2_000  # distinct training sequences (MAD 12,800; varied 6,400-800)
    num_test: int = 256  # distinct test sequences, none in the training set (MAD 1,280)
    train_all_tokens: bool = True  # train on every next token, as MAD does; False: the scored positions only

    def __post_init__(self) -> None:
        check_int("k_motif_size", self.k_motif_size, 1, limit=MAX_SEQ_LEN // 4)
        check_int("v_motif_size", self.v_motif_size, 1, limit=MAX_SEQ_LEN // 4)
        # A key needs k_motif_size distinct key tokens, a value v_motif_size distinct value tokens.
        lo = 1 + 2 * max(self.k_motif_size, self.v_motif_size)
        check_int("vocab_size", self.vocab_size, max(lo, 5), limit=MAX_VOCAB)
        # One pair of each longest size plus the final query fit in seq_len + 1 stream tokens.
        check_int("seq_len", self.seq_len, 2 * (self.k_motif_size + self.v_motif_size) - 1, limit=MAX_SEQ_LEN)
        check_counts(self.num_train, self.num_test)
        check_bool("train_all_tokens", self.train_all_tokens)

    @property
    def pad(self) -> int:
        return self.vocab_size - 1

    @property
    def num_kv_tokens(self) -> int:
        return self.pad  # every token below the pad token


def _fuzzy_row(cfg: FuzzyRecallConfig, rng: np.random.Generator, train: bool) -> tuple[list[int], list[bool]]:
    """One stream of seq_len + 1 tokens and, per token, whether predicting it is scored."""
    length, kmax, vmax = cfg.seq_len + 1, cfg.k_motif_size, cfg.v_motif_size
    m = length // 2 + 1  # more pairs than fit (a pair has at least two tokens)
    k_sizes = rng.integers(1, kmax + 1, size=m) if train else np.full(m, kmax)
    v_sizes = rng.integers(1, vmax + 1, size=m)
    k_perm = np.argsort(rng.random((m, cfg.num_keys)), axis=1)  # row j: key tokens in random order
    v_perm = cfg.num_keys + np.argsort(rng.random((m, cfg.num_values)), axis=1)
    table: dict[tuple[int, ...], tuple[int, ...]] = {}  # this sequence's key -> value, in order shown
    stream: list[int] = []
    scored: list[bool] = []
    j = 0
    while len(stream) <= length - 2 * (kmax + vmax):  # room for this pair and the final query
        key = tuple(int(t) for t in k_perm[j, : k_sizes[j]])
        repeat = key in table
        value = table[key] if repeat else tuple(int(t) for t in v_perm[j, : v_sizes[j]])
        table[key] = value
        stream += [*key, *value]
        scored += [False] * len(key) + [repeat] * len(value)
        j += 1
    key = list(table)[int(rng.integers(len(table)))]  # the final query: a key shown earlier
    stream += [*key, *table[key]]
    scored += [False] * len(key) + [True] * len(table[key])
    pad = length - len(stream)
    return [cfg.pad] * pad + stream, [False] * pad + scored


def _fuzzy_sample(
    cfg: FuzzyRecallConfig, rng: np.random.Generator, n: int, train: bool
) -> tuple[np.ndarray, np.ndarray]:
    streams, scored = zip(*(_fuzzy_row(cfg, rng, train) for _ in range(n)))
    stream = np.array(streams, dtype=np.int64)  # [n, T+1]
    inputs = stream[:, :-1]  # [n, T]
    targets = np.where(np.array(scored)[:, 1:], stream[:, 1:], IGNORE_INDEX)
    if train and cfg.train_all_tokens:
        return inputs, stream[:, 1:].copy(), targets  # every next token, and the scored ones for validation
    return inputs, targets


def generate_fuzzy_recall(cfg: FuzzyRecallConfig, seed: int) -> TaskData:
    """Train and test sets of fuzzy in-context recall; the same (cfg, seed) gives identical tensors."""
    train, test = partial(_fuzzy_sample, cfg, train=True), partial(_fuzzy_sample, cfg, train=False)
    return split_data(train, test, seed, cfg.num_train, cfg.num_test)


# --- selective copying ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SelectiveCopyingConfig:
    vocab_size: int = 16  # data tokens, blank vocab-2, copy vocab-1 (MAD baseline 16; varied 32, 64, 128)
    seq_len: int = 64  # tokens per sequence (MAD baseline 256; varied 512, 1024)
    num_tokens_to_copy: int = 8  # data tokens to copy, in order (MAD baseline 16; varied 32, 64, 96)
    num_train: int = 2_000  # distinct training sequences (MAD 12,800; varied 6,400-800)
    num_test: int = 256  # distinct test sequences, none in the training set (MAD 1,280)

    def __post_init__(self) -> None:
        check_int("vocab_size", self.vocab_size, 3, limit=MAX_VOCAB)
        check_int("num_tokens_to_copy", self.num_tokens_to_copy, 1, limit=(MAX_SEQ_LEN - 2) // 2)
        # Data, at least one blank among it, the copy token, then one output slot per data token.
        check_int("seq_len", self.seq_len, 2 * self.num_tokens_to_copy + 2, limit=MAX_SEQ_LEN)
        check_counts(self.num_train, self.num_test)

    @property
    def blank(self) -> int:
        return self.vocab_size - 2

    @property
    def copy(self) -> int:
        return self.vocab_size - 1

    @property
    def region(self) -> int:
        """Positions before the copy token, holding the data tokens and the blanks between them."""
        return self.seq_len - self.num_tokens_to_copy - 1


def _copy_sample(cfg: SelectiveCopyingConfig, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    c, r = cfg.num_tokens_to_copy, cfg.region
    data = rng.integers(0, cfg.blank, size=(n, c))  # [n, c]
    pos = np.sort(np.argsort(rng.random((n, r)), axis=1)[:, :c], axis=1)  # [n, c] ordered positions
    inputs = np.full((n, cfg.seq_len), cfg.blank, dtype=np.int64)
    np.put_along_axis(inputs, pos, data, axis=1)
    inputs[:, r] = cfg.copy
    targets = np.full((n, cfg.seq_len), IGNORE_INDEX, dtype=np.int64)
    targets[:, r + 1 :] = data
    return inputs, targets


def generate_selective_copying(cfg: SelectiveCopyingConfig, seed: int) -> TaskData:
    """Train and test sets of selective copying; the same (cfg, seed) gives identical tensors."""
    sample = partial(_copy_sample, cfg)
    return split_data(sample, sample, seed, cfg.num_train, cfg.num_test)


# --- compression ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CompressionConfig:
    num_symbols: int = 15  # random-token alphabet (MAD vocab_size 16 = 15 symbols + the compression token)
    num_tokens: int = 31  # tokens to compress (MAD seq_len 32 = 31 tokens + the compression token)
    num_train: int = 2_000  # distinct training sequences (MAD 12,800; varied 6,400-800)
    num_test: int = 256  # distinct test sequences, none in the training set (MAD 1,280)

    def __post_init__(self) -> None:
        # vocab_size = num_symbols + 1 + num_tokens and seq_len = 2 * num_tokens + 1 stay within the task bounds.
        check_int("num_tokens", self.num_tokens, 1, limit=(MAX_SEQ_LEN - 1) // 2)
        check_int("num_symbols", self.num_symbols, 2, limit=MAX_VOCAB - 1 - self.num_tokens)
        check_counts(self.num_train, self.num_test)

    @property
    def compress_token(self) -> int:
        return self.num_symbols

    @property
    def vocab_size(self) -> int:
        """Symbols, the compression token and one position marker per compressed token."""
        return self.num_symbols + 1 + self.num_tokens

    @property
    def seq_len(self) -> int:
        return 2 * self.num_tokens + 1


def _compression_sample(cfg: CompressionConfig, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    L = cfg.num_tokens
    x = rng.integers(0, cfg.num_symbols, size=(n, L))  # [n, L]
    markers = np.broadcast_to(np.arange(cfg.num_symbols + 1, cfg.vocab_size), (n, L))  # [n, L]
    inputs = np.concatenate([x, np.full((n, 1), cfg.compress_token), markers], axis=1).astype(np.int64)
    targets = np.concatenate([np.full((n, L + 1), IGNORE_INDEX), x], axis=1).astype(np.int64)
    return inputs, targets


def generate_compression(cfg: CompressionConfig, seed: int) -> TaskData:
    """Train and test sets of compression; the same (cfg, seed) gives identical tensors."""
    sample = partial(_compression_sample, cfg)
    return split_data(sample, sample, seed, cfg.num_train, cfg.num_test)


# --- memorization --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MemorizationConfig(KeyValueTokens):
    vocab_size: int = 256  # keys, values and the insert token vocab-1 (MAD baseline 256; varied 512-8192)
    seq_len: int = 32  # tokens per sequence, even: seq_len/2 key-insert pairs (MAD 32)
    num_train: int = 256  # distinct training sequences (MAD 256)
    num_test: int = 256  # distinct test sequences, none in the training set (MAD 1,280)

    def __post_init__(self) -> None:
        check_int("vocab_size", self.vocab_size, 3, limit=MAX_VOCAB)
        check_int("seq_len", self.seq_len, 2, limit=MAX_SEQ_LEN)
        if self.seq_len % 2:
            raise TaskConfigError("seq_len", f"got {self.seq_len}, must be even (the sequence is key-insert pairs)")
        check_counts(self.num_train, self.num_test)

    @property
    def insert(self) -> int:
        return self.vocab_size - 1

    @property
    def num_kv_tokens(self) -> int:
        return self.insert  # every token below the insert token


def memorization_map(cfg: MemorizationConfig, seed: int) -> np.ndarray:
    """The fixed key -> value table of `seed`: entry k is the value of key k (distinct values). [K]"""
    rng = np.random.default_rng([seed, 2])  # its own stream: the train/test split uses [seed, 0] and [seed, 1]
    return cfg.num_keys + rng.permutation(cfg.num_values)[: cfg.num_keys]


def generate_memorization(cfg: MemorizationConfig, seed: int, table_seed: int | None = None) -> TaskData:
    """Train and test sets sharing the mapping of `seed` (or of `table_seed`, to draw fresh sequences
    over a mapping a model has learned); no test sequence is a training sequence."""
    check_seed(seed)
    table = memorization_map(cfg, seed if table_seed is None else table_seed)

    def sample(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        p = cfg.seq_len // 2
        keys = rng.integers(0, cfg.num_keys, size=(n, p))  # [n, P]
        inputs = np.full((n, cfg.seq_len), cfg.insert, dtype=np.int64)
        inputs[:, 0::2] = keys
        targets = np.full((n, cfg.seq_len), IGNORE_INDEX, dtype=np.int64)
        targets[:, 1::2] = table[keys]
        return inputs, targets

    return split_data(sample, sample, seed, cfg.num_train, cfg.num_test)


# --- registry entries ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InContextRecallTask(ConfigTask):
    config: RecallConfig = RecallConfig()
    name: str = "in_context_recall"
    generator = staticmethod(generate_recall)


@dataclass(frozen=True)
class NoisyRecallTask(ConfigTask):
    config: NoisyRecallConfig = NoisyRecallConfig()
    name: str = "noisy_in_context_recall"
    generator = staticmethod(generate_recall)


@dataclass(frozen=True)
class FuzzyRecallTask(ConfigTask):
    config: FuzzyRecallConfig = FuzzyRecallConfig()
    name: str = "fuzzy_in_context_recall"
    generator = staticmethod(generate_fuzzy_recall)


@dataclass(frozen=True)
class SelectiveCopyingTask(ConfigTask):
    config: SelectiveCopyingConfig = SelectiveCopyingConfig()
    name: str = "selective_copying"
    generator = staticmethod(generate_selective_copying)


@dataclass(frozen=True)
class CompressionTask(ConfigTask):
    config: CompressionConfig = CompressionConfig()
    name: str = "compression"
    generator = staticmethod(generate_compression)


@dataclass(frozen=True)
class MemorizationTask(ConfigTask):
    config: MemorizationConfig = MemorizationConfig()
    name: str = "memorization"
    generator = staticmethod(generate_memorization)

    def generate_fresh(self, trained_seed: int, fresh_seed: int) -> TaskData:
        """Sequences from the streams of `fresh_seed` over the key-value table of `trained_seed`: the
        facts a model trained with `trained_seed` memorized, asked in new sequences."""
        return generate_memorization(self.config, fresh_seed, table_seed=trained_seed)


__all__ = [
    "CompressionConfig",
    "CompressionTask",
    "FuzzyRecallConfig",
    "FuzzyRecallTask",
    "InContextRecallTask",
    "MemorizationConfig",
    "MemorizationTask",
    "NoisyRecallConfig",
    "NoisyRecallTask",
    "RecallConfig",
    "SelectiveCopyingConfig",
    "SelectiveCopyingTask",
    "generate_compression",
    "generate_fuzzy_recall",
    "generate_memorization",
    "generate_recall",
    "generate_selective_copying",
    "memorization_map",
]
