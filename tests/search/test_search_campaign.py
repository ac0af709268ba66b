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
        ({"name": "x", "objective": {"direction": "up"}}, "objective.direction"),
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
    assert line.startswith("objective.metric") and "accuracy" in line


def test_every_combination_of_model_genes_is_checked() -> None:
    with pytest.raises(CampaignFileError) as info:
        parse_campaign({"name": "x", "space": {"d_model": [4, 64]},
                        "task": {"name": "mqar", "vocab_size": 64, "seq_len": 64, "num_kv_pairs": 4}})
    assert "d_model" in info.value.problems[0]
