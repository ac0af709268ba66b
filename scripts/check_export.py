"""Load an exported model where only torch, safetensors and the standard library can be imported.

Usage: python scripts/check_export.py EXPORT_DIR

torch and safetensors are imported first; then an import hook refuses every top-level module that is
not in the standard library or already loaded by them, so the export must stand on its own.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import json
import sys
from pathlib import Path



class OnlyTorch(importlib.abc.MetaPathFinder):
    def __init__(self) -> None:
        import safetensors.torch  # noqa: F401
        import torch  # noqa: F401

        self.allowed = {name.split(".")[0] for name in sys.modules}
        assert "hybridnas" not in self.allowed

    def find_spec(self, fullname, path, target=None):  # noqa: ANN001
        top = fullname.split(".")[0]
        if top in sys.stdlib_module_names or top in self.allowed or top.startswith("modeling_"):
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
