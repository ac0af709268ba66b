"""Load an exported model where only torch, safetensors and the standard library can be imported.

Usage: python scripts/check_export.py EXPORT_DIR

An import hook refuses every top-level module that is not in the standard library, torch (and the
packages torch itself imports), safetensors or numpy, so the export must stand on its own.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import json
import sys
from pathlib import Path

ALLOWED = {"torch", "safetensors", "numpy", "typing_extensions", "sympy", "mpmath", "networkx", "filelock",
           "fsspec", "jinja2", "markupsafe", "_distutils_hack", "optree", "opt_einsum"}


class OnlyTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):  # noqa: ANN001
        top = fullname.split(".")[0]
        if top in sys.stdlib_module_names or top in ALLOWED or top.startswith("_") or top.startswith("modeling_"):
            return None
        raise ImportError(f"{fullname} is not importable here: the export must need only torch and safetensors")


def main(directory: str) -> None:
    sys.meta_path.insert(0, OnlyTorch())
    folder = Path(directory)
    (source,) = folder.glob("modeling_*.py")
    spec = importlib.util.spec_from_file_location(source.stem, source)
    module = importlib.util.module_from_spec(spec)
    sys.modules[source.stem] = module
    spec.loader.exec_module(module)
    import torch

    assert "hybridnas" not in sys.modules, "hybridnas was imported"
    model = module.load(folder).eval()
    config = json.loads((folder / "config.json").read_text())
    ids = torch.randint(0, config["vocab_size"], (2, 32))
    with torch.no_grad():
        logits = model(ids)
    assert logits.shape == (2, 32, config["vocab_size"]), logits.shape
    assert torch.isfinite(logits).all()
    metrics = config.get("metadata", {}).get("metrics", {})
    print(f"loaded {source.name} without hybridnas: logits {tuple(logits.shape)}, "
          f"weights={(folder / 'model.safetensors').exists()}, stored accuracy={metrics.get('accuracy')}")


if __name__ == "__main__":
    main(sys.argv[1])
