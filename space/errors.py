"""Turning validation failures into messages a user can act on: the field path, then what is allowed."""

from __future__ import annotations

from pydantic import ValidationError


def format_validation_error(error: ValidationError, prefix: str = "") -> list[str]:
    """One line per problem, e.g. `space.hybrid.linear_mixer: 'foo' is not allowed; allowed: ...`."""
    lines = []
    for e in error.errors():
        loc = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in e["loc"]).replace(".[", "[")
        path = f"{prefix}.{loc}" if prefix and loc else (prefix or loc)
        msg = e["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        if e["type"] == "extra_forbidden":
            msg = "unknown field"
        lines.append(f"{path}: {msg}" if path else msg)
    return lines
