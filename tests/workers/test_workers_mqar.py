from __future__ import annotations

import pytest
import torch

from hybridnas.workers.tasks import IGNORE_INDEX, TASKS, TaskConfigError, make_task
from hybridnas.workers.tasks.mqar import PAD, MQARConfig, MQARTask, generate_mqar

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


def test_same_seed_same_data_other_seed_other_data() -> None:
    task = make_task(CFG)
    a, b, c = task.generate(7), task.generate(7), task.generate(8)
    for name in ("train_inputs", "train_targets", "test_inputs", "test_targets"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    assert not torch.equal(a.train_inputs, c.train_inputs)
    assert not torch.equal(a.test_inputs, c.test_inputs)


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
    with pytest.raises(ValueError, match=r"task\.name: got 'mad_recall', allowed: mqar"):
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
