"""Byte-level language modelling on real text that every Python install carries.

The corpus is the standard library's `pydoc_data.topics` (the help topics of the Python docs):
the topic texts concatenated in sorted key order, UTF-8 encoded, ~466 KB of English prose and
code. It needs no download, but it changes between Python releases, so it is pinned by sha256:
on a machine whose corpus differs, generating data raises CorpusMismatchError instead of
silently scoring candidates on other text.

Inputs are windows of `seq_len` bytes (token id = byte value, vocab 256); the target at every
position is the next byte. Training windows lie in the first (1 - test_frac) of the corpus, test
windows in the held-out tail, and no window crosses the boundary, so no test byte is ever
trained on. `extra_metrics` turns the trainer's mean cross-entropy (nats per byte) into bits per
byte.
"""

from __future__ import annotations

import functools
import hashlib
import math
import platform
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from hybridnas.workers.tasks import (
    MAX_EXAMPLES,
    MAX_SEQ_LEN,
    TaskConfigError,
    TaskData,
    check_int,
    config_from_dict,
    split_data,
)

#: sha256 of the pinned corpus: pydoc_data.topics of Python 3.11.7.
CORPUS_SHA256 = "37d06970fc926e60c16dff401e441b84752446a36b6b64516c229fdec77e992c"
CORPUS_BYTES = 466_117  # length of the pinned corpus
CORPUS_PYTHON = "3.11.7"  # the Python release whose pydoc_data.topics is pinned
VOCAB_SIZE = 256  # one token per byte value


class CorpusMismatchError(RuntimeError):
    """This machine's corpus is not the pinned one; results would not be comparable."""


def build_corpus(topics: Mapping[str, str]) -> bytes:
    """The corpus text of a pydoc topics mapping: texts in sorted key order, UTF-8."""
    return "".join(topics[key] for key in sorted(topics)).encode("utf-8")


def check_corpus(data: bytes, expected_sha256: str = CORPUS_SHA256) -> bytes:
    """`data` itself when its sha256 is the pinned one; CorpusMismatchError otherwise."""
    digest = hashlib.sha256(data).hexdigest()
    if digest != expected_sha256:
        raise CorpusMismatchError(
            f"byte_lm corpus mismatch: pydoc_data.topics of this Python ({platform.python_version()}) gives "
            f"{len(data)} bytes with sha256 {digest}, but the task is pinned to {expected_sha256} "
            f"({CORPUS_BYTES} bytes, Python {CORPUS_PYTHON}); run byte_lm on Python {CORPUS_PYTHON}"
        )
    return data


@functools.lru_cache(maxsize=1)
def load_corpus() -> bytes:
    """The pinned corpus, read from this interpreter's standard library and checked."""
    from pydoc_data import topics

    return check_corpus(build_corpus(topics.topics))


@dataclass(frozen=True)
class ByteLMConfig:
    seq_len: int = 128  # bytes per input window; the target at each position is the next byte
    num_train: int = 2_000  # distinct training windows, from the head of the corpus
    num_test: int = 200  # distinct test windows, from the held-out tail
    test_frac: float = 0.1  # fraction of the corpus (its tail) held out for test windows, in (0, 1)

    def __post_init__(self) -> None:
        f = self.test_frac
        if not isinstance(f, (int, float)) or isinstance(f, bool) or not 0 < f < 1:
            raise TaskConfigError("test_frac", f"got {f!r}, must be a number in (0, 1)")
        object.__setattr__(self, "test_frac", float(f))
        # A window needs seq_len + 1 bytes inside its own region.
        longest = min(self.split, CORPUS_BYTES - self.split) - 1
        if longest < 1:
            raise TaskConfigError("test_frac", f"got {f!r}, leaves a region of the corpus empty")
        check_int("seq_len", self.seq_len, 1, longest, limit=MAX_SEQ_LEN)
        check_int("num_train", self.num_train, 1, limit=MAX_EXAMPLES)
        check_int("num_test", self.num_test, 1, limit=MAX_EXAMPLES)

    @property
    def split(self) -> int:
        """First byte of the held-out tail."""
        return int(CORPUS_BYTES * (1.0 - self.test_frac))


def _windows(
    corpus: np.ndarray, lo: int, hi: int, seq_len: int, rng: np.random.Generator, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """`n` random windows of seq_len + 1 bytes inside corpus[lo:hi]: inputs and next-byte targets."""
    starts = lo + rng.integers(0, hi - lo - seq_len, size=n)  # [n]
    rows = corpus[starts[:, None] + np.arange(seq_len + 1)]  # [n, T+1]
    return rows[:, :-1], rows[:, 1:]


def generate_byte_lm(cfg: ByteLMConfig, seed: int) -> TaskData:
    """Train windows from the head, test windows from the tail; the same (cfg, seed) gives identical tensors."""
    corpus = np.frombuffer(load_corpus(), dtype=np.uint8).astype(np.int64)  # [CORPUS_BYTES]
    return split_data(
        lambda rng, n: _windows(corpus, 0, cfg.split, cfg.seq_len, rng, n),
        lambda rng, n: _windows(corpus, cfg.split, corpus.size, cfg.seq_len, rng, n),
        seed,
        cfg.num_train,
        cfg.num_test,
    )


@dataclass(frozen=True)
class ByteLMTask:
    """The registry entry for `byte_lm`: `make_task({"name": "byte_lm", ...})` returns one."""

    config: ByteLMConfig = ByteLMConfig()
    name: str = "byte_lm"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ByteLMTask:
        return cls(config_from_dict(ByteLMConfig, "byte_lm", d))

    @property
    def vocab_size(self) -> int:
        return VOCAB_SIZE

    @property
    def seq_len(self) -> int:
        return self.config.seq_len

    def generate(self, seed: int) -> TaskData:
        return generate_byte_lm(self.config, seed)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **asdict(self.config)}

    @staticmethod
    def extra_metrics(loss: float, accuracy: float) -> dict[str, float]:
        """Bits per byte from the mean next-byte cross-entropy in nats (every position is scored)."""
        return {"bits_per_byte": loss / math.log(2)}


__all__ = [
    "CORPUS_BYTES",
    "CORPUS_PYTHON",
    "CORPUS_SHA256",
    "VOCAB_SIZE",
    "ByteLMConfig",
    "ByteLMTask",
    "CorpusMismatchError",
    "build_corpus",
    "check_corpus",
    "generate_byte_lm",
    "load_corpus",
]
