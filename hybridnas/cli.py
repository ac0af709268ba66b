"""The `hybridnas` command: each stage owns its commands; this file only joins them."""

from __future__ import annotations

import typer

from hybridnas.report.cli import report_command
from hybridnas.search.cli import campaign_app, evaluate_command, export_command
from hybridnas.space.cli import space_app
from hybridnas.store.cli import query_app

app = typer.Typer(
    help="Automated architecture search for hybrid sequence models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(campaign_app, name="campaign")
app.add_typer(query_app, name="query", help="Leaderboards, Pareto fronts and lineage from the store.")
app.add_typer(space_app, name="space")
app.command("export")(export_command)
app.command("evaluate")(evaluate_command)
app.command("report")(report_command)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
