"""Turning validation failures into messages a user can act on: the field path, then what is allowed."""

from __future__ import annotations

import re

from pydantic import ValidationError

_FIELD = re.compile(r"([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*): ")


def format_validation_error(error: ValidationError, prefix: str = "") -> list[str]:
    """One line per problem, e.g. `space.hybrid.linear_mixer: 'foo' is not allowed; allowed: ...`."""
    lines = []
    for e in error.errors():
        loc = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in e["loc"]).replace(".[", "[")
        path = f"{prefix}.{loc}" if prefix and loc else (prefix or loc)
        msg = e["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        if e["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
            msg = "unknown field"
        # A dataclass's own check names its field first ("steps: got 0, ..."): join it to the path.
        named = _FIELD.match(msg)
        if named and e["type"] == "value_error":
            path = f"{path}.{named.group(1)}" if path else named.group(1)
            msg = msg[named.end():]
        lines.append(f"{path}: {msg}" if path else msg)
    return lines
