from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch

from hybridnas.workers.tasks import IGNORE_INDEX, TASKS, TaskConfigError, make_task
from hybridnas.workers.tasks.mqar import MQAR_PRESETS, PAD, MQARConfig, MQARTask, _random_subsets, generate_mqar

CFG = {"name": "mqar", "vocab_size": 40, "seq_len": 48, "num_kv_pairs": 6, "num_train": 300, "num_test": 60}


def _rows(x: torch.Tensor) -> list[tuple[int, ...]]:
    return [tuple(r) for r in x.tolist()]


def _check_sequence(cfg: MQARConfig, inp: list[int], tgt: list[int]) -> None:
    n = cfg.num_kv_pairs
    keys, values = inp[0 : 2 * n : 2], inp[1 : 2 * n : 2]
    assert len(set(keys)) == n, "a key occurs twice in the context"
    assert all(1 <= k <= cfg.num_keys for k in keys)
    assert all(cfg.num_keys < v < cfg.vocab_size for v in values)
    pairs = dict(zip(keys, values))
    queried = []
    for pos in range(cfg.seq_len):
        if tgt[pos] == IGNORE_INDEX:
            # Outside the context every non-query position is padding.
            assert pos < 2 * n or inp[pos] == PAD
            continue
        assert pos >= 2 * n, "a target inside the key-value context"
        assert (pos - 2 * n) % 2 == 0, "queries sit at even offsets of the query region"
        assert tgt[pos] == pairs[inp[pos]], "target is not the value paired with the queried key"
        queried.append(inp[pos])
    assert sorted(queried) == sorted(keys), "every key is queried exactly once"


def test_every_target_is_the_value_paired_with_its_key() -> None:
    task = make_task(CFG)
    data = task.generate(0)
    assert data.train_inputs.shape == (300, 48) and data.test_inputs.shape == (60, 48)
    assert data.train_inputs.dtype == torch.long and data.train_targets.dtype == torch.long
    for inputs, targets in ((data.train_inputs, data.train_targets), (data.test_inputs, data.test_targets)):
        for inp, tgt in zip(inputs.tolist(), targets.tolist()):
            _check_sequence(task.config, inp, tgt)


def test_train_and_test_share_no_example_and_have_no_duplicates() -> None:
    # A small space (few keys, every slot used) makes collisions frequent, so the dedup is exercised.
    cfg = MQARConfig(vocab_size=9, seq_len=10, num_kv_pairs=2, num_train=400, num_test=100)  # 864 exist
    data = generate_mqar(cfg, seed=3)
    train, test = _rows(data.train_inputs), _rows(data.test_inputs)
    assert len(set(train)) == len(train) == 400
    assert len(set(test)) == len(test) == 100
    assert not set(train) & set(test)


def test_same_seed_same_data_other_seed_other_data(check_seeding: Callable[..., None]) -> None:
    check_seeding(make_task(CFG), 7)


def test_test_set_does_not_depend_on_num_train() -> None:
    small = make_task({**CFG, "num_train": 50}).generate(1)
    large = make_task({**CFG, "num_train": 500}).generate(1)
    assert torch.equal(small.test_inputs, large.test_inputs)


def test_power_law_puts_queries_closer_to_the_context_than_uniform() -> None:
    base = {**CFG, "seq_len": 128, "num_kv_pairs": 4, "num_train": 500}
    mean_pos = {}
    for a in (0.01, 1.0):
        data = make_task({**base, "power_a": a}).generate(0)
        mean_pos[a] = (data.train_targets != IGNORE_INDEX).nonzero()[:, 1].float().mean().item()
    assert mean_pos[0.01] < mean_pos[1.0] - 5


def test_too_small_space_names_the_field() -> None:
    # vocab 5, one pair, seq_len 4: two keys x two values x one slot = 4 distinct sequences.
    cfg = MQARConfig(vocab_size=5, seq_len=4, num_kv_pairs=1, num_train=5, num_test=2)
    with pytest.raises(TaskConfigError, match="num_train"):
        generate_mqar(cfg, 0)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("vocab_size", 24),  # < 4 * num_kv_pairs + 1 = 25
        ("seq_len", 23),  # < 4 * num_kv_pairs = 24
        ("num_kv_pairs", 0),
        ("num_train", 0),
        ("num_test", -1),
        ("vocab_size", 40.0),
        ("num_train", True),
        ("power_a", 0.0),
        ("power_a", 1.5),
    ],
)
def test_config_validation_names_the_field(key: str, value: object) -> None:
    cfg = {"name": "mqar", "vocab_size": 40, "seq_len": 48, "num_kv_pairs": 6, "num_train": 10, "num_test": 10}
    with pytest.raises(TaskConfigError, match=f"^task.{key}:") as err:
        make_task({**cfg, key: value})
    assert err.value.field == f"task.{key}"


def test_make_task_rejects_unknown_name_and_option() -> None:
    with pytest.raises(ValueError, match=r"task\.name: got 'mad_recall', allowed: .*\bmqar\b"):
        make_task({"name": "mad_recall"})
    with pytest.raises(ValueError, match=r"task\.name"):
        make_task({"vocab_size": 40})
    with pytest.raises(ValueError, match=r"task\.num_pairs: unknown mqar option; allowed: .*num_kv_pairs"):
        make_task({"name": "mqar", "num_pairs": 4})


def test_task_interface_and_round_trip() -> None:
    task = make_task(CFG)
    assert isinstance(task, MQARTask) and TASKS["mqar"] is MQARTask
    assert (task.name, task.vocab_size, task.seq_len) == ("mqar", 40, 48)
    assert make_task(task.to_dict()) == task
    with pytest.raises(ValueError, match="seed"):
        task.generate(-1)
    assert "preset" not in task.to_dict()  # a preset-free config keeps its old dict


# --- Zoology presets ------------------------------------------------------------------------------------


def test_presets_are_zoologys_mqar_sizes() -> None:
    # Zoology's ICLR 2024 figure-2 sweep: vocab 8192, 100k train / 3k test, power_a 0.01.
    expected = {"zoology-64": (64, 4), "zoology-128": (128, 8), "zoology-256": (256, 16), "zoology-512": (512, 64)}
    assert set(MQAR_PRESETS) == set(expected)
    for name, (seq_len, pairs) in expected.items():
        cfg = make_task({"name": "mqar", "preset": name}).config
        assert (cfg.vocab_size, cfg.seq_len, cfg.num_kv_pairs) == (8192, seq_len, pairs)
        assert (cfg.num_train, cfg.num_test, cfg.power_a) == (100_000, 3_000, 0.01)


def test_explicit_fields_override_the_preset_and_data_is_exact() -> None:
    task = make_task({"name": "mqar", "preset": "zoology-256", "num_train": 40, "num_test": 20})
    cfg = task.config
    assert (cfg.vocab_size, cfg.seq_len, cfg.num_kv_pairs, cfg.num_train, cfg.num_test) == (8192, 256, 16, 40, 20)
    assert make_task(task.to_dict()) == task and task.to_dict()["preset"] == "zoology-256"
    assert MQARConfig(preset="zoology-256", num_train=40, num_test=20) == cfg
    # The large key pool takes the partial-shuffle path; labels must still be exact.
    data = task.generate(0)
    for inputs, targets in ((data.train_inputs, data.train_targets), (data.test_inputs, data.test_targets)):
        for inp, tgt in zip(inputs.tolist(), targets.tolist()):
            _check_sequence(cfg, inp, tgt)
    # Without a preset the defaults apply; a preset changes nothing a field sets explicitly.
    assert MQARConfig() == MQARConfig(vocab_size=64, seq_len=64, num_kv_pairs=4, num_train=2000, num_test=200)
    assert MQARConfig(preset="zoology-64", vocab_size=64, num_train=2000, num_test=200).vocab_size == 64


def test_preset_values_are_validated_like_explicit_ones() -> None:
    # zoology-512 has 64 pairs: seq_len 200 < 4 * 64 is rejected, naming seq_len.
    with pytest.raises(TaskConfigError, match=r"^task\.seq_len: got 200, must be an integer >= 256"):
        make_task({"name": "mqar", "preset": "zoology-512", "seq_len": 200})


@pytest.mark.parametrize("preset", ["zoology-1024", "ZOOLOGY-64", 64])
def test_unknown_preset_names_the_allowed_ones(preset: object) -> None:
    allowed = "zoology-64, zoology-128, zoology-256, zoology-512"
    with pytest.raises(TaskConfigError, match=rf"^task\.preset: got .*, allowed: {allowed}$"):
        make_task({"name": "mqar", "preset": preset})


def test_partial_shuffle_draws_uniform_distinct_subsets() -> None:
    rng = np.random.default_rng(0)
    sub = _random_subsets(rng, 20_000, 300, 3)  # pool 300 takes the partial-shuffle path
    assert sub.shape == (20_000, 3) and sub.min() >= 0 and sub.max() < 300
    assert (np.sort(sub, axis=1)[:, 1:] != np.sort(sub, axis=1)[:, :-1]).all(), "a row repeats an element"
    counts = np.bincount(sub.ravel(), minlength=300)  # 200 expected per element, sd ~14
    assert counts.min() > 140 and counts.max() < 260
    first = np.bincount(sub[:, 0], minlength=300)  # each position is uniform too, not only the union
    assert first.min() > 30 and first.max() < 110


def test_a_tiny_model_trains_a_few_steps(one_thread: None) -> None:
    from hybridnas.codegen import build_model
    from hybridnas.space import ArchSpec, LayerSpec
    from hybridnas.workers.trainer import TrainConfig, fit

    task = make_task({**CFG, "num_train": 32, "num_test": 16})
    spec = ArchSpec(d_model=16, layers=(LayerSpec("short_conv"), LayerSpec("attention", n_heads=2)), vocab_size=40)
    torch.manual_seed(0)
    _, result = fit(lambda: build_model(spec), task.generate(0), TrainConfig(steps=4, batch_size=8, eval_batch_size=16), seed=0)
    assert 0.0 <= result.accuracy <= 1.0 and math.isfinite(result.loss) and result.kept.steps == 4
