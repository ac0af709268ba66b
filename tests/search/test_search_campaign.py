from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from hybridnas.search.campaign import CampaignFileError, load_campaign, parse_campaign

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("path", sorted((ROOT / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_examples_validate(path: Path) -> None:
    campaign = load_campaign(path)
    assert campaign.space.size() > 1
    assert campaign.space.vocab_size == campaign.task.vocab_size


def test_defaults_fill_every_section() -> None:
    c = parse_campaign({"name": "x", "task": {"name": "mqar", "vocab_size": 64, "seq_len": 64, "num_kv_pairs": 4}})
    assert c.file.search.strategy == "evolution" and c.file.execution.executor == "ray"
    # the stored config rebuilds the same campaign
    again = parse_campaign(c.config())
    assert again.file == c.file


def test_overrides_replace_the_name() -> None:
    c = parse_campaign({"name": "x", "task": {"name": "mqar", "vocab_size": 64, "seq_len": 64, "num_kv_pairs": 4}}, name="y")
    assert c.name == "y"


@pytest.mark.parametrize(
    "data, expected",
    [
        ({"name": "x", "serach": {}}, "serach: unknown field"),
        ({"name": "x", "search": {"budget": 0}}, "search.budget"),
        ({"name": "x", "execution": {"executor": "slurm"}}, "execution.executor"),
        ({"name": "x", "objective": {"direction": "up"}}, "objectives[0].direction"),
        ({"name": "x", "objective": {}, "objectives": []}, "either objective or objectives"),
        ({"name": "x", "constraints": [{"metric": "cost_params"}]}, "give min, max or both"),
        ({"name": "x", "constraints": [{"metric": "cost_params", "min": 5, "max": 1}]}, "min 5.0 > max 1.0"),
        ({"name": "x", "execution": {"executor": "replay"}}, "replay_table: required"),
        ({"name": "x", "search": {"strategy": "tpe", "successive_halving": {"eta": 1}}}, "search.successive_halving.eta"),
        ({"name": "x", "search": {"reevaluate": {"top_k": 0}}}, "search.reevaluate.top_k"),
        ({"name": "x", "task": {"name": "mqar", "vocab_size": 8, "seq_len": 64, "num_kv_pairs": 8}}, "task.vocab_size"),
        ({"name": "x", "task": {"name": "nope"}}, "task.name"),
        ({"name": "../etc"}, "name"),
        ([1, 2], "mapping"),
    ],
)
def test_errors_name_the_field(data, expected) -> None:
    with pytest.raises(CampaignFileError) as info:
        parse_campaign(data)
    assert any(expected in p for p in info.value.problems), info.value.problems


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(CampaignFileError, match="does not exist"):
        load_campaign(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed")
    with pytest.raises(CampaignFileError, match="yaml"):
        load_campaign(bad)
    ok = tmp_path / "ok.yaml"
    ok.write_text(yaml.safe_dump({"name": "ok", "task": {"name": "mqar", "vocab_size": 64, "seq_len": 64, "num_kv_pairs": 4}}))
    assert load_campaign(ok).name == "ok"


def test_objective_metric_must_be_recorded() -> None:
    with pytest.raises(CampaignFileError) as info:
        parse_campaign({"name": "x", "objective": {"metric": "accuraccy"},
                        "task": {"name": "mqar", "vocab_size": 64, "seq_len": 64, "num_kv_pairs": 4}})
    (line,) = info.value.problems
    assert line.startswith("objectives[0].metric") and "accuracy" in line
    with pytest.raises(CampaignFileError) as info:
        parse_campaign({"name": "x", "constraints": [{"metric": "cost_parms", "max": 1}],
                        "task": {"name": "mqar", "vocab_size": 64, "seq_len": 64, "num_kv_pairs": 4}})
    (line,) = info.value.problems
    assert line.startswith("constraints[0].metric") and "cost_params" in line


def test_several_objectives_and_bounds() -> None:
    c = parse_campaign({
        "name": "x",
        "task": {"name": "mqar", "vocab_size": 64, "seq_len": 64, "num_kv_pairs": 4},
        "objectives": [{"metric": "accuracy"}, {"metric": "cost_state_bytes", "direction": "minimize"}],
        "constraints": [{"metric": "cost_params", "max": 1e6}, {"metric": "accuracy", "min": 0.5}],
    })
    assert c.file.objective.metric == "accuracy"
    assert [(o.metric, o.direction) for o in c.file.objectives] == [("accuracy", "maximize"), ("cost_state_bytes", "minimize")]
    low, high = c.file.constraints
    assert high.violation(0.4) == "accuracy 0.4 < min 0.5" and high.violation(0.7) is None
    assert low.violation(2e6) == "cost_params 2e+06 > max 1e+06" and low.violation(None) == "cost_params is missing"
    # The single-objective shorthand stores as the list form, so a stored config round-trips.
    one = parse_campaign({"name": "y", "objective": {"metric": "loss", "direction": "minimize"}})
    assert one.config()["objectives"] == [{"metric": "loss", "direction": "minimize"}]
    assert parse_campaign(one.config()).file == one.file


def test_every_combination_of_model_genes_is_checked() -> None:
    with pytest.raises(CampaignFileError) as info:
        parse_campaign({"name": "x", "space": {"d_model": [4, 64]},
                        "task": {"name": "mqar", "vocab_size": 64, "seq_len": 64, "num_kv_pairs": 4}})
    assert "d_model" in info.value.problems[0]
