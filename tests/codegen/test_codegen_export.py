"""Export folders: contents, weights, and loading in a process where hybridnas cannot be imported."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors
import torch
from safetensors.torch import load_file, save_file

from hybridnas.codegen import build_model, export, render
from hybridnas.space.spec import MIXERS, ArchSpec, LayerSpec

# Runs under `python -I -S`: no site-packages .pth files (so no editable hybridnas), no PYTHONPATH.
# It gets only the folders holding torch and safetensors, and refuses any hybridnas import.
_STANDALONE_SCRIPT = r"""
import importlib.abc, importlib.util, json, sys

class _NoHybridnas(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "hybridnas" or name.startswith("hybridnas."):
            raise ImportError("hybridnas is blocked in this process")
        return None

args = json.loads(sys.argv[1])
sys.meta_path.insert(0, _NoHybridnas())
sys.path.extend(args["site_dirs"])
import torch
from safetensors.torch import load_file, save_file

spec = importlib.util.spec_from_file_location("exported_model", args["modeling"])
modeling = importlib.util.module_from_spec(spec)
spec.loader.exec_module(modeling)
assert modeling.KERNELS == "torch", modeling.KERNELS
assert not any(m == "hybridnas" or m.startswith("hybridnas.") for m in sys.modules)
torch.manual_seed(123)  # fresh-weight init must not matter: the weights come from the folder
model = modeling.load(args["dir"]).eval()
ids = load_file(args["ids"])["ids"]
with torch.no_grad():
    full = model(ids)
    outs, cache = [], None
    for t in range(ids.shape[1]):
        logits, cache = model(ids[:, t : t + 1], cache=cache, use_cache=True)
        outs.append(logits)
save_file({"full": full.contiguous(), "decoded": torch.cat(outs, 1).contiguous()}, args["out"])
"""


def _site_dirs() -> list[str]:
    dirs = []
    for mod in (torch, safetensors):
        folder = str(Path(mod.__file__).resolve().parent.parent)
        if folder not in dirs:
            dirs.append(folder)
    return dirs


def _run_standalone(export_dir: Path, modeling: Path, ids: torch.Tensor, tmp: Path) -> dict[str, torch.Tensor]:
    ids_file, out_file = tmp / "ids.safetensors", tmp / "out.safetensors"
    save_file({"ids": ids}, str(ids_file))
    args = {"site_dirs": _site_dirs(), "modeling": str(modeling), "dir": str(export_dir), "ids": str(ids_file), "out": str(out_file)}
    proc = subprocess.run(
        [sys.executable, "-I", "-S", "-c", _STANDALONE_SCRIPT, json.dumps(args)], capture_output=True, text=True, cwd=tmp
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return load_file(str(out_file))


def test_export_round_trip_without_hybridnas(tmp_path: Path) -> None:
    # Every mixer in one model, with gates, short convs, an untied head and LayerNorm.
    layers = tuple(
        LayerSpec(m, n_heads=2, short_conv=i % 2 == 0, gate=("none", "sigmoid", "swish")[i % 3], window=3) for i, m in enumerate(MIXERS)
    )
    spec = ArchSpec(d_model=16, layers=layers, vocab_size=17, norm="layernorm", mlp="gelu", tie_embeddings=False)
    torch.manual_seed(0)
    model = build_model(spec).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))  # off the init, so a weight left unloaded would show
    metadata = {"task": "mqar", "metrics": {"accuracy": 0.75}, "lineage": {"parents": ["abc"], "operator": "mutate_mixer"}}
    out = export(spec, tmp_path / "export", name="winner", state_dict=model.state_dict(), metadata=metadata)

    files = sorted(p.name for p in out.iterdir())
    assert files == ["config.json", "model.safetensors", "modeling_winner.py"]
    assert (out / "modeling_winner.py").read_text() == render(spec, "winner")
    config = json.loads((out / "config.json").read_text())
    assert config["name"] == "winner" and config["vocab_size"] == 17 and config["metadata"] == metadata
    assert ArchSpec.from_dict(config["spec"]) == spec and config["spec_hash"] == spec.spec_hash

    ids = torch.randint(0, 17, (2, 7), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = model(ids)
    got = _run_standalone(out, out / "modeling_winner.py", ids, tmp_path)
    torch.testing.assert_close(got["full"], expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got["decoded"], expected, rtol=1e-4, atol=1e-4)


def test_standalone_process_really_lacks_hybridnas(tmp_path: Path) -> None:
    # The isolation the round trip relies on: the same interpreter flags cannot see hybridnas.
    code = (
        "import sys, json; sys.path.extend(json.loads(sys.argv[1])); "
        "import importlib.util; print(importlib.util.find_spec('hybridnas'))"
    )
    cmd = [sys.executable, "-I", "-S", "-c", code, json.dumps(_site_dirs())]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "None"


def _load_exported(out: Path, name: str) -> object:
    spec = importlib.util.spec_from_file_location(f"exported_{name}_{abs(hash(str(out)))}", out / f"modeling_{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def test_tied_weights_are_stored_once_and_reloaded(tmp_path: Path) -> None:
    spec = ArchSpec(d_model=16, layers=(LayerSpec("gla"), LayerSpec("attention")), vocab_size=11)
    torch.manual_seed(1)
    model = build_model(spec)
    out = export(spec, tmp_path / "tied", name="tied", state_dict=model.state_dict())
    stored = load_file(str(out / "model.safetensors"))
    assert "lm_head.weight" not in stored and "embed.weight" in stored
    loaded = _load_exported(out, "tied").load(out)  # type: ignore[attr-defined]
    assert loaded.lm_head.weight is loaded.embed.weight
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_weights_path_and_no_weights(tmp_path: Path) -> None:
    spec = ArchSpec(d_model=16, layers=(LayerSpec("short_conv"),), vocab_size=11, tie_embeddings=False)
    torch.manual_seed(2)
    model = build_model(spec)
    weights = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    out = export(spec, tmp_path / "from_file", name="m", weights_path=weights)
    loaded = _load_exported(out, "m").load(out)  # type: ignore[attr-defined]
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())

    bare = export(spec, tmp_path / "bare", name="m")
    assert sorted(p.name for p in bare.iterdir()) == ["config.json", "modeling_m.py"]
    fresh = _load_exported(bare, "m").load(bare)  # type: ignore[attr-defined]
    assert fresh(torch.zeros(1, 3, dtype=torch.long)).shape == (1, 3, 11)
    with pytest.raises(ValueError, match="model.safetensors"):
        export(spec, out, name="m")  # stale weights would be loaded silently


def test_load_is_strict_and_checks_the_spec(tmp_path: Path) -> None:
    spec = ArchSpec(d_model=16, layers=(LayerSpec("deltanet"),), vocab_size=11)
    model = build_model(spec)
    out = export(spec, tmp_path / "strict", name="m", state_dict=model.state_dict())
    module = _load_exported(out, "m")
    stored = load_file(str(out / "model.safetensors"))
    stored.pop("layers.0.mixer.b_proj.weight")
    save_file(stored, str(out / "model.safetensors"))
    with pytest.raises(RuntimeError, match="b_proj"):
        module.load(out)  # type: ignore[attr-defined]
    config = json.loads((out / "config.json").read_text())
    config["spec"]["d_model"] = 32
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="spec differs"):
        module.load(out)  # type: ignore[attr-defined]


def test_export_rejects_bad_input(tmp_path: Path) -> None:
    spec = ArchSpec(d_model=16, layers=(LayerSpec("retnet"),), vocab_size=11)
    sd = build_model(spec).state_dict()
    with pytest.raises(ValueError, match="name"):
        export(spec, tmp_path / "a", name="../evil")
    with pytest.raises(ValueError, match="at most one"):
        export(spec, tmp_path / "a", name="m", state_dict=sd, weights_path=tmp_path / "w.safetensors")
    with pytest.raises(ValueError, match="safetensors"):
        export(spec, tmp_path / "a", name="m", weights_path=tmp_path / "w.pt")
    with pytest.raises(ValueError, match="missing"):
        export(spec, tmp_path / "a", name="m", state_dict={k: v for k, v in sd.items() if "q.proj" not in k})
    with pytest.raises(ValueError, match="shape"):
        export(spec, tmp_path / "a", name="m", state_dict={**sd, "norm_f.weight": torch.ones(15)})
    with pytest.raises(ValueError, match="differs from embed"):
        export(spec, tmp_path / "a", name="m", state_dict={**sd, "lm_head.weight": torch.zeros(11, 16)})
    with pytest.raises(ValueError, match="metadata"):
        export(spec, tmp_path / "a", name="m", metadata={"metrics": {"loss": float("nan")}})
    with pytest.raises(ValueError, match="metadata"):
        export(spec, tmp_path / "a", name="m", metadata={"when": object()})
    assert not (tmp_path / "a").exists()  # nothing written when the input is refused
    # A torch.compile'd model's state_dict exports as the plain one.
    out = export(spec, tmp_path / "b", name="m", state_dict={f"_orig_mod.{k}": v for k, v in sd.items()})
    assert set(load_file(str(out / "model.safetensors"))) == set(sd) - {"lm_head.weight"}
