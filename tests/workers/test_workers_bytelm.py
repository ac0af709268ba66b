from __future__ import annotations

import hashlib
import math
from collections.abc import Callable

import pydoc_data.topics
import pytest
import torch
from torch import nn

from hybridnas.workers.tasks import TASKS, TaskConfigError, make_task
from hybridnas.workers.tasks.bytelm import (
    CORPUS_BYTES,
    CORPUS_SHA256,
    ByteLMTask,
    CorpusMismatchError,
    build_corpus,
    check_corpus,
    load_corpus,
)
from hybridnas.workers.trainer import score

CFG = {"name": "byte_lm", "seq_len": 32, "num_train": 300, "num_test": 100}


def _corpus() -> bytes:
    """The corpus built here, independently of the module: topic texts in sorted key order, UTF-8."""
    topics = pydoc_data.topics.topics
    return "".join(topics[k] for k in sorted(topics)).encode("utf-8")


def test_the_pinned_corpus_is_this_pythons_pydoc_topics() -> None:
    corpus = _corpus()
    assert len(corpus) == CORPUS_BYTES
    assert hashlib.sha256(corpus).hexdigest() == CORPUS_SHA256
    assert load_corpus() == corpus


def test_windows_are_corpus_bytes_and_targets_the_next_byte() -> None:
    task = make_task(CFG)
    data = task.generate(0)
    corpus = _corpus()
    split = int(len(corpus) * 0.9)
    head, tail = corpus[:split], corpus[split:]
    assert data.train_inputs.shape == (300, 32) and data.test_inputs.shape == (100, 32)
    splits = ((head, data.train_inputs, data.train_targets), (tail, data.test_inputs, data.test_targets))
    for region, inputs, targets in splits:
        for inp, tgt in zip(inputs.tolist(), targets.tolist()):
            assert tgt[:-1] == inp[1:], "every position is scored with the next byte"
            window = bytes(inp + tgt[-1:])
            # The whole window (inputs and the last target) lies inside its own region.
            assert region.find(window) >= 0


def test_train_and_test_never_share_a_window() -> None:
    data = make_task({**CFG, "num_train": 2000}).generate(1)
    train = {tuple(r) for r in data.train_inputs.tolist()}
    test = {tuple(r) for r in data.test_inputs.tolist()}
    assert len(train) == 2000 and len(test) == 100
    assert not train & test


def test_test_frac_moves_the_boundary() -> None:
    # With half the corpus held out, test windows come from the second half only.
    corpus = _corpus()
    data = make_task({**CFG, "test_frac": 0.5}).generate(0)
    half = len(corpus) // 2
    for inp, tgt in zip(data.test_inputs.tolist(), data.test_targets.tolist()):
        assert corpus[half:].find(bytes(inp + tgt[-1:])) >= 0


def test_same_seed_same_data_other_seed_other_data(check_seeding: Callable[..., None]) -> None:
    check_seeding(make_task(CFG), 3)


def test_too_few_test_windows_names_num_test() -> None:
    # A tail of ~200 bytes holds (tail - seq_len) window starts; one window more cannot be found.
    cfg = {"name": "byte_lm", "seq_len": 64, "test_frac": 200 / CORPUS_BYTES, "num_train": 10}
    starts = CORPUS_BYTES - make_task({**cfg, "num_test": 1}).config.split - 64
    assert 100 < starts < 300
    make_task({**cfg, "num_test": starts // 2}).generate(0)
    with pytest.raises(TaskConfigError, match="num_test"):
        make_task({**cfg, "num_test": starts + 1}).generate(0)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("seq_len", 0),
        ("seq_len", 50_000),  # longer than the held-out tail
        ("seq_len", 64.0),
        ("num_train", 0),
        ("num_test", False),
        ("test_frac", 0.0),
        ("test_frac", 1.0),
        ("test_frac", "0.1"),
    ],
)
def test_config_validation_names_the_field(key: str, value: object) -> None:
    with pytest.raises(TaskConfigError, match=f"^task.{key}: got ") as err:
        make_task({**CFG, key: value})
    assert err.value.field == f"task.{key}"


def test_registered_and_round_trips_through_to_dict() -> None:
    task = make_task(CFG)
    assert TASKS["byte_lm"] is ByteLMTask and isinstance(task, ByteLMTask)
    assert (task.name, task.vocab_size, task.seq_len) == ("byte_lm", 256, 32)
    assert make_task(task.to_dict()) == task
    assert make_task({"name": "byte_lm"}).to_dict() == {
        "name": "byte_lm", "seq_len": 128, "num_train": 2000, "num_test": 200, "test_frac": 0.1,
    }
    with pytest.raises(TaskConfigError, match=r"^task\.vocab_size: unknown byte_lm option"):
        make_task({**CFG, "vocab_size": 256})


class _Uniform(nn.Module):
    """Equal logits over 256 bytes: exactly 8 bits per byte."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(*x.shape, 256) + self.w  # [B, T, 256]


class _Bigram(nn.Module):
    """Fixed random logits per current byte: a model with a non-trivial, known loss."""

    def __init__(self) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.randn(256, 256, generator=torch.Generator().manual_seed(0)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.table[x]  # [B, T, 256]


def test_bits_per_byte_is_the_loss_in_bits() -> None:
    task = make_task(CFG)
    data = task.generate(0)
    _, loss = score(_Uniform(), data.test_inputs, data.test_targets, 64)
    assert task.extra_metrics(loss, 0.0) == {"bits_per_byte": pytest.approx(8.0, rel=1e-6)}  # float32 cross-entropy
    # Against log2 probabilities summed directly over every position.
    model = _Bigram()
    _, loss = score(model, data.test_inputs, data.test_targets, 64)
    with torch.no_grad():
        logp2 = torch.log2(torch.softmax(model(data.test_inputs).double(), dim=-1))  # [N, T, 256]
        bits = -logp2.gather(-1, data.test_targets.unsqueeze(-1)).mean().item()
    assert task.extra_metrics(loss, 0.5)["bits_per_byte"] == pytest.approx(bits, rel=1e-6)


def test_pin_rejects_a_changed_corpus(monkeypatch: pytest.MonkeyPatch) -> None:
    topics = dict(pydoc_data.topics.topics)
    first = sorted(topics)[0]
    changed = {**topics, first: topics[first] + " "}
    with pytest.raises(CorpusMismatchError, match=f"pinned to {CORPUS_SHA256}"):
        check_corpus(build_corpus(changed))
    assert check_corpus(build_corpus(topics)) == _corpus()
    assert build_corpus(dict(reversed(topics.items()))) == _corpus(), "key order, not dict order"
    # As on a machine whose standard library differs: generating the task fails, naming the pin.
    monkeypatch.setattr(pydoc_data.topics, "topics", changed)
    load_corpus.cache_clear()
    try:
        with pytest.raises(CorpusMismatchError, match=r"byte_lm corpus mismatch: .* sha256 [0-9a-f]{64}"):
            make_task(CFG).generate(0)
    finally:
        monkeypatch.undo()
        load_corpus.cache_clear()
    assert make_task(CFG).generate(0).train_inputs.shape == (300, 32)


def test_a_tiny_model_trains_a_few_steps(one_thread: None) -> None:
    from hybridnas.codegen import build_model
    from hybridnas.space import ArchSpec, LayerSpec
    from hybridnas.workers.trainer import TrainConfig, fit

    task = make_task({**CFG, "num_train": 32, "num_test": 16})
    spec = ArchSpec(d_model=16, layers=(LayerSpec("short_conv"), LayerSpec("attention", n_heads=2)), vocab_size=256)
    torch.manual_seed(0)
    _, result = fit(lambda: build_model(spec), task.generate(0), TrainConfig(steps=4, batch_size=8, eval_batch_size=16), seed=0)
    assert 0.0 <= result.accuracy <= 1.0 and math.isfinite(result.loss)
    # An untrained byte model sits near 8 bits per byte; it can only be finite and positive here.
    assert 0 < task.extra_metrics(result.loss, result.accuracy)["bits_per_byte"] < 16
