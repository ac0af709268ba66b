"""The query CLI and the campaign printers, through typer's CliRunner, in every format."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from hybridnas.store import Store
from hybridnas.store.cli import campaign_list, campaign_show, print_leaderboard, query_app
from hybridnas.store.queries import ROW_KEYS, campaign_objectives

runner = CliRunner()


@pytest.fixture
def populated(store_url: str, tmp_path: Path, make_spec) -> tuple[str, dict[str, int]]:
    """Two campaigns; the newer one ('second') has three scored candidates with lineage."""
    ids: dict[str, int] = {}
    with Store.open(store_url, artifacts_dir=tmp_path / "art") as s:
        first = s.create_campaign("first", {}, seed=0)
        _, ev = s.add_candidate(first, make_spec(10), generation=0, parents=[], task="t", fidelity=10, seed=0)
        s.finish_evaluation(ev, status="done", metrics={"accuracy": 0.1}, error=None, host=None, device=None, wall_time_s=1, weights=None)
        cid = s.create_campaign("second", {"objective": {"metric": "accuracy", "direction": "maximize"}}, seed=1)
        points = [(0.5, 100), (0.9, 400), (0.7, 50)]
        for i, (acc, cost) in enumerate(points):
            parents = [(ids["c0"], "mutate_mixer")] if i == 1 else [(ids["c0"], "crossover"), (ids["c1"], "crossover")] if i == 2 else []
            cand, ev = s.add_candidate(cid, make_spec(i), generation=min(i, 2), parents=parents, task="t", fidelity=10, seed=0)
            s.finish_evaluation(ev, status="done", metrics={"accuracy": acc, "cost_state_bytes": cost, "loss": 1 - acc},
                                error=None, host=None, device=None, wall_time_s=1, weights=None)
            ids[f"c{i}"] = cand
    return store_url, ids


def _invoke(args: list[str], env: dict[str, str] | None = None) -> typer.testing.Result:
    return runner.invoke(query_app, args, env=env)


def test_leaderboard_formats(populated) -> None:
    url, ids = populated
    res = _invoke(["leaderboard", "--store", url, "--format", "json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)
    assert [r["candidate_id"] for r in rows] == [ids["c1"], ids["c2"], ids["c0"]]  # 'second' is the most recent
    assert list(rows[0])[: len(ROW_KEYS)] == list(ROW_KEYS) and rows[0]["accuracy"] == 0.9
    res = _invoke(["leaderboard", "second", "--store", url, "--format", "csv", "--metric", "loss", "--direction", "min", "--limit", "2"])
    assert res.exit_code == 0, res.output
    table = list(csv.DictReader(io.StringIO(res.stdout)))
    assert [int(r["candidate_id"]) for r in table] == [ids["c1"], ids["c2"]]
    assert list(table[0]) == [*ROW_KEYS, "accuracy", "cost_state_bytes", "loss", "loss_std"]
    res = _invoke(["leaderboard", "first", "--store", url])
    assert res.exit_code == 0, res.output
    assert "first: leaderboard by accuracy" in res.stdout and "d32 LA" in res.stdout and "0.1" in res.stdout


def test_store_from_environment(populated) -> None:
    url, ids = populated
    res = _invoke(["leaderboard", "-f", "json"], env={"HYBRIDNAS_STORE": url})
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)[0]["candidate_id"] == ids["c1"]


def test_pareto_formats(populated) -> None:
    url, ids = populated
    args = ["pareto", "--store", url, "--objective", "accuracy:max", "--objective", "cost_state_bytes:min"]
    res = _invoke([*args, "--format", "json"])
    assert res.exit_code == 0, res.output
    assert [r["candidate_id"] for r in json.loads(res.stdout)] == [ids["c1"], ids["c2"]]  # c0 is dominated by c2
    res = _invoke([*args, "--format", "csv"])
    assert [int(r["candidate_id"]) for r in csv.DictReader(io.StringIO(res.stdout))] == [ids["c1"], ids["c2"]]
    res = _invoke(args)
    assert res.exit_code == 0 and "Pareto front" in res.stdout


def test_lineage_formats(populated) -> None:
    url, ids = populated
    res = _invoke(["lineage", str(ids["c2"]), "--store", url, "-f", "json"])
    assert res.exit_code == 0, res.output
    edges = [(e["child_id"], e["parent_id"], e["operator"], e["depth"]) for e in json.loads(res.stdout)]
    assert edges == [
        (ids["c2"], ids["c0"], "crossover", 1),
        (ids["c2"], ids["c1"], "crossover", 1),
        (ids["c1"], ids["c0"], "mutate_mixer", 2),
    ]
    res = _invoke(["lineage", str(ids["c2"]), "--store", url, "-f", "csv"])
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    assert list(rows[0]) == ["child_id", "parent_id", "operator", "depth"] and len(rows) == 3
    res = _invoke(["lineage", str(ids["c2"]), "--store", url])
    assert res.exit_code == 0 and "mutate_mixer" in res.stdout
    res = _invoke(["lineage", str(ids["c0"]), "--store", url, "-f", "csv"])
    assert res.stdout.strip() == "child_id,parent_id,operator,depth"  # no parents: the header alone


def test_pareto_defaults_to_the_campaign_objectives(populated) -> None:
    url, _ = populated
    res = _invoke(["pareto", "second", "--store", url, "--format", "json"])
    assert res.exit_code == 0, res.output
    with Store.open(url) as store:
        info = store.get_campaign("second")
        expected = store.pareto(info.id, campaign_objectives(info.config))
    assert [r["candidate_id"] for r in json.loads(res.stdout)] == [r["candidate_id"] for r in expected]


@pytest.mark.parametrize(
    "args, hint, words",
    [
        (["leaderboard", "--format", "xml"], "--format", ["table", "json", "csv"]),
        (["leaderboard", "nope"], "CAMPAIGN", ["known campaigns: first, second"]),
        (["leaderboard", "--direction", "up"], "--direction", ["maximize", "minimize"]),
        (["leaderboard", "--metric", "acc"], "--metric", ["recorded: accuracy, cost_state_bytes, loss"]),
        (["pareto", "--objective", "accuracy"], "--objective", ["METRIC:DIRECTION"]),
        (["pareto", "--objective", "accuracy:best"], "--objective", ["max", "min"]),
        (["pareto", "nope", "--objective", "accuracy:max"], "CAMPAIGN", ["first, second"]),
        (["lineage", "999"], "CANDIDATE_ID", ["999 not found"]),
        (["lineage", "1", "--format", "yaml"], "--format", ["table", "json", "csv"]),
    ],
)
def test_usage_errors_exit_2(populated, args: list[str], hint: str, words: list[str]) -> None:
    url, _ = populated
    res = _invoke([*args, "--store", url])
    assert res.exit_code == 2, res.output
    flat = " ".join(res.output.replace("│", " ").split())  # rich boxes wrap long messages
    assert hint in flat
    for w in words:
        assert w in flat


def test_missing_store_exit_2(tmp_path: Path) -> None:
    missing = tmp_path / "missing.db"
    res = _invoke(["leaderboard", "--store", str(missing)])
    assert res.exit_code == 2 and "--store" in res.output
    assert not missing.exists()


# --- the campaign printers -------------------------------------------------------------------------

campaign_app = typer.Typer()


@campaign_app.command("list")
def _list(fmt: str = typer.Option("table", "--format"), store: str = typer.Option(..., "--store")) -> None:
    with Store.open(store, create=False) as s:
        campaign_list(s, fmt)


@campaign_app.command("show")
def _show(name: str = typer.Argument(None), fmt: str = typer.Option("table", "--format"), store: str = typer.Option(..., "--store")) -> None:
    with Store.open(store, create=False) as s:
        campaign_show(s, name, fmt)


@campaign_app.command("board")
def _board(name: str = typer.Argument(None), fmt: str = typer.Option("table", "--format"), direction: str = "max",
           store: str = typer.Option(..., "--store")) -> None:
    with Store.open(store, create=False) as s:
        print_leaderboard(s, name, metric="loss", direction=direction, limit=2, fmt=fmt)


def test_print_leaderboard(populated) -> None:
    url, ids = populated
    res = runner.invoke(campaign_app, ["board", "--store", url, "--format", "json", "--direction", "min"])
    assert res.exit_code == 0, res.output
    assert [r["candidate_id"] for r in json.loads(res.stdout)] == [ids["c1"], ids["c2"]]
    res = runner.invoke(campaign_app, ["board", "second", "--store", url])
    assert res.exit_code == 0 and "second: leaderboard by loss (maximize)" in res.stdout
    for args, hint in [(["board", "--direction", "sideways"], "--direction"), (["board", "--format", "xml"], "--format"), (["board", "zzz"], "CAMPAIGN")]:
        res = runner.invoke(campaign_app, [*args, "--store", url])
        assert res.exit_code == 2 and hint in res.output, res.output


def test_campaign_printers(populated) -> None:
    url, ids = populated
    res = runner.invoke(campaign_app, ["list", "--store", url, "--format", "json"])
    assert res.exit_code == 0, res.output
    listed = json.loads(res.stdout)
    assert [c["name"] for c in listed] == ["first", "second"]
    assert listed[1]["n_done"] == 3 and listed[1]["best"]["candidate_id"] == ids["c1"]
    res = runner.invoke(campaign_app, ["list", "--store", url, "--format", "csv"])
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    assert [r["name"] for r in rows] == ["first", "second"] and json.loads(rows[1]["best"])["accuracy"] == 0.9
    res = runner.invoke(campaign_app, ["list", "--store", url])
    assert res.exit_code == 0 and "second" in res.stdout and "first" in res.stdout

    res = runner.invoke(campaign_app, ["show", "--store", url, "--format", "json"])
    shown = json.loads(res.stdout)
    assert shown["name"] == "second" and shown["config"]["objective"]["metric"] == "accuracy"
    res = runner.invoke(campaign_app, ["show", "first", "--store", url, "--format", "csv"])
    assert next(csv.DictReader(io.StringIO(res.stdout)))["name"] == "first"
    res = runner.invoke(campaign_app, ["show", "second", "--store", url])
    assert res.exit_code == 0 and "top 3 by accuracy" in res.stdout and "queued 0" in res.stdout

    for args, hint in [(["show", "nope"], "CAMPAIGN"), (["show", "--format", "xml"], "--format"), (["list", "--format", "xml"], "--format")]:
        res = runner.invoke(campaign_app, [*args, "--store", url])
        assert res.exit_code == 2 and hint in res.output, res.output


def test_campaign_list_on_an_empty_store(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    Store.open(url).close()
    res = runner.invoke(campaign_app, ["list", "--store", url])
    assert res.exit_code == 0 and "no campaigns" in res.stdout
    res = runner.invoke(campaign_app, ["list", "--store", url, "--format", "json"])
    assert json.loads(res.stdout) == []


def test_campaign_show_without_the_objective_metric(tmp_path: Path, make_spec) -> None:
    url = f"sqlite:///{tmp_path / 'other.db'}"
    with Store.open(url) as s:
        cid = s.create_campaign("lossy", {"objective": {"metric": "accuracy"}}, seed=0)
        _, ev = s.add_candidate(cid, make_spec(0), generation=0, parents=[], task="t", fidelity=10, seed=0)
        s.finish_evaluation(ev, status="done", metrics={"loss": 0.5}, error=None, host=None, device=None, wall_time_s=1, weights=None)
        assert s.get_campaign("lossy").best is None
    res = runner.invoke(campaign_app, ["show", "--store", url])
    assert res.exit_code == 0, res.output
    assert "done 1" in res.stdout


def test_leaderboard_on_an_objective_metric_takes_its_direction(tmp_path: Path, make_spec) -> None:
    """`--metric loss` on a campaign that minimizes loss ranks by minimize unless --direction says otherwise."""
    url = f"sqlite:///{tmp_path / 'two.db'}"
    objectives = [{"metric": "accuracy", "direction": "maximize"}, {"metric": "loss", "direction": "minimize"}]
    with Store.open(url) as s:
        cid = s.create_campaign("two", {"objectives": objectives}, seed=0)
        for i, loss in enumerate((0.5, 0.2, 0.9)):
            _, ev = s.add_candidate(cid, make_spec(i), generation=0, parents=[], task="t", fidelity=10, seed=0)
            s.finish_evaluation(ev, status="done", metrics={"accuracy": 1 - loss, "loss": loss}, error=None)
    res = _invoke(["leaderboard", "--store", url, "--format", "json", "--metric", "loss"])
    assert res.exit_code == 0, res.output
    assert [r["loss"] for r in json.loads(res.stdout)] == [0.2, 0.5, 0.9]
    res = _invoke(["leaderboard", "--store", url, "--format", "json", "--metric", "loss", "--direction", "max"])
    assert [r["loss"] for r in json.loads(res.stdout)] == [0.9, 0.5, 0.2]
    res = _invoke(["leaderboard", "--store", url, "--format", "json", "--metric", "cost_state_bytes"])
    assert res.exit_code == 2  # never recorded: a usage error naming the metric


# --- the default leaderboard table fits a 120-column terminal ---------------------------------------


@pytest.fixture
def wide_campaign(tmp_path: Path) -> str:
    """Long design labels, two objectives, three seeds each, and state bytes: the quickstart's output."""
    from hybridnas.space.spec import RECURRENT_MIXERS, ArchSpec, HybridGenes

    url = f"sqlite:///{tmp_path / 'wide.db'}"
    objectives = [{"metric": "accuracy", "direction": "maximize"}, {"metric": "loss", "direction": "minimize"}]
    with Store.open(url) as s:
        cid = s.create_campaign("quickstart", {"objectives": objectives}, seed=0)
        for i, mixer in enumerate(RECURRENT_MIXERS):
            genes = HybridGenes(linear_mixer=mixer, gate="swish", short_conv=True)
            spec = ArchSpec.from_hybrid(genes, d_model=128, n_layers=8, n_heads=4, vocab_size=32)
            for seed in range(3):
                _, ev = s.add_candidate(cid, spec, generation=i, parents=[], task="mqar", fidelity=300, seed=seed)
                s.finish_evaluation(ev, status="done", error=None, metrics={
                    "accuracy": 0.9 + 0.01 * i + 0.002 * seed, "loss": 0.31 - 0.01 * i + 0.003 * seed,
                    "params": 1_234_567, "cost_state_bytes": 12_595 * (i + 1), "cost_flops_per_token": 9.87e6,
                    "prefill_tokens_per_s": 123456.7, "decode_tokens_per_s": 2345.6})
    return url


def _render_at(width: int, monkeypatch: pytest.MonkeyPatch, args: list[str]) -> list[str]:
    from rich.console import Console

    import hybridnas.store.cli as store_cli

    buf = io.StringIO()
    monkeypatch.setattr(store_cli, "_console", lambda: Console(file=buf, width=width, color_system=None))
    res = _invoke(args) if args[0] != "show" else runner.invoke(campaign_app, args)
    assert res.exit_code == 0, res.output
    return buf.getvalue().splitlines()


def test_default_leaderboard_fits_120_columns(wide_campaign: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from rich.cells import cell_len

    with Store.open(wide_campaign, readonly=True) as s:
        labels = [r["label"] for r in s.leaderboard(s.get_campaign().id)]
    lines = _render_at(120, monkeypatch, ["leaderboard", "--store", wide_campaign])
    assert max(cell_len(line) for line in lines) <= 120, "\n".join(lines)
    assert len(lines) == len(labels) + 3, "\n".join(lines)  # title, header, rule, a line per row
    header = lines[1]
    for column in ("#", "id", "design", "accuracy ↑", "loss ↓", "seeds", "state"):
        assert column in header, header
    for dropped in ("spec_hash", "generation", "fidelity", "params", "prefill", "decode"):
        assert dropped not in header
    for label, line in zip(labels, lines[3:]):
        assert label in line, line  # the quickstart's labels fit whole
        assert "…" not in line and line.count(" ± ") == 2 and "KiB" in line and " 3 " in line, line
    assert "0.972 ± 0.002" in lines[3] and "0.243 ± 0.003" in lines[3]


def test_all_columns_and_machine_formats_keep_everything(wide_campaign: str, monkeypatch: pytest.MonkeyPatch) -> None:
    lines = _render_at(400, monkeypatch, ["leaderboard", "--store", wide_campaign, "--all"])
    header = " ".join(lines[:4])
    for column in ("spec_hash", "generation", "fidelity", "params", "prefill_tokens_per_s", "accuracy_std"):
        assert column in header, header
    rows = json.loads(_invoke(["leaderboard", "--store", wide_campaign, "-f", "json"]).stdout)
    assert {"spec_hash", "params", "decode_tokens_per_s", "accuracy_std", "cost_state_bytes"} <= set(rows[0])
    assert rows[0]["cost_state_bytes"] == 12_595 * 8 or isinstance(rows[0]["cost_state_bytes"], int)
    header_csv = _invoke(["leaderboard", "--store", wide_campaign, "-f", "csv"]).stdout.splitlines()[0]
    assert "prefill_tokens_per_s" in header_csv and "accuracy_std" in header_csv


def test_campaign_show_top_table_fits_120_columns(wide_campaign: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from rich.cells import cell_len

    lines = _render_at(120, monkeypatch, ["show", "--store", wide_campaign])
    assert max(cell_len(line) for line in lines) <= 120, "\n".join(lines)
    start = next(i for i, line in enumerate(lines) if "top 5 by accuracy" in line)
    assert len(lines) - start == 3 + 5, "\n".join(lines[start:])  # five rows, none wrapped
    assert "accuracy ↑" in lines[start + 1] and "loss ↓" in lines[start + 1]


def test_number_cells() -> None:
    from hybridnas.store.cli import human_bytes, with_spread

    assert with_spread(0.98123, 0.00412) == "0.981 ± 0.004"
    assert with_spread(0.5) == "0.500"
    assert with_spread(2.3456, 0.0123) == "2.35 ± 0.01"
    assert with_spread(123456.7, 1234.5) == "123457 ± 1234"
    assert with_spread(None) == "-"
    assert human_bytes(512) == "512 B" and human_bytes(12_595) == "12.3 KiB" and human_bytes(3 * 2**20) == "3.0 MiB"
    assert with_spread(12_595, 100, as_bytes=True) == "12.3 KiB ± 100 B"


def test_query_evaluations_names_who_ran_what(tmp_path) -> None:
    """The evaluations listing: status, fidelity, seed, and the host, worker and device of each."""
    import json

    import hybridnas
    from hybridnas.cli import app

    config = {
        "name": "who",
        "task": {"name": "mqar", "vocab_size": 24, "seq_len": 16, "num_kv_pairs": 2, "num_train": 64, "num_test": 16},
        "space": {"d_model": [16], "n_layers": [1], "n_heads": [2], "hybrid": {"ratio": ["all_linear"], "linear_mixer": ["gla", "deltanet"]}},
        "training": {"steps": 2, "batch_size": 8, "eval_batch_size": 16},
        "search": {"strategy": "grid", "budget": 2},
        "execution": {"executor": "inprocess", "workers": 1},
        "hardware": {"context_len": 16, "repeats": 1, "decode_tokens": 2},
    }
    url = f"sqlite:///{tmp_path / 'who.db'}"
    hybridnas.run_campaign(config, store=url).close()
    result = CliRunner().invoke(app, ["query", "evaluations", "who", "--store", url, "--format", "json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [r["status"] for r in rows] == ["done", "done"] and {r["fidelity"] for r in rows} == {2}
    assert all(r["worker"].startswith("inprocess/") and r["host"] and r["device"].startswith("cpu") for r in rows)
    table = CliRunner().invoke(app, ["query", "evaluations", "who", "--store", url, "--status", "done"])
    assert table.exit_code == 0 and "inprocess/" in table.output
    bad = CliRunner().invoke(app, ["query", "evaluations", "who", "--store", url, "--status", "lost"])
    assert bad.exit_code == 2
