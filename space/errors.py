"""Turning validation failures into messages a user can act on: the field path, then what is allowed."""

from __future__ import annotations

import re

from pydantic import ValidationError

_FIELD = re.compile(r"([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*): ")


#: Parts of an error location that name the member of a union pydantic tried ("int", "literal['x']"), not a field.
_UNION_MEMBER = re.compile(r"^(int|float|str|bool|none|list|dict|tuple|bytes)$|[\[\](-]")


def _join(path: str, named: str) -> str:
    """`path` + `named`, once: "training.target" + "target.value" is "training.target.value"."""
    if not path:
        return named
    head = named.split(".", 1)[0]
    if path == head or path.endswith("." + head):
        return f"{path[: len(path) - len(head)]}{named}"
    return f"{path}.{named}"


def format_validation_error(error: ValidationError, prefix: str = "") -> list[str]:
    """One line per problem, e.g. `space.hybrid.linear_mixer: 'foo' is not allowed; allowed: ...`."""
    lines: list[str] = []
    for e in error.errors():
        extra = e["type"] in ("extra_forbidden", "unexpected_keyword_argument")  # its last part is the user's key
        parts = [
            p for i, p in enumerate(e["loc"])
            if isinstance(p, int) or (extra and i == len(e["loc"]) - 1) or not _UNION_MEMBER.search(str(p))
        ]
        loc = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in parts).replace(".[", "[")
        path = f"{prefix}.{loc}" if prefix and loc else (prefix or loc)
        msg = e["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        if extra:
            msg = "unknown field"
        # A dataclass's own check names its field first ("steps: got 0, ..."): join it to the path.
        named = _FIELD.match(msg)
        if named and e["type"] == "value_error":
            path = _join(path, named.group(1))
            msg = msg[named.end():]
        line = f"{path}: {msg}" if path else msg
        if line not in lines:  # a union's members can fail alike
            lines.append(line)
    return lines
