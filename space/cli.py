"""`hybridnas space ...`: checking search-space files before a campaign uses them."""

from __future__ import annotations

from pathlib import Path

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape

from hybridnas.space.errors import format_validation_error
from hybridnas.space.space import SpaceFile
from hybridnas.space.yamlfile import YAMLFileError, read_yaml

space_app = typer.Typer(help="Search spaces: validate them before a campaign uses them.", no_args_is_help=True)


@space_app.command("validate")
def validate(
    file: Path = typer.Argument(..., help="A space file, or a campaign file (its `space:` section is checked)."),
    vocab_size: int = typer.Option(64, "--vocab-size", min=2, help="Vocabulary to build sample designs with."),
) -> None:
    """Check every gene's choices; print the space's mode and size. Exit code 2 on any problem."""
    err = Console(stderr=True)
    try:
        data = read_yaml(file, what="a space file")
    except YAMLFileError as e:
        err.print(f"[bold red]error:[/] {escape(e.problem)}", highlight=False)
        raise typer.Exit(2)
    prefix = ""
    if isinstance(data, dict) and "space" in data:
        data, prefix = data["space"], "space"
    try:
        space = SpaceFile.model_validate(data or {}).build(vocab_size)
    except ValidationError as e:
        err.print(f"[bold red]error:[/] invalid space in {file}:", highlight=False)
        for line in format_validation_error(e, prefix):
            err.print(f"  {line}", highlight=False)
        raise typer.Exit(2)
    except ValueError as e:
        err.print(f"[bold red]error:[/] {prefix or 'space'}: {e}", highlight=False)
        raise typer.Exit(2)
    genes = ", ".join(f"{name} ({len(c)})" for name, c in space.genes if len(c) > 1) or "none"
    Console().print(f"ok: {space.mode} space, {space.size()} gene combinations; searched genes: {genes}", highlight=False)


@space_app.command("mixers")
def mixers(
    fmt: str = typer.Option("table", "--format", "-f", help="table, json or csv"),
) -> None:
    """Every registered token mixer: its kind, the options it takes, what it is and where it comes from."""
    import csv
    import io
    import json

    from rich.table import Table

    from hybridnas.mixers import OPTIONS, REGISTRY

    rows = [
        {
            "mixer": m.name,
            "kind": m.kind,
            "options": ", ".join(m.options),
            "module": f"{m.module.__module__}.{m.module.__name__}",
            "summary": m.summary,
            "reference": m.reference,
        }
        for m in REGISTRY.values()
    ]
    if fmt == "json":
        typer.echo(json.dumps({"mixers": rows, "options": {o.name: o.doc for o in OPTIONS.values()}}, indent=2))
    elif fmt == "csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        typer.echo(buf.getvalue(), nl=False)
    elif fmt == "table":
        table = Table(title="mixers")
        for column in ("mixer", "kind", "options", "summary"):
            table.add_column(column, overflow="fold")
        for r in rows:
            table.add_row(r["mixer"], r["kind"], r["options"], r["summary"])
        Console(width=max(Console().width, 120)).print(table)
    else:
        Console(stderr=True).print(f"[bold red]error:[/] --format: {fmt!r} is not allowed; allowed: table, json, csv")
        raise typer.Exit(2)
