"""Task suites: parsing, validation errors that name the field path, and the round trip."""

from __future__ import annotations

import pytest

from hybridnas.workers.suite import SuiteMember, TaskSuite, build_task, suite_members
from hybridnas.workers.tasks import TASKS, TaskConfigError, make_task

MQAR = {"name": "mqar", "vocab_size": 17, "seq_len": 16, "num_kv_pairs": 2, "num_train": 100, "num_test": 16}
COPY = {"name": "selective_copying", "vocab_size": 8, "seq_len": 24, "num_tokens_to_copy": 3, "num_train": 50}


def test_build_task_dispatches_on_the_name() -> None:
    single = build_task(MQAR)
    assert single == make_task(MQAR) and not isinstance(single, TaskSuite)
    suite = build_task({"name": "suite", "members": [{**MQAR, "weight": 2.0}, COPY]})
    assert isinstance(suite, TaskSuite) and suite.name == "suite"
    assert [m.key for m in suite.members] == ["mqar", "selective_copying"]  # default key: the task name
    assert [m.weight for m in suite.members] == [2.0, 1.0]  # default weight 1
    assert suite.members[0].task == make_task(MQAR) and suite.members[1].task == make_task(COPY)
    assert suite.vocab_size == 17 and suite.seq_len == 24  # the largest of the members
    assert suite.main_member().key == "mqar"


def test_keys_name_members_and_ties_keep_the_first() -> None:
    suite = build_task({"name": "suite", "members": [{**MQAR, "key": "small"}, {**MQAR, "seq_len": 32, "key": "long"}]})
    assert isinstance(suite, TaskSuite)
    assert [m.key for m in suite.members] == ["small", "long"]
    assert suite.main_member().key == "small"  # equal weights: the first
    assert suite.seq_len == 32


def test_round_trip_through_to_dict() -> None:
    suite = build_task({"name": "suite", "members": [{**MQAR, "key": "a", "weight": 3}, COPY]})
    d = suite.to_dict()
    assert d["name"] == "suite" and d["members"][0]["key"] == "a" and d["members"][0]["weight"] == 3.0
    assert d["members"][1] == {**make_task(COPY).to_dict(), "key": "selective_copying", "weight": 1.0}
    assert build_task(d) == suite
    assert TaskSuite.from_dict({k: v for k, v in d.items() if k != "name"}) == suite


def test_a_single_task_is_a_one_member_suite() -> None:
    task = make_task(MQAR)
    assert suite_members(task) == (SuiteMember(key="mqar", task=task, weight=1.0),)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_registered_task_can_be_a_member(name: str) -> None:
    suite = build_task({"name": "suite", "members": [{"name": name}, {**MQAR, "key": "recall"}]})
    assert isinstance(suite, TaskSuite)
    assert suite.members[0].task == make_task({"name": name})


def _suite(*members: object, **extra: object) -> dict:
    return {"name": "suite", "members": list(members), **extra}


@pytest.mark.parametrize(
    ("config", "field", "message"),
    [
        ({"name": "suite"}, "task.members", "got None, must be a non-empty list"),
        (_suite(), "task.members", "got [], must be a non-empty list"),
        (_suite(MQAR, weights=[1]), "task.weights", "unknown suite option; allowed: name, members"),
        (_suite(MQAR, 3), "task.members[1]", "expected a mapping, got int"),
        (_suite(MQAR, {**COPY, "weight": 0}), "task.members[1].weight", "got 0, must be a number > 0"),
        (_suite({**MQAR, "weight": -1.5}), "task.members[0].weight", "got -1.5, must be"),
        (_suite({**MQAR, "weight": True}), "task.members[0].weight", "got True, must be"),
        (_suite({**MQAR, "weight": float("inf")}), "task.members[0].weight", "got inf, must be"),
        (_suite(MQAR, {**MQAR, "seq_len": 32}), "task.members[1].key", "'mqar' is used by an earlier member"),
        (_suite({**MQAR, "key": "a.b"}), "task.members[0].key", "got 'a.b', must be letters, digits"),
        (_suite({**MQAR, "key": ""}), "task.members[0].key", "got '', must be"),
        (_suite(MQAR, {"name": "lm"}), "task.members[1].name", "got 'lm', allowed: "),
        (_suite(_suite(MQAR)), "task.members[0].name", "a suite cannot contain a suite"),
        (_suite({**MQAR, "num_kv_pairs": 0}), "task.members[0].num_kv_pairs", "got 0, must be an integer"),
        (_suite({**MQAR, "colour": 1}), "task.members[0].colour", "unknown mqar option"),
        ({"name": "lm"}, "task.name", "got 'lm', allowed: "),
        ([MQAR], "task", "expected a mapping, got list"),
    ],
)
def test_errors_name_the_field_path(config: object, field: str, message: str) -> None:
    with pytest.raises(TaskConfigError) as err:
        build_task(config)  # type: ignore[arg-type]
    assert err.value.field == field
    assert str(err.value).startswith(f"{field}: {message}"), str(err.value)


def test_unknown_name_lists_the_suite_and_every_task() -> None:
    with pytest.raises(TaskConfigError) as err:
        build_task({"name": "lm"})
    allowed = str(err.value).split("allowed: ", 1)[1].split(", ")
    assert allowed == sorted([*TASKS, "suite"])
