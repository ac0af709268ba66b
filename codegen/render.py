"""Render an `ArchSpec` to the Python source of a standalone `nn.Module`, and build it.

Only the fixed templates in `codegen/templates/` are ever used. Every value that reaches the
source passes one of the filters below (numbers, booleans, None, registry names, checked
identifiers, the spec's own JSON); the environment's `finalize` hook rejects any expression that
did not, so a template cannot leak a raw value by mistake. The result is parsed with `ast.parse`
before it is returned, and the same spec always renders to the same bytes.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
import keyword
import linecache
import math
import re
import sys
import types
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2

from hybridnas.space.cost import GK_RANK, layer_dims, mlp_hidden
from hybridnas.space.spec import (
    ALL_LINEAR,
    FEATURE_MAPS,
    GATES,
    MIXERS,
    MLPS,
    NORMS,
    PLACEMENTS,
    ArchSpec,
    LayerSpec,
    SpecError,
)

__all__ = ["RenderError", "build_model", "build_module", "render"]

#: Every bare name that may appear in rendered source as data: the fixed registries.
ALLOWED_NAMES: frozenset[str] = frozenset(MIXERS + GATES + FEATURE_MAPS + MLPS + NORMS)
#: Strings the embedded spec JSON may hold besides registry names (hybrid-gene values).
_SPEC_STRINGS: frozenset[str] = ALLOWED_NAMES | frozenset(PLACEMENTS) | {ALL_LINEAR}
_PATTERN = re.compile(r"[LA]+")  # an explicit placement pattern such as "LLLA"
_HEX = re.compile(r"[0-9a-f]{16}")
#: The file whose source every rendered module embeds as its torch-only kernel fallback.
_FALLBACK_MODULE = "hybridnas.kernels"
_FALLBACK_FILE = "chunk.py"
_FALLBACK_FUNCTIONS = ("chunk_gated_linear_attention", "chunk_gated_delta_rule")
_BEGIN_EMBED = "# --- begin embedded hybridnas/kernels/chunk.py ---"
_END_EMBED = "# --- end embedded hybridnas/kernels/chunk.py ---"


class RenderError(ValueError):
    """A value or name that may not reach generated source, or a template/kernel-source problem."""


# --- filters --------------------------------------------------------------------------------------


class _Token(str):
    """Text produced by a filter: the only kind of value `finalize` lets into the source."""


def lit(value: Any) -> _Token:
    """A Python literal for an int, finite float, bool or None; anything else is refused."""
    if value is None or isinstance(value, bool):
        return _Token(repr(value))
    if isinstance(value, int):
        return _Token(repr(int(value)))
    if isinstance(value, float):
        if not math.isfinite(value):
            raise RenderError(f"literal: got {value!r}, only finite numbers may be rendered")
        return _Token(repr(float(value)))
    raise RenderError(f"literal: got {type(value).__name__} {value!r}, allowed: int, float, bool, None")


def name(value: Any) -> _Token:
    """A registry name (mixer, gate, feature map, MLP, norm), emitted bare."""
    if type(value) is not str or value not in ALLOWED_NAMES:
        raise RenderError(f"name: got {value!r}, allowed: {', '.join(sorted(ALLOWED_NAMES))}")
    return _Token(value)


def ident(value: Any) -> _Token:
    """A Python identifier (ASCII, not a keyword), emitted bare."""
    if type(value) is not str or not value.isascii() or not value.isidentifier() or keyword.iskeyword(value):
        raise RenderError(f"identifier: got {value!r}, must be an ASCII Python identifier that is not a keyword")
    return _Token(value)


def hexdigest(value: Any) -> _Token:
    """A spec hash: 16 lowercase hex digits."""
    if type(value) is not str or not _HEX.fullmatch(value):
        raise RenderError(f"spec hash: got {value!r}, must be 16 lowercase hex digits")
    return _Token(value)


def _check_json_value(value: Any, where: str) -> None:
    if value is None or isinstance(value, (bool, int)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise RenderError(f"spec JSON {where}: got {value!r}, only finite numbers")
        return
    if isinstance(value, str):
        if type(value) is str and (value in _SPEC_STRINGS or _PATTERN.fullmatch(value)):
            return
        raise RenderError(f"spec JSON {where}: string {value!r} is not a registry name or L/A pattern")
    if isinstance(value, list):
        for i, item in enumerate(value):
            _check_json_value(item, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if type(key) is not str or not key.isidentifier() or keyword.iskeyword(key):
                raise RenderError(f"spec JSON {where}: key {key!r} is not an identifier")
            _check_json_value(item, f"{where}.{key}")
        return
    raise RenderError(f"spec JSON {where}: got {type(value).__name__}, allowed: numbers, bools, None, names, lists, dicts")


def spec_json(value: Any) -> _Token:
    """The spec dict as a Python string literal holding its JSON; every leaf is checked first."""
    if not isinstance(value, dict):
        raise RenderError(f"spec JSON: got {type(value).__name__}, expected the dict from ArchSpec.to_dict()")
    _check_json_value(value, "spec")
    return _Token(repr(json.dumps(value, sort_keys=True, separators=(",", ":"))))


def kernel_source(value: Any) -> _Token:
    """The checked torch-only fallback kernel source (see `_fallback_source`)."""
    if not isinstance(value, _CheckedSource):
        raise RenderError("kernel source: only the checked source of hybridnas/kernels/chunk.py may be embedded")
    return _Token(value.text)


def _finalize(value: Any) -> Any:
    # Runs on every {{ ... }} expression: only filter output may become source text.
    if not isinstance(value, _Token):
        raise RenderError(f"template: unfiltered value {value!r} reached the source; pass it through a filter")
    return value


# --- the embedded fallback kernels ---------------------------------------------------------------


@dataclass(frozen=True)
class _CheckedSource:
    text: str  # chunk.py minus its `from __future__` lines
    names: frozenset[str]  # names it binds at top level (imports excluded)
    imported: frozenset[str]  # names its top-level imports bind


def _top_level_names(body: list[ast.stmt]) -> tuple[set[str], set[str]]:
    """(names bound by definitions and assignments, names bound by imports) at module level."""
    defs: set[str] = set()
    imports: set[str] = set()
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defs.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                defs.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
        elif isinstance(node, ast.Import):
            imports.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            imports.update(a.asname or a.name for a in node.names)
        elif isinstance(node, (ast.If, ast.Try, ast.With, ast.For, ast.While)):
            for n in ast.walk(node):
                if isinstance(n, (ast.FunctionDef, ast.ClassDef)):
                    defs.add(n.name)
                elif isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store):
                    defs.add(n.id)
    return defs, imports


def _check_fallback(text: str, origin: str) -> _CheckedSource:
    try:
        tree = ast.parse(text, filename=origin)
    except SyntaxError as e:
        raise RenderError(f"{origin}: does not parse: {e}") from e
    allowed_roots = set(sys.stdlib_module_names) | {"torch"}
    drop: set[int] = set()  # line numbers of `from __future__` imports: they must open a file
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots = [a.name.split(".")[0] for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                raise RenderError(f"{origin}:{node.lineno}: relative imports cannot be embedded in a standalone module")
            roots = [(node.module or "").split(".")[0]]
        else:
            continue
        bad = sorted(set(roots) - allowed_roots)
        if bad:
            raise RenderError(f"{origin}:{node.lineno}: imports {bad}; the fallback may import only torch and the stdlib")
        if roots == ["__future__"]:
            if node not in tree.body:
                raise RenderError(f"{origin}:{node.lineno}: misplaced __future__ import")
            drop.update(range(node.lineno, (node.end_lineno or node.lineno) + 1))
    defs, imports = _top_level_names(tree.body)
    missing = [f for f in _FALLBACK_FUNCTIONS if f not in defs]
    if missing:
        raise RenderError(f"{origin}: does not define {', '.join(missing)}")
    lines = text.splitlines()
    kept = "\n".join(line for i, line in enumerate(lines, start=1) if i not in drop).strip("\n")
    return _CheckedSource(text=kept + "\n", names=frozenset(defs), imported=frozenset(imports))


def _fallback_source() -> _CheckedSource:
    """Read hybridnas/kernels/chunk.py as text, without importing the kernels package."""
    spec = importlib.util.find_spec(_FALLBACK_MODULE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in locations:
        path = Path(folder) / _FALLBACK_FILE
        if path.is_file():
            return _check_fallback(path.read_text(encoding="utf-8"), f"{_FALLBACK_MODULE}/{_FALLBACK_FILE}")
    raise RenderError(f"{_FALLBACK_MODULE}: {_FALLBACK_FILE} not found; it is embedded in every rendered model")


# --- what the templates see ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Proj:
    """One input projection of a mixer: name_proj (and name_conv when the layer has a short conv)."""

    name: str  # q | k | f | v
    dim: int  # output width: n_heads * head
    head: int  # per-head width
    axis: str  # K (key/state rows) or V (values), for shape comments


@dataclass(frozen=True)
class _MixerView:
    """Everything a mixer template needs, already computed; one per distinct layer configuration."""

    cls: str  # class name in the rendered module
    template: str  # template file
    mixer: str  # one of MIXERS
    d: int  # residual width
    n_heads: int  # heads
    head_k: int  # key/state rows per head
    head_v: int  # value width per head
    key_dim: int  # n_heads * head_k
    value_dim: int  # n_heads * head_v
    conv_size: int  # q/k/v short conv width (0: none); the short_conv mixer's own conv width
    gate: str  # output gate: none | sigmoid | swish
    feature_map: str  # linear_attn feature map
    window: int | None  # swa window, None for full attention
    gk_rank: int  # GLA low-rank decay projection width
    projs: tuple[_Proj, ...]  # input projections in order


def _class_name(mixer: str, index: int) -> str:
    return "".join(part.capitalize() for part in mixer.split("_")) + f"Mixer{index}"


def _mixer_view(d_model: int, layer: LayerSpec, index: int) -> _MixerView:
    dims = layer_dims(d_model, layer)
    if layer.mixer == "short_conv":
        projs: tuple[_Proj, ...] = ()
        conv = layer.conv_size
    else:
        second = "f" if layer.mixer == "hgrn2" else "k"
        projs = (
            _Proj("q", dims.key_dim, dims.head_k, "K"),
            _Proj(second, dims.key_dim, dims.head_k, "K"),
            _Proj("v", dims.value_dim, dims.head_v, "V"),
        )
        conv = dims.conv_size
    return _MixerView(
        cls=_class_name(layer.mixer, index),
        template=f"{layer.mixer}.py.j2",
        mixer=layer.mixer,
        d=d_model,
        n_heads=dims.n_heads,
        head_k=dims.head_k,
        head_v=dims.head_v,
        key_dim=dims.key_dim,
        value_dim=dims.value_dim,
        conv_size=conv,
        gate=layer.gate,
        feature_map=layer.feature_map,
        window=layer.window if layer.mixer == "swa" else None,
        gk_rank=GK_RANK,
        projs=projs,
    )


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("hybridnas.codegen", "templates"),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        finalize=_finalize,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(lit=lit, name=name, ident=ident, hexdigest=hexdigest, spec_json=spec_json, kernel_source=kernel_source)
    return env


_ENV: jinja2.Environment | None = None


def _env() -> jinja2.Environment:
    global _ENV
    if _ENV is None:
        _ENV = _environment()
    return _ENV


def _revalidate(spec: Any) -> ArchSpec:
    """A fresh ArchSpec rebuilt from `spec`'s dict, so every gene passes its checks again."""
    if not isinstance(spec, ArchSpec):
        raise RenderError(f"spec: expected an ArchSpec, got {type(spec).__name__}")
    try:
        return ArchSpec.from_dict(spec.to_dict())
    except (SpecError, ValueError, TypeError, KeyError) as e:
        raise RenderError(f"spec: invalid genome: {e}") from e


def _check_embedding(source: str, tree: ast.Module, kernels: _CheckedSource) -> None:
    """The embedded kernel file and the generated code must not bind the same top-level names."""
    lines = source.splitlines()
    begin, end = lines.index(_BEGIN_EMBED) + 1, lines.index(_END_EMBED) + 1
    outside = [n for n in tree.body if not begin < n.lineno < end]
    defs, imports = _top_level_names(outside)
    clash = (kernels.names & (defs | imports)) | (kernels.imported & defs)
    if clash:
        raise RenderError(f"embedded kernels: names {sorted(clash)} are also defined by the generated code")


def render(spec: ArchSpec, name: str = "hybrid") -> str:
    """Python source of a standalone module defining `Model` for `spec` (and `load(directory)`)."""
    spec = _revalidate(spec)
    ident(name)
    classes: dict[str, _MixerView] = {}  # canonical layer JSON -> its class, in first-use order
    layer_classes: list[str] = []
    for layer in spec.layers:
        key = json.dumps(layer.canonical(), sort_keys=True)
        if key not in classes:
            classes[key] = _mixer_view(spec.d_model, layer, len(classes))
        layer_classes.append(classes[key].cls)
    kernels = _fallback_source()
    source = _env().get_template("model.py.j2").render(
        name=name,
        spec=spec,
        spec_dict=spec.to_dict(),
        mixers=list(classes.values()),
        layer_classes=layer_classes,
        mlp_hidden=mlp_hidden(spec),
        kernels=kernels,
    )
    source = "\n".join(line.rstrip() for line in source.splitlines()) + "\n"
    source = re.sub(r"\n{4,}", "\n\n\n", source)  # template blocks leave at most two blank lines
    try:
        tree = ast.parse(source, filename=f"modeling_{name}.py")
    except SyntaxError as e:  # a template bug, never a spec value: those cannot reach the source raw
        raise RenderError(f"rendered source does not parse: {e}") from e
    _check_embedding(source, tree, kernels)
    return source


# --- building ------------------------------------------------------------------------------------


#: Generated modules kept registered (sys.modules + linecache), oldest dropped first, so a
#: long-lived worker that builds thousands of candidates does not grow without bound. Models
#: of a dropped module keep working; only its tracebacks lose their source lines.
MAX_REGISTERED_MODULES = 64
_registered: OrderedDict[str, str] = OrderedDict()  # module name -> linecache filename


def _register(module_name: str, filename: str) -> None:
    _registered[module_name] = filename
    _registered.move_to_end(module_name)
    while len(_registered) > MAX_REGISTERED_MODULES:
        old_module, old_file = _registered.popitem(last=False)
        sys.modules.pop(old_module, None)
        linecache.cache.pop(old_file, None)


def build_module(spec: ArchSpec, name: str = "hybrid") -> types.ModuleType:
    """Render `spec` and execute the source as a fresh module registered in `sys.modules`.

    The module name carries the source hash, so identical specs share one module; the source is
    registered with `linecache`, so tracebacks and `inspect.getsource` show the generated lines.
    """
    source = render(spec, name)
    digest = hashlib.sha256(source.encode()).hexdigest()[:16]
    module_name = f"hybridnas_generated_{name}_{digest}"
    filename = f"<hybridnas:modeling_{name}_{digest}.py>"
    existing = sys.modules.get(module_name)
    if existing is not None and getattr(existing, "__hybridnas_source__", None) == source:
        _register(module_name, filename)
        return existing
    linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)
    module = types.ModuleType(module_name)
    module.__file__ = filename
    module.__hybridnas_source__ = source  # type: ignore[attr-defined]
    sys.modules[module_name] = module
    try:
        exec(compile(source, filename, "exec"), module.__dict__)
    except BaseException:
        del sys.modules[module_name]
        linecache.cache.pop(filename, None)
        raise
    _register(module_name, filename)
    return module


def build_model(spec: ArchSpec, name: str = "hybrid") -> Any:
    """Render `spec`, execute it as a fresh module and return a new `Model()` (an `nn.Module`)."""
    return build_module(spec, name).Model()
