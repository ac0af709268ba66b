"""Export a spec as a folder that runs with nothing but PyTorch (and safetensors for the weights).

    out_dir/
      modeling_<name>.py   the rendered source (same bytes as `render(spec, name)`)
      config.json          {"name", "spec", "spec_hash", "vocab_size", "metadata", "format_version"}
      model.safetensors    when weights are given (never pickle); tied LM head stored once

`modeling_<name>.load(out_dir)` rebuilds the model from the folder.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping

import torch

from hybridnas.codegen.render import RenderError, build_module, ident, render
from hybridnas.space.spec import ArchSpec

__all__ = ["CONFIG_FILE", "FORMAT_VERSION", "WEIGHTS_FILE", "export", "prepare_state_dict"]

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
#: Bumped when the folder layout or config.json keys change.
FORMAT_VERSION = 1
#: Prefix torch.compile puts on parameter names; stripped so compiled models export as plain ones.
_COMPILED_PREFIX = "_orig_mod."


def _check_json(value: Any, where: str) -> None:
    """Metadata must be plain, finite JSON (NaN is not JSON)."""
    if value is None or isinstance(value, (bool, int, str)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{where}: got {value!r}; non-finite numbers are not JSON, record them as None")
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_json(item, f"{where}[{i}]")
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"{where}: key {key!r} must be a string")
            _check_json(item, f"{where}.{key}")
        return
    raise ValueError(f"{where}: got {type(value).__name__}, allowed: JSON values (dict, list, str, number, bool, None)")


def prepare_state_dict(spec: ArchSpec, state_dict: Mapping[str, torch.Tensor], name: str = "hybrid") -> dict[str, torch.Tensor]:
    """The tensors to store for `spec`: checked against the rendered model's parameter names and
    shapes, moved to CPU, contiguous and unshared; a tied LM head is dropped (stored once)."""
    sd: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f"state_dict[{key!r}]: expected a tensor, got {type(tensor).__name__}")
        sd[key[len(_COMPILED_PREFIX) :] if key.startswith(_COMPILED_PREFIX) else key] = tensor
    with torch.device("meta"):  # names and shapes only: no memory, no init cost
        expected = {k: tuple(v.shape) for k, v in build_module(spec, name).Model().state_dict().items()}
    if spec.tie_embeddings:
        expected.pop("lm_head.weight")
        head = sd.pop("lm_head.weight", None)
        embed = sd.get("embed.weight")
        if head is not None and embed is not None and not torch.equal(head.detach().cpu(), embed.detach().cpu()):
            raise ValueError("state_dict: lm_head.weight differs from embed.weight but the spec ties them (tie_embeddings)")
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    if missing or unexpected:
        raise ValueError(f"state_dict: does not match the spec; missing {missing[:8]}, unexpected {unexpected[:8]}")
    for key, shape in expected.items():
        if tuple(sd[key].shape) != shape:
            raise ValueError(f"state_dict[{key!r}]: shape {tuple(sd[key].shape)}, the spec needs {shape}")
    return {k: sd[k].detach().to("cpu").contiguous().clone() for k in sorted(sd)}


def export(
    spec: ArchSpec,
    out_dir: str | os.PathLike[str],
    *,
    name: str,
    state_dict: Mapping[str, torch.Tensor] | None = None,
    weights_path: str | os.PathLike[str] | None = None,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write the export folder for `spec` and return its path.

    Weights come from `state_dict` or from a safetensors file at `weights_path` (not both); with
    neither, the folder holds no weights and `load` gives a freshly initialized model. `metadata`
    (task, metrics, lineage, ...) goes into config.json as it is and must be plain JSON.
    """
    try:
        ident(name)
    except RenderError as e:
        raise ValueError(f"name: {e}") from e
    if state_dict is not None and weights_path is not None:
        raise ValueError("state_dict, weights_path: pass at most one source of weights")
    metadata = {} if metadata is None else metadata
    if not isinstance(metadata, Mapping):
        raise ValueError(f"metadata: expected a dict, got {type(metadata).__name__}")
    _check_json(metadata, "metadata")

    if weights_path is not None:
        from safetensors.torch import load_file

        path = Path(weights_path)
        if path.suffix != ".safetensors":
            raise ValueError(f"weights_path: {path} is not a .safetensors file; only safetensors weights are exported")
        state_dict = load_file(str(path))
    tensors = prepare_state_dict(spec, state_dict, name) if state_dict is not None else None

    source = render(spec, name)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    weights_file = out / WEIGHTS_FILE
    if tensors is None and weights_file.exists():
        raise ValueError(f"out_dir: {out} already holds {WEIGHTS_FILE} but no weights were given; use an empty folder")
    config = {
        "format_version": FORMAT_VERSION,
        "name": name,
        "spec": spec.to_dict(),
        "spec_hash": spec.spec_hash,
        "vocab_size": spec.vocab_size,
        "metadata": dict(metadata),
    }
    (out / f"modeling_{name}.py").write_text(source, encoding="utf-8")
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True, allow_nan=False) + "\n", encoding="utf-8")
    if tensors is not None:
        from safetensors.torch import save_file

        save_file(tensors, str(weights_file), metadata={"format": "pt", "spec_hash": spec.spec_hash})
    return out
