from __future__ import annotations

from pathlib import Path

import yaml
from typer.testing import CliRunner

from hybridnas.cli import app

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str):
    return CliRunner().invoke(app, ["space", "validate", *args])


def test_validate_campaign_file() -> None:
    r = run(str(ROOT / "examples" / "quickstart.yaml"))
    assert r.exit_code == 0, r.output
    assert "hybrid space" in r.stdout and "linear_mixer" in r.stdout


def test_validate_space_file_errors_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "space.yaml"
    bad.write_text(yaml.safe_dump({"layers": {"mixer": ["gla", "rnn"]}, "d_model": [64]}))
    r = run(str(bad))
    assert r.exit_code == 2
    assert "layers.mixer" in r.output and "gated_deltanet" in r.output  # names the field and what is allowed
    assert run(str(tmp_path / "missing.yaml")).exit_code == 2


def test_validate_per_layer_space(tmp_path: Path) -> None:
    good = tmp_path / "space.yaml"
    good.write_text(yaml.safe_dump({"n_layers": [2, 3], "layers": {"mixer": ["gla", "attention"]}}))
    r = run(str(good))
    assert r.exit_code == 0, r.output
    assert "layers space" in r.stdout


def test_mixers_lists_the_registry() -> None:
    import json

    from typer.testing import CliRunner

    from hybridnas.cli import app
    from hybridnas.mixers import REGISTRY

    result = CliRunner().invoke(app, ["space", "mixers", "--format", "json"])
    assert result.exit_code == 0, result.output
    listed = json.loads(result.output)
    assert [m["mixer"] for m in listed["mixers"]] == list(REGISTRY)
    assert next(m for m in listed["mixers"] if m["mixer"] == "kda")["options"] == "n_heads, expand_k, gate, short_conv, conv_size"
    table = CliRunner().invoke(app, ["space", "mixers"])
    assert table.exit_code == 0 and "Kimi Delta Attention" in table.output
    assert CliRunner().invoke(app, ["space", "mixers", "--format", "xml"]).exit_code == 2


def test_validate_reads_space_files_as_safely_as_campaign_files(tmp_path) -> None:
    from typer.testing import CliRunner

    from hybridnas.cli import app

    dup = tmp_path / "dup.yaml"
    dup.write_text("d_model: [64]\nd_model: [32]\n")
    result = CliRunner().invoke(app, ["space", "validate", str(dup)])
    assert result.exit_code == 2 and "d_model: duplicate key on line 2" in " ".join(result.output.split())
    utf16 = tmp_path / "utf16.yaml"
    utf16.write_bytes("d_model: [64]\n".encode("utf-16"))
    result = CliRunner().invoke(app, ["space", "validate", str(utf16)])
    assert result.exit_code == 2 and "is not UTF-8 text" in " ".join(result.output.split())
