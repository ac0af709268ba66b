"""Whole campaigns through the CLI: file -> controller -> executor -> store -> query -> export."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from hybridnas.cli import app
from hybridnas.store import Store

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def write(tmp_path: Path, tiny_campaign: Callable[..., dict[str, Any]]) -> Callable[..., Path]:
    """write(**changes): the tiny campaign file in tmp_path, with whole sections (`execution=...`) or
    fields (`search__budget=4`) changed."""

    def write_(**changes: Any) -> Path:
        cfg = tiny_campaign(
            "tiny",
            linear_mixers=("gla", "deltanet", "gated_deltanet", "mamba2"),
            search={"strategy": "evolution", "budget": 6, "population": 3, "tournament": 2},
            execution={"executor": "inprocess", "workers": 1, "timeout_s": 120},
        )
        for key, value in changes.items():
            section, _, field = key.partition("__")
            if field:
                cfg[section][field] = value
            else:
                cfg[section] = value
        path = tmp_path / f"{cfg['name']}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return path

    return write_


def cli(*args: str):
    result = CliRunner().invoke(app, list(args))
    return result


def leaderboard(url: str, name: str) -> list[dict]:
    r = cli("query", "leaderboard", name, "--store", url, "--format", "json")
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def check_campaign(url: str, name: str, budget: int) -> list[dict]:
    rows = leaderboard(url, name)
    assert len(rows) == budget
    for row in rows:
        assert {"candidate_id", "spec_hash", "accuracy", "loss"} <= set(row)
        assert 0.0 <= row["accuracy"] <= 1.0
    assert [r["accuracy"] for r in rows] == sorted((r["accuracy"] for r in rows), reverse=True)
    store = Store.open(url)
    try:
        info = store.get_campaign(name)
        assert info.status == "finished"
        evals = store.evaluations(info.id)
        assert len(evals) == budget and all(e.status == "done" for e in evals)
        # one evaluation per candidate at this fidelity: nothing trained twice
        assert len({e.candidate_id for e in evals}) == budget
    finally:
        store.close()
    return rows


def test_inprocess_campaign_end_to_end(tmp_path: Path, write: Callable[..., Path]) -> None:
    url = f"sqlite:///{tmp_path / 'hnas.db'}"
    r = cli("campaign", "launch", str(write()), "--store", url, "--export-dir", str(tmp_path / "export"))
    assert r.exit_code == 0, r.output
    rows = check_campaign(url, "tiny", 6)

    # evolution after the initial population: children have recorded parents and operators
    store = Store.open(url)
    try:
        children = [c for c in (store.candidate(r["candidate_id"]) for r in rows) if c.parents]
        assert children, "evolution should have produced at least one child in 6 candidates with population 3"
        edges = store.lineage(children[0].id)
        assert edges and all(e.operator for e in edges)
        assert store.weights_path(rows[0]["candidate_id"]) is not None
    finally:
        store.close()
    r = cli("query", "lineage", str(children[0].id), "--store", url, "--format", "json")
    assert r.exit_code == 0 and json.loads(r.stdout)

    # the winner was exported and loads where hybridnas cannot be imported
    export = tmp_path / "export" / "tiny"
    assert (export / "config.json").is_file() and (export / "model.safetensors").is_file()
    config = json.loads((export / "config.json").read_text())
    assert config["metadata"]["candidate_id"] == rows[0]["candidate_id"]
    assert config["metadata"]["metrics"]["accuracy"] == pytest.approx(rows[0]["accuracy"])
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "check_export.py"), str(export)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "without hybridnas" in out.stdout

    # campaign listing commands
    r = cli("campaign", "list", "--store", url, "--format", "json")
    assert r.exit_code == 0 and [c["name"] for c in json.loads(r.stdout)] == ["tiny"]
    r = cli("campaign", "show", "--store", url, "--format", "json")
    assert r.exit_code == 0 and "tiny" in r.stdout

    # a second launch under the same name is refused, and writes nothing
    r = cli("campaign", "launch", str(write()), "--store", url)
    assert r.exit_code == 2 and "already exists" in r.output


@pytest.mark.ray
def test_ray_campaign_end_to_end(tmp_path: Path, ray_cluster, write: Callable[..., Path]) -> None:
    url = f"sqlite:///{tmp_path / 'hnas.db'}"
    path = write(name="tiny-ray", search__budget=4, execution={"executor": "ray", "workers": 2, "timeout_s": 120})
    r = cli("campaign", "launch", str(path), "--store", url, "--no-export")
    assert r.exit_code == 0, r.output
    check_campaign(url, "tiny-ray", 4)
    store = Store.open(url)
    try:
        info = store.get_campaign("tiny-ray")
        hosts = {e.host for e in store.evaluations(info.id)}
        assert all(hosts) and None not in hosts
    finally:
        store.close()


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"space": {"hybrid": {"linear_mixer": ["gla", "transformer"]}}}, "space.hybrid.linear_mixer"),
        ({"search": {"strategy": "annealing"}}, "search.strategy"),
        ({"training": {"stepz": 3}}, "training.stepz"),
        ({"task": {"name": "imagenet"}}, "task.name"),
        ({"name": "bad name!"}, "name"),
    ],
)
def test_bad_campaign_file_exit_2_and_nothing_written(tmp_path: Path, changes, message, write: Callable[..., Path]) -> None:
    url = f"sqlite:///{tmp_path / 'hnas.db'}"
    r = cli("campaign", "launch", str(write(**changes)), "--store", url)
    assert r.exit_code == 2, r.output
    assert message in r.output
    if (tmp_path / "hnas.db").exists():
        store = Store.open(url)
        try:
            assert store.list_campaigns() == []
        finally:
            store.close()


@pytest.mark.parametrize(
    "options, message",
    [
        (["--executor", "inprocess", "--address", "ray://10.0.0.1:10001"], "--address"),
        (["--executor", "slurm"], "--executor"),
    ],
)
def test_bad_options_exit_2_and_no_campaign(tmp_path: Path, options, message, write: Callable[..., Path]) -> None:
    url = f"sqlite:///{tmp_path / 'hnas.db'}"
    r = cli("campaign", "launch", str(write()), "--store", url, *options)
    assert r.exit_code == 2, r.output
    assert message in r.output
    if (tmp_path / "hnas.db").exists():
        with Store.open(url) as store:
            assert store.list_campaigns() == []


def test_bad_store_url_exit_2(tmp_path: Path, write: Callable[..., Path]) -> None:
    r = cli("campaign", "launch", str(write()), "--store", "nosuchdialect://x")
    assert r.exit_code == 2 and "--store" in r.output
