"""Render an `ArchSpec` to the Python source of a standalone `nn.Module`, and build it.

The file is composed, not written by hand: the torch-only kernels of `hybridnas.kernels` (the
fallback when hybridnas is not installed), the mixers' shared blocks and LM skeleton
(`hybridnas/mixers/layers.py`, `lm.py`), the source of every mixer class the spec uses, and a small
generated part (jinja2, `templates/model.py.j2`) that wires the layers of this spec. So the code that
is trained, tested and exported is the code in `hybridnas.mixers`, once.

Guarantees: only package files and the fixed template reach the source; every value the template
renders passes a filter (numbers, booleans, None, registry names, checked identifiers, the spec's
own JSON) and the environment's `finalize` hook refuses anything else; embedded files may import
only torch, the standard library and hybridnas itself (their imports are replaced by the file's
header and the kernel fallbacks); the result parses, binds every name it uses, and the same spec
always renders to the same bytes.
"""

from __future__ import annotations

import ast
import builtins
import functools
import hashlib
import importlib
import inspect
import json
import keyword
import linecache
import math
import re
import symtable
import sys
import types
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import jinja2

from hybridnas.mixers.registry import FEATURE_MAPS, GATES
from hybridnas.space.cost import mlp_hidden
from hybridnas.space.spec import ALL_LINEAR, MIXERS, MLPS, NORMS, PLACEMENTS, ArchSpec, SpecError

__all__ = ["RenderError", "build_model", "build_module", "render"]

#: Every bare name that may appear in rendered source as data: the fixed registries.
ALLOWED_NAMES: frozenset[str] = frozenset(MIXERS + GATES + FEATURE_MAPS + MLPS + NORMS)
#: Strings the embedded spec JSON may hold besides registry names (hybrid-gene values).
_SPEC_STRINGS: frozenset[str] = ALLOWED_NAMES | frozenset(PLACEMENTS) | {ALL_LINEAR}
_PATTERN = re.compile(r"[LA]+")  # an explicit placement pattern such as "LLLA"
_HEX = re.compile(r"[0-9a-f]{16}")

#: The torch-only kernels every export embeds, in order (later files may import earlier ones).
KERNEL_FILES = ("hybridnas.kernels.chunk", "hybridnas.kernels.step", "hybridnas.kernels.attention", "hybridnas.kernels.conv")
#: Embedded whole: the blocks every mixer and the model share.
BLOCK_FILES = ("hybridnas.mixers.layers", "hybridnas.mixers.lm")
#: Kernel entry points whose torch-only form has another name in the embedded files.
FALLBACK_ALIASES = {
    "gated_linear_attention": "chunk_gated_linear_attention",
    "gated_delta_rule": "chunk_gated_delta_rule",
}
#: What the generated part itself imports.
_OWN_IMPORTS = ("import json", "import pathlib", "from typing import Any")


class RenderError(ValueError):
    """A value or name that may not reach generated source, or a problem with an embedded file."""


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


def option(value: Any) -> _Token:
    """A mixer option value: a literal, or a registry name as a string literal."""
    if isinstance(value, str):
        return _Token(repr(str(name(value))))
    return lit(value)


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


def source(value: Any) -> _Token:
    """Code read from the package and checked by this module (see `_Embedded`)."""
    if not isinstance(value, _Embedded):
        raise RenderError("source: only checked hybridnas source may be embedded")
    return _Token(value.text)


def options_dict(items: Any) -> _Token:
    """A mixer's constructor options as a dict literal: identifiers to option values."""
    return _Token("{" + ", ".join(f"{ident(k)!r}: {option(v)}" for k, v in items) + "}")


def _finalize(value: Any) -> Any:
    # Runs on every {{ ... }} expression: only filter output may become source text.
    if not isinstance(value, _Token):
        raise RenderError(f"template: unfiltered value {value!r} reached the source; pass it through a filter")
    return value


# --- embedded package source ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Embedded:
    """Checked source from the package, its imports removed."""

    text: str  # the kept statements, as they stand in the file
    origin: str  # the module it came from
    defines: frozenset[str]  # names its statements bind at top level
    imports: tuple[str, ...]  # its torch / standard-library imports, one normalized line each
    from_hybridnas: tuple[tuple[str, str], ...]  # (module, name) it imports from hybridnas


def _bound(node: ast.stmt) -> set[str]:
    """Names a top-level statement binds (imports excluded)."""
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return {node.name}
    if isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        return {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}


def _imports_of(node: ast.Import | ast.ImportFrom, origin: str) -> tuple[list[str], list[tuple[str, str]]]:
    """(torch/stdlib import lines, hybridnas (module, name) pairs); RenderError for anything else."""
    if isinstance(node, ast.ImportFrom) and node.level:
        raise RenderError(f"{origin}:{node.lineno}: relative imports cannot be embedded in a standalone module")
    modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
    roots = {m.split(".")[0] for m in modules}
    if roots == {"__future__"}:
        return [], []
    if roots == {"hybridnas"}:
        if not isinstance(node, ast.ImportFrom):
            raise RenderError(f"{origin}:{node.lineno}: import hybridnas names with `from ... import ...`")
        return [], [(node.module or "", a.asname or a.name) for a in node.names]
    bad = sorted(roots - set(sys.stdlib_module_names) - {"torch"})
    if bad:
        raise RenderError(f"{origin}:{node.lineno}: imports {bad}; embedded code may import only torch and the stdlib")
    return [ast.unparse(node)], []


def _read(module_name: str) -> tuple[str, ast.Module]:
    try:
        text = inspect.getsource(importlib.import_module(module_name))
        return text, ast.parse(text, filename=module_name)
    except (OSError, TypeError, SyntaxError) as e:
        raise RenderError(f"{module_name}: cannot read its source to embed it: {e}") from e


def _embed(module_name: str, keep: set[str] | None = None) -> _Embedded:
    """`module_name`'s code without its docstring, imports and `__all__`, comments kept; with `keep`,
    only the statements that bind those names and what they need from the same file."""
    text, tree = _read(module_name)
    lines = text.splitlines()
    imports: list[str] = []
    from_hybridnas: list[tuple[str, str]] = []
    body: list[ast.stmt] = []
    for i, node in enumerate(tree.body):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            own, ours = _imports_of(node, module_name)
            imports += own
            from_hybridnas += ours
        elif i == 0 and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue  # the module docstring
        elif _bound(node) != {"__all__"}:
            body.append(node)
    if keep is not None:
        body = _closure(body, keep, module_name)
    out: list[str] = []
    previous_end = 0
    for node in body:
        start = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
        while start > 1 and lines[start - 2].lstrip().startswith("#"):
            start -= 1  # the comment block just above belongs to the statement
        gap = lines[previous_end : start - 1]
        # Keep the blank lines between statements that stood together; two where code was left out.
        out.append("\n" * (len(gap) if previous_end and all(not ln.strip() for ln in gap) and len(gap) <= 2 else 2))
        out.append("\n".join(lines[start - 1 : node.end_lineno]) + "\n")
        previous_end = node.end_lineno
    out = "".join(out).lstrip("\n")
    defines = frozenset().union(*(_bound(n) for n in body)) if body else frozenset()
    return _Embedded(out + "\n", module_name, defines, tuple(imports), tuple(from_hybridnas))


def _closure(body: list[ast.stmt], keep: set[str], origin: str) -> list[ast.stmt]:
    """The statements binding `keep`, and (transitively) those binding a name they use."""
    binders = {n: stmt for stmt in body for n in _bound(stmt)}
    missing = keep - set(binders)
    if missing:
        raise RenderError(f"{origin}: does not define {sorted(missing)}")
    wanted: set[int] = set()
    todo = list(keep)
    while todo:
        stmt = binders[todo.pop()]
        if id(stmt) in wanted:
            continue
        wanted.add(id(stmt))
        todo += [n.id for n in ast.walk(stmt) if isinstance(n, ast.Name) and n.id in binders]
    return [s for s in body if id(s) in wanted]


def _unbound_globals(text: str) -> set[str]:
    """Global names the code reads that nothing binds at module level (nor builtins)."""
    table = symtable.symtable(text, "<rendered>", "exec")
    top = {s.get_name() for s in table.get_symbols() if s.is_assigned() or s.is_imported()}
    known = top | set(dir(builtins)) | {"__file__", "__name__"}
    unbound: set[str] = set()
    todo = list(table.get_children())
    while todo:
        scope = todo.pop()
        todo += scope.get_children()
        for s in scope.get_symbols():
            if (s.is_global() or (scope.get_type() == "class" and not s.is_assigned() and not s.is_parameter())) and s.is_referenced():
                if s.get_name() not in known and not s.is_free():
                    unbound.add(s.get_name())
    return unbound


@dataclass(frozen=True)
class _Parts:
    kernels: _Embedded  # the torch-only kernels
    blocks: _Embedded  # layers.py and lm.py
    mixers: _Embedded  # the mixer classes the spec uses (and what they need)
    imports: _Embedded  # the header's import lines
    kernel_names: tuple[str, ...]  # entry points imported from hybridnas.kernels
    aliases: tuple[tuple[str, str], ...]  # (entry point, its torch-only name) where they differ


def _join(parts: list[_Embedded], origin: str) -> _Embedded:
    """One piece from several; a name bound by two of them is a RenderError."""
    seen: dict[str, str] = {}
    for p in parts:
        for n in p.defines:
            if n in seen:
                raise RenderError(f"embedded code: {n!r} is defined in both {seen[n]} and {p.origin}")
            seen[n] = p.origin
    return _Embedded(
        "\n\n".join(p.text.rstrip("\n") for p in parts) + "\n",
        origin,
        frozenset(seen),
        tuple(i for p in parts for i in p.imports),
        tuple(x for p in parts for x in p.from_hybridnas),
    )


def _mixer_sources(classes: list[type]) -> list[_Embedded]:
    """Each class (and its bases outside the block files) with the module-level code it needs."""
    wanted: dict[str, set[str]] = {}  # module -> class names, in first-use order
    for cls in classes:
        for base in reversed(cls.__mro__):
            module = base.__module__
            if module.startswith("hybridnas.mixers.") and module not in BLOCK_FILES:
                wanted.setdefault(module, set()).add(base.__name__)
    return [_embed(module, names) for module, names in wanted.items()]


_BLOCKS: _Embedded | None = None
_KERNELS: _Embedded | None = None


def _kernels() -> _Embedded:
    """The kernel files, joined; each may import from the ones before it, nothing else from hybridnas."""
    global _KERNELS
    if _KERNELS is None:
        joined = _join([_embed(m) for m in KERNEL_FILES], "hybridnas.kernels")
        for module, n in joined.from_hybridnas:
            if module not in KERNEL_FILES or n not in joined.defines:
                raise RenderError(f"hybridnas.kernels: imports {n} from {module}, which is not embedded")
        _KERNELS = joined
    return _KERNELS


def _kernel_api() -> list[str]:
    return sorted(importlib.import_module("hybridnas.kernels").__all__)


def _blocks() -> _Embedded:
    global _BLOCKS
    if _BLOCKS is None:
        _BLOCKS = _join([_embed(m) for m in BLOCK_FILES], "hybridnas.mixers")
    return _BLOCKS


def _parts(classes: tuple[type, ...]) -> _Parts:
    kernels, blocks = _kernels(), _blocks()
    mixers = _join(_mixer_sources(list(classes)), "mixers")
    _join([kernels, blocks, mixers], "the model file")  # no name bound twice
    # Every entry point with a torch-only form is taken from hybridnas when it is installed.
    entry_points = [n for n in _kernel_api() if FALLBACK_ALIASES.get(n, n) in kernels.defines]
    used = {n for m, n in blocks.from_hybridnas + mixers.from_hybridnas if m == "hybridnas.kernels"}
    if used - set(entry_points):
        raise RenderError(f"hybridnas.kernels: {sorted(used - set(entry_points))} have no torch-only form to embed")
    aliases = [(n, FALLBACK_ALIASES[n]) for n in entry_points if n in FALLBACK_ALIASES]
    lines = sorted({*kernels.imports, *blocks.imports, *mixers.imports, *_OWN_IMPORTS})
    imports = _Embedded("\n".join(lines) + "\n", "imports", frozenset(), (), ())
    return _Parts(kernels, blocks, mixers, imports, tuple(entry_points), tuple(aliases))


@functools.cache
def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("hybridnas.codegen", "templates"),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        finalize=_finalize,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(
        lit=lit, name=name, ident=ident, hexdigest=hexdigest, spec_json=spec_json, source=source, options_dict=options_dict
    )
    return env


def _revalidate(spec: Any) -> ArchSpec:
    """A fresh ArchSpec rebuilt from `spec`'s dict, so every gene passes its checks again."""
    if not isinstance(spec, ArchSpec):
        raise RenderError(f"spec: expected an ArchSpec, got {type(spec).__name__}")
    try:
        return ArchSpec.from_dict(spec.to_dict())
    except (SpecError, ValueError, TypeError, KeyError) as e:
        raise RenderError(f"spec: invalid genome: {e}") from e


def _check_bindings(tree: ast.Module, text: str) -> None:
    """Each top-level name bound by one statement (the kernel try/except aside); every name read bound."""
    owner: dict[str, int] = {}
    for node in tree.body:
        if isinstance(node, ast.Try):
            continue  # binds the kernel entry points in both branches, on purpose
        for n in _bound(node):
            if n in owner and owner[n] != node.lineno:
                raise RenderError(f"rendered source: {n!r} is bound at lines {owner[n]} and {node.lineno}")
            owner[n] = node.lineno
    unbound = _unbound_globals(text)
    if unbound:
        raise RenderError(f"rendered source: uses {sorted(unbound)}, which nothing in the file defines")


def render(spec: ArchSpec, name: str = "hybrid") -> str:
    """Python source of a standalone module defining `Model` for `spec` (and `load(directory)`)."""
    spec = _revalidate(spec)
    ident(name)
    modules = spec.mixer_modules()
    classes = tuple(dict.fromkeys(cls for cls, _ in modules))  # in first-use order
    text = _env().get_template("model.py.j2").render(
        name=name,
        spec=spec,
        spec_dict=spec.to_dict(),
        parts=_parts(classes),
        layers=[(cls.__name__, list(kwargs.items())) for cls, kwargs in modules],
        mlp_hidden=mlp_hidden(spec),
    )
    text = "\n".join(line.rstrip() for line in text.splitlines()) + "\n"
    text = re.sub(r"\n{4,}", "\n\n\n", text)  # template blocks leave at most two blank lines
    try:
        tree = ast.parse(text, filename=f"modeling_{name}.py")
    except SyntaxError as e:  # a template or package-file bug, never a spec value: those cannot reach the source raw
        raise RenderError(f"rendered source does not parse: {e}") from e
    _check_bindings(tree, text)
    return text


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
    text = render(spec, name)
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    module_name = f"hybridnas_generated_{name}_{digest}"
    filename = f"<hybridnas:modeling_{name}_{digest}.py>"
    existing = sys.modules.get(module_name)
    if existing is not None and getattr(existing, "__hybridnas_source__", None) == text:
        _register(module_name, filename)
        return existing
    linecache.cache[filename] = (len(text), None, text.splitlines(keepends=True), filename)
    module = types.ModuleType(module_name)
    module.__file__ = filename
    module.__hybridnas_source__ = text  # type: ignore[attr-defined]
    sys.modules[module_name] = module
    try:
        exec(compile(text, filename, "exec"), module.__dict__)
    except BaseException:
        del sys.modules[module_name]
        linecache.cache.pop(filename, None)
        raise
    _register(module_name, filename)
    return module


def build_model(spec: ArchSpec, name: str = "hybrid") -> Any:
    """Render `spec`, execute it as a fresh module and return a new `Model()` (an `nn.Module`)."""
    return build_module(spec, name).Model()
