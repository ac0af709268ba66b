"""Reading small YAML configuration files (campaign and space files) safely.

UTF-8 only (a byte-order mark allowed), at most MAX_FILE_BYTES, parsed with PyYAML's SafeLoader and
then refused, with the key path and line, when it holds duplicate keys, keys that are not names,
tags without a safe constructor, or nesting or alias expansion past the bounds ("billion laughs").
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

__all__ = ["MAX_FILE_BYTES", "MAX_YAML_DEPTH", "MAX_YAML_NODES", "YAMLFileError", "read_yaml"]

MAX_FILE_BYTES = 1 << 20  # a configuration file is a few KB; a larger one is a mistake (or an attack)
MAX_YAML_DEPTH = 64  # nesting of mappings and lists, aliases expanded
MAX_YAML_NODES = 100_000  # values in the document once every alias is expanded (bounds "billion laughs")

_BOMS = (  # longest first: the UTF-32 LE mark starts with the UTF-16 LE one
    (b"\xff\xfe\x00\x00", "UTF-32"),
    (b"\x00\x00\xfe\xff", "UTF-32"),
    (b"\xff\xfe", "UTF-16"),
    (b"\xfe\xff", "UTF-16"),
)


def _decode(raw: bytes, path: Path) -> str:
    """The text of a UTF-8 file (a leading byte-order mark allowed); YAMLFileError for any other encoding."""

    def refuse(why: str) -> YAMLFileError:
        return YAMLFileError(f"file: {path} is not UTF-8 text ({why}); save it as UTF-8")

    for bom, encoding in _BOMS:
        if raw.startswith(bom):
            raise refuse(f"it starts with a {encoding} byte-order mark")
    if b"\x00" in raw:
        line = raw[: raw.index(b"\x00")].count(b"\n") + 1
        raise refuse(f"it has a NUL byte on line {line}, as UTF-16 or UTF-32 text does")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise refuse(f"byte 0x{raw[e.start]:02x} on line {line} is not valid UTF-8") from None


class YAMLFileError(ValueError):
    """The file cannot be read as the YAML we accept; `problem` is one line naming the file, key or line."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem



class _Loader(yaml.SafeLoader):
    """SafeLoader that bounds nesting while it composes (the composer recurses once per level)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                line = self.peek_event().start_mark.line + 1
                raise YAMLFileError(f"yaml: line {line}: nested deeper than {MAX_YAML_DEPTH} levels")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


_MERGE_TAG = "tag:yaml.org,2002:merge"


def _check_tree(loader: _Loader, root: yaml.Node) -> None:
    """Refuse, naming the key path and line: duplicate keys, keys that are not names, tags without a
    safe constructor, and nesting or alias expansion past the bounds. Aliases are followed, so what
    they expand to counts in full; the walk stops at the first problem, so a bomb costs little."""
    left = [MAX_YAML_NODES]

    def walk(node: yaml.Node, path: str, depth: int) -> None:
        steps = re.findall(r"[^.\[]+|\[\d+\]", path)  # an alias bomb's path is long: name where it starts
        short = path if len(steps) <= 4 else re.sub(r"\.\[", "[", ".".join(steps[:4])) + "..."
        where = f"{short or 'yaml'}: line {node.start_mark.line + 1}"
        left[0] -= 1
        if left[0] < 0:
            raise YAMLFileError(f"{where}: the document expands to more than {MAX_YAML_NODES} values (aliases repeated?)")
        if depth > MAX_YAML_DEPTH:
            raise YAMLFileError(f"{where}: nested deeper than {MAX_YAML_DEPTH} levels (aliases expanded)")
        if node.tag not in loader.yaml_constructors and node.tag != _MERGE_TAG:
            raise YAMLFileError(f"{where}: tag {node.tag!r} is not allowed (plain values, lists and mappings only)")
        if isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, f"{path}[{i}]", depth + 1)
        elif isinstance(node, yaml.MappingNode):
            first: dict[Any, int] = {}
            for key_node, value_node in node.value:
                if key_node.tag == _MERGE_TAG:  # `<<: *defaults`: keys given here override the merged ones
                    walk(value_node, path, depth + 1)
                    continue
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag not in loader.yaml_constructors:
                    raise YAMLFileError(f"{path or 'yaml'}: line {key_node.start_mark.line + 1}: a key must be a plain name")
                key = loader.construct_object(key_node)
                line = key_node.start_mark.line + 1
                if not isinstance(key, str):
                    raise YAMLFileError(
                        f"{path or 'yaml'}: line {line}: key {key_node.value!r} reads as {key!r}, not a name; quote it"
                    )
                child = f"{path}.{key}" if path else key
                if key in first:
                    raise YAMLFileError(f"{child}: duplicate key on line {line} (first given on line {first[key]})")
                first[key] = line
                walk(value_node, child, depth + 1)

    walk(root, "", 1)


def _yaml_problem(e: yaml.YAMLError, text: str) -> str:
    """One line for a YAML syntax error: where, then what."""
    if isinstance(e, yaml.reader.ReaderError):
        line = text[: e.position].count("\n") + 1
        char = f"U+{e.character:04X}" if isinstance(e.character, int) else repr(e.character)
        return f"yaml: line {line}: character {char} is not allowed in YAML ({e.reason})"
    if isinstance(e, yaml.MarkedYAMLError):
        mark = e.problem_mark or e.context_mark
        what = "; ".join(str(x) for x in (e.context, e.problem) if x)
        if mark is not None:
            return f"yaml: line {mark.line + 1}, column {mark.column + 1}: {what}"
        return f"yaml: {what}"
    return f"yaml: {str(e).splitlines()[0] if str(e) else type(e).__name__}"


def read_yaml(path: str | Path, what: str = "a YAML file", first_key: str | None = None) -> Any:
    """The parsed document of a small YAML configuration file; YAMLFileError (naming the file, key
    or line) for a file that is missing, too large, not UTF-8, not YAML, or YAML that holds what a
    configuration must not: duplicate keys, keys that are not names, tags, alias bombs, deep nesting."""
    p = Path(path)
    if not p.exists():
        raise YAMLFileError(f"file: {p} does not exist")
    if not p.is_file():
        raise YAMLFileError(f"file: {p} is not a regular file")
    try:
        size = p.stat().st_size
        if size > MAX_FILE_BYTES:
            raise YAMLFileError(f"file: {p} has {size} bytes, more than the {MAX_FILE_BYTES} {what} may have")
        raw = p.read_bytes()
    except OSError as e:
        raise YAMLFileError(f"file: cannot read {p}: {e.strerror or e}") from None
    text = _decode(raw, p)
    loader: _Loader | None = None
    try:
        loader = _Loader(text)  # its reader refuses control characters at once
        root = loader.get_single_node()
        if root is None:
            needs = f"; it needs at least `{first_key}:`" if first_key else ""
            raise YAMLFileError(f"file: {p} is empty{needs}")
        _check_tree(loader, root)
        return loader.construct_document(root)
    except yaml.YAMLError as e:
        raise YAMLFileError(_yaml_problem(e, text)) from None
    except RecursionError:  # the nesting bound should come first; never a traceback either way
        raise YAMLFileError(f"yaml: nested deeper than {MAX_YAML_DEPTH} levels") from None
    finally:
        if loader is not None:
            loader.dispose()
