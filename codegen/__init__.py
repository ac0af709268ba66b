"""Codegen: render an ArchSpec to a standalone PyTorch module, build it, export it."""

from __future__ import annotations

from hybridnas.codegen.export import export
from hybridnas.codegen.render import RenderError, build_model, build_module, render

__all__ = ["RenderError", "build_model", "build_module", "export", "render"]
