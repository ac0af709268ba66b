from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable

import pytest
import torch

from hybridnas.workers.tasks import IGNORE_INDEX, TASKS, TaskConfigError, make_task
from hybridnas.workers.tasks.mad import (
    CompressionConfig,
    FuzzyRecallConfig,
    MemorizationConfig,
    RecallConfig,
    SelectiveCopyingConfig,
    generate_memorization,
)

MAD_TASKS = (
    "in_context_recall",
    "fuzzy_in_context_recall",
    "noisy_in_context_recall",
    "selective_copying",
    "compression",
    "memorization",
)

#: Small instances of every MAD task (the defaults are larger than a unit test needs).
SMALL = {
    "in_context_recall": {"vocab_size": 16, "seq_len": 32, "num_train": 200, "num_test": 50},
    "noisy_in_context_recall": {"seq_len": 40, "frac_noise": 0.3, "num_train": 200, "num_test": 50},
    "fuzzy_in_context_recall": {"seq_len": 40, "num_train": 200, "num_test": 50},
    "selective_copying": {"seq_len": 32, "num_tokens_to_copy": 6, "num_train": 200, "num_test": 50},
    "compression": {"num_symbols": 7, "num_tokens": 12, "num_train": 200, "num_test": 50},
    "memorization": {"vocab_size": 64, "seq_len": 16, "num_train": 128, "num_test": 50},
}


def _task(name: str, **overrides: object):
    return make_task({"name": name, **SMALL[name], **overrides})


def _rows(x: torch.Tensor) -> list[tuple[int, ...]]:
    return [tuple(r) for r in x.tolist()]


def _splits(data):
    return (
        ("train", data.train_inputs.tolist(), data.train_targets.tolist()),
        ("test", data.test_inputs.tolist(), data.test_targets.tolist()),
    )


# --- labels, recomputed from each input sequence -------------------------------------------------------


def _recall_expected(cfg: RecallConfig, inp: list[int]) -> list[int]:
    """Scored targets of one (noisy) recall sequence, by walking its pairs with a dict."""
    clean, keys = cfg.vocab_size - cfg.noise_vocab_size, (cfg.vocab_size - cfg.noise_vocab_size) // 2
    seen: dict[int, int] = {}
    out = [IGNORE_INDEX] * len(inp)
    for j in range(0, len(inp), 2):
        a, b = inp[j], inp[j + 1]
        if a >= clean:  # a noise pair: both tokens from the noise vocabulary
            assert b >= clean and cfg.frac_noise > 0
            continue
        assert a < keys <= b < clean, "a pair is not key then value"
        if a in seen:
            assert seen[a] == b, "a key changed its value within the sequence"
            out[j] = b
        seen[a] = b
    last = inp[-2]
    assert last < keys and list(inp[:-2]).count(last) >= 1, "the last pair must repeat a key"
    return out


@pytest.mark.parametrize("name", ["in_context_recall", "noisy_in_context_recall"])
def test_recall_targets_are_the_values_of_repeated_keys(name: str) -> None:
    task = _task(name)
    cfg = task.config
    data = task.generate(0)
    assert data.train_inputs.shape == (200, cfg.seq_len) and data.test_inputs.shape == (50, cfg.seq_len)
    scored = 0
    for split, inputs, targets in _splits(data):
        for inp, tgt in zip(inputs, targets):
            expected = _recall_expected(cfg, inp)
            if split == "test":
                assert tgt == expected
                scored += sum(t != IGNORE_INDEX for t in tgt)
            else:  # trained on every next token, as MAD trains recall
                assert tgt == inp[1:] + [IGNORE_INDEX]
    assert scored > 50 * 2
    # The training examples' scored targets go along, for validation: exactly the test set's kind.
    assert data.train_scored is not None
    for inp, tgt in zip(data.train_inputs.tolist(), data.train_scored.tolist()):
        assert tgt == _recall_expected(cfg, inp)
    # Only the scored positions when asked to.
    narrow = _task(name, train_all_tokens=False).generate(0)
    assert narrow.train_scored is None
    for inp, tgt in zip(narrow.train_inputs.tolist(), narrow.train_targets.tolist()):
        assert tgt == _recall_expected(cfg, inp)


@pytest.mark.parametrize("name", ["in_context_recall", "fuzzy_in_context_recall"])
def test_validation_is_scored_where_the_test_set_is(name: str) -> None:
    """A task trained on every token validates on the scored positions only: the learning rate and
    the target are chosen on what the test set measures, not on predicting random keys."""
    from hybridnas.workers.trainer import split_validation

    data = _task(name).generate(0)
    train, val = split_validation(data, 0.2)
    assert val is not None
    n_val = val.train_inputs.shape[0]
    assert torch.equal(val.test_targets, data.train_scored[-n_val:])
    assert torch.equal(val.train_targets, data.train_targets[-n_val:])  # its training targets are untouched
    assert torch.equal(train.train_scored, data.train_scored[:-n_val])
    # Fewer positions are scored than trained on, as in the test set.
    scored = (val.test_targets != IGNORE_INDEX).float().mean()
    trained = (val.train_targets != IGNORE_INDEX).float().mean()
    test_scored = (data.test_targets != IGNORE_INDEX).float().mean()
    assert scored < trained and abs(scored - test_scored) < 0.1


def test_noisy_recall_puts_noise_in_about_frac_noise_of_the_pairs() -> None:
    task = _task("noisy_in_context_recall", num_train=400, frac_noise=0.4)
    cfg = task.config
    noise = task.generate(1).train_inputs[:, 0::2] >= cfg.vocab_size - cfg.noise_vocab_size  # [N, P]
    # Pairs other than the last (always real) and one guaranteed real pair are noise with p = 0.4.
    p = cfg.seq_len // 2
    assert abs(noise.float().mean().item() - 0.4 * (p - 2) / p) < 0.02
    assert not noise[:, -1].any()


def test_noisy_recall_keeps_one_real_pair_before_the_query() -> None:
    # Three body pairs at 90% noise: one of them is always real, so 0.9 * 2/3 of them are noise.
    task = _task("noisy_in_context_recall", seq_len=8, frac_noise=0.9, num_train=2000, num_test=200)
    cfg = task.config
    data = task.generate(0)
    noise = data.train_inputs[:, 0:6:2] >= cfg.vocab_size - cfg.noise_vocab_size  # [N, 3]
    assert not noise.all(dim=1).any()
    assert abs(noise.float().mean().item() - 0.6) < 0.03
    for inp, tgt in zip(data.test_inputs.tolist(), data.test_targets.tolist()):
        assert tgt == _recall_expected(cfg, inp)


def _fuzzy_pairs(cfg: FuzzyRecallConfig, stream: list[int]) -> list[tuple[tuple[int, ...], tuple[int, ...], int]]:
    """(key, value, index of the value's first token) for every pair, after the left padding."""
    keys, pad = (cfg.vocab_size - 1) // 2, cfg.vocab_size - 1
    i = 0
    while stream[i] == pad:
        i += 1
    assert pad not in stream[i:], "padding only at the start"
    pairs = []
    while i < len(stream):
        k0 = i
        while i < len(stream) and stream[i] < keys:
            i += 1
        v0 = i
        while i < len(stream) and keys <= stream[i] < pad:
            i += 1
        key, value = tuple(stream[k0:v0]), tuple(stream[v0:i])
        assert key and value, "the body is not alternating keys and values"
        pairs.append((key, value, v0))
    return pairs


def test_fuzzy_recall_targets_are_the_values_of_repeated_multi_token_keys() -> None:
    task = _task("fuzzy_in_context_recall")
    cfg = task.config
    data = task.generate(0)
    key_lengths: dict[str, Counter] = {"train": Counter(), "test": Counter()}
    for split, inputs, targets in _splits(data):
        for inp, tgt in zip(inputs, targets):
            stream = inp + [tgt[-1]]  # the final value's last token is always a target
            pairs = _fuzzy_pairs(cfg, stream)
            seen: dict[tuple[int, ...], tuple[int, ...]] = {}
            expected = [IGNORE_INDEX] * len(inp)
            for key, value, v0 in pairs:
                assert 1 <= len(key) <= cfg.k_motif_size and len(set(key)) == len(key)
                assert 1 <= len(value) <= cfg.v_motif_size and len(set(value)) == len(value)
                key_lengths[split][len(key)] += 1
                if key in seen:
                    assert seen[key] == value, "a key changed its value within the sequence"
                    for i, token in enumerate(value):
                        expected[v0 - 1 + i] = token  # predicted at the position before it
                seen[key] = value
            assert pairs[-1][0] in {k for k, _, _ in pairs[:-1]}, "the final pair must repeat a key"
            assert tgt == (stream[1:] if split == "train" else expected)
    # As in MAD: training keys take every length, test keys the longest only.
    assert set(key_lengths["train"]) == set(range(1, cfg.k_motif_size + 1))
    assert set(key_lengths["test"]) == {cfg.k_motif_size}


def test_selective_copying_targets_are_the_data_tokens_in_order() -> None:
    task = _task("selective_copying")
    cfg: SelectiveCopyingConfig = task.config
    blank, copy, n = cfg.vocab_size - 2, cfg.vocab_size - 1, cfg.num_tokens_to_copy
    gaps = set()
    for _, inputs, targets in _splits(task.generate(0)):
        for inp, tgt in zip(inputs, targets):
            at = inp.index(copy)
            assert at == cfg.seq_len - n - 1 and inp.count(copy) == 1
            data = [t for t in inp[:at] if t != blank]
            assert len(data) == n and all(t < blank for t in data)
            assert inp[at + 1 :] == [blank] * n
            assert tgt == [IGNORE_INDEX] * (at + 1) + data
            gaps.add(tuple(i for i, t in enumerate(inp[:at]) if t != blank))
    assert len(gaps) > 200, "the data tokens sit at varying positions"


def test_compression_targets_rebuild_the_sequence_at_the_markers() -> None:
    task = _task("compression")
    cfg: CompressionConfig = task.config
    s, n = cfg.num_symbols, cfg.num_tokens
    assert (task.vocab_size, task.seq_len) == (s + 1 + n, 2 * n + 1)
    for _, inputs, targets in _splits(task.generate(0)):
        for inp, tgt in zip(inputs, targets):
            assert all(0 <= t < s for t in inp[:n])
            assert inp[n] == s  # the compression token
            assert inp[n + 1 :] == list(range(s + 1, s + 1 + n))  # one marker per position
            assert tgt == [IGNORE_INDEX] * (n + 1) + inp[:n]


def test_memorization_uses_one_fixed_injective_mapping_for_train_and_test() -> None:
    task = _task("memorization")
    cfg: MemorizationConfig = task.config
    keys, insert = (cfg.vocab_size - 1) // 2, cfg.vocab_size - 1
    mapping: dict[int, int] = {}
    seen_in = {"train": set(), "test": set()}
    for split, inputs, targets in _splits(task.generate(0)):
        for inp, tgt in zip(inputs, targets):
            assert inp[1::2] == [insert] * (cfg.seq_len // 2)
            assert tgt[0::2] == [IGNORE_INDEX] * (cfg.seq_len // 2)
            for k, v in zip(inp[0::2], tgt[1::2]):
                assert 0 <= k < keys and keys <= v < insert
                assert mapping.setdefault(k, v) == v, "a key has two values"
                seen_in[split].add(k)
    assert len(set(mapping.values())) == len(mapping), "two keys share a value"
    assert seen_in["test"] <= seen_in["train"], "every test fact was shown in training"
    other = generate_memorization(cfg, seed=1)
    other_keys, other_values = other.train_inputs[:, 0::2].flatten(), other.train_targets[:, 1::2].flatten()
    other_map = dict(zip(other_keys.tolist(), other_values.tolist()))
    changed = sum(mapping[k] != v for k, v in other_map.items() if k in mapping)
    assert changed > keys // 2, "the mapping follows the seed"


# --- splits, seeds, config ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", MAD_TASKS)
def test_no_duplicates_and_no_test_example_in_train(name: str) -> None:
    data = _task(name).generate(2)
    train, test = _rows(data.train_inputs), _rows(data.test_inputs)
    assert len(set(train)) == len(train) and len(set(test)) == len(test)
    assert not set(train) & set(test)


#: Task spaces small enough to enumerate: (config, how many distinct sequences exist).
TINY = [
    ({"name": "in_context_recall", "vocab_size": 4, "seq_len": 4}, 4),  # k v k v: 2 keys x 2 values
    ({"name": "fuzzy_in_context_recall", "vocab_size": 5, "seq_len": 3, "k_motif_size": 1, "v_motif_size": 1}, 4),
    ({"name": "selective_copying", "vocab_size": 3, "seq_len": 4, "num_tokens_to_copy": 1}, 2),  # 1 token, 2 places
    ({"name": "compression", "num_symbols": 2, "num_tokens": 3}, 8),
    ({"name": "memorization", "vocab_size": 7, "seq_len": 4}, 9),  # 3 keys, 2 pairs
]


@pytest.mark.parametrize(("config", "size"), TINY)
def test_a_space_is_used_up_exactly_then_the_error_names_num_train(config: dict, size: int) -> None:
    # Every distinct sequence lands in one split; the space is then exhausted.
    data = make_task({**config, "num_train": size - 1, "num_test": 1}).generate(0)
    rows = _rows(data.train_inputs) + _rows(data.test_inputs)
    assert len(set(rows)) == size
    with pytest.raises(TaskConfigError, match="num_train"):
        make_task({**config, "num_train": size, "num_test": 1}).generate(0)


@pytest.mark.parametrize("name", MAD_TASKS)
def test_same_seed_same_data_other_seed_other_data(name: str, check_seeding: Callable[..., None]) -> None:
    task = _task(name)
    check_seeding(task, 5)
    with pytest.raises(ValueError, match="seed"):
        task.generate(-1)


@pytest.mark.parametrize(
    ("name", "key", "value"),
    [
        ("in_context_recall", "vocab_size", 3),
        ("in_context_recall", "vocab_size", 16.0),
        ("in_context_recall", "seq_len", 33),
        ("in_context_recall", "seq_len", 2),
        ("in_context_recall", "frac_noise", 1.0),
        ("in_context_recall", "frac_noise", -0.1),
        ("in_context_recall", "num_train", 0),
        ("in_context_recall", "num_test", True),
        ("in_context_recall", "train_all_tokens", "yes"),
        ("noisy_in_context_recall", "vocab_size", 19),  # 16 of them are noise
        ("noisy_in_context_recall", "frac_noise", math.nan),
        ("noisy_in_context_recall", "noise_vocab_size", -1),
        ("fuzzy_in_context_recall", "vocab_size", 6),  # three-token keys need 3 keys and 3 values
        ("fuzzy_in_context_recall", "seq_len", 10),
        ("fuzzy_in_context_recall", "k_motif_size", 0),
        ("fuzzy_in_context_recall", "v_motif_size", 2.5),
        ("selective_copying", "vocab_size", 2),
        ("selective_copying", "seq_len", 13),  # 6 to copy: needs >= 14
        ("selective_copying", "num_tokens_to_copy", 0),
        ("compression", "num_symbols", 1),
        ("compression", "num_tokens", 0),
        ("memorization", "vocab_size", 2),
        ("memorization", "seq_len", 15),
        ("memorization", "num_test", 0),
    ],
)
def test_config_validation_names_the_field(name: str, key: str, value: object) -> None:
    with pytest.raises(TaskConfigError, match=f"^task.{key}: got ") as err:
        _task(name, **{key: value})
    assert err.value.field == f"task.{key}"


def test_noise_without_a_noise_vocabulary_names_noise_vocab_size() -> None:
    with pytest.raises(TaskConfigError, match=r"^task\.noise_vocab_size: got 0, must be >= 1 when frac_noise > 0"):
        make_task({"name": "in_context_recall", "frac_noise": 0.2})


def test_unknown_option_names_the_key_and_the_allowed_ones() -> None:
    with pytest.raises(TaskConfigError, match=r"^task\.vocab_size: unknown compression option; allowed: .*num_symbols"):
        make_task({"name": "compression", "vocab_size": 16})


@pytest.mark.parametrize("name", MAD_TASKS)
def test_registered_and_round_trips_through_to_dict(name: str) -> None:
    task = _task(name)
    assert TASKS[name] is type(task) and task.name == name
    assert make_task(task.to_dict()) == task
    default = make_task({"name": name})
    assert make_task(default.to_dict()) == default
    data = task.generate(0)
    assert data.seq_len == task.seq_len
    assert 0 <= int(data.train_inputs.min()) and int(data.train_inputs.max()) < task.vocab_size
    assert int(data.test_inputs.max()) < task.vocab_size


def test_defaults_are_the_documented_mad_scaled_sizes() -> None:
    sizes = {name: make_task({"name": name}).to_dict() for name in MAD_TASKS}
    recall = {"seq_len": 64, "num_train": 2000, "num_test": 256, "train_all_tokens": True}
    assert sizes["in_context_recall"] == {
        "name": "in_context_recall", "vocab_size": 16, "noise_vocab_size": 0, "frac_noise": 0.0, **recall
    }
    assert sizes["noisy_in_context_recall"] == {
        "name": "noisy_in_context_recall", "vocab_size": 32, "noise_vocab_size": 16, "frac_noise": 0.2, **recall
    }
    assert sizes["fuzzy_in_context_recall"] == {
        "name": "fuzzy_in_context_recall", "vocab_size": 16, "k_motif_size": 3, "v_motif_size": 3, **recall
    }
    assert sizes["selective_copying"] == {
        "name": "selective_copying", "vocab_size": 16, "seq_len": 64, "num_tokens_to_copy": 8,
        "num_train": 2000, "num_test": 256,
    }
    assert sizes["compression"] == {
        "name": "compression", "num_symbols": 15, "num_tokens": 31, "num_train": 2000, "num_test": 256
    }
    assert sizes["memorization"] == {
        "name": "memorization", "vocab_size": 256, "seq_len": 32, "num_train": 256, "num_test": 256
    }


@pytest.mark.parametrize("name", MAD_TASKS)
def test_a_tiny_model_trains_a_few_steps(name: str, one_thread: None) -> None:
    from hybridnas.codegen import build_model
    from hybridnas.space import ArchSpec, LayerSpec
    from hybridnas.workers.trainer import TrainConfig, fit

    task = _task(name, num_train=32, num_test=16)
    layers = (LayerSpec("short_conv"), LayerSpec("attention", n_heads=2))
    spec = ArchSpec(d_model=16, layers=layers, vocab_size=task.vocab_size)
    torch.manual_seed(0)
    _, result = fit(lambda: build_model(spec), task.generate(0), TrainConfig(steps=4, batch_size=8, eval_batch_size=16), seed=0)
    assert 0.0 <= result.accuracy <= 1.0 and math.isfinite(result.loss) and math.isfinite(result.kept.train_loss)
    assert result.kept.steps == 4
