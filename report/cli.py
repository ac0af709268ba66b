"""`hybridnas report CAMPAIGN --out report.html`: one self-contained HTML page about a campaign.

Reads the store like the query commands do (create=False: never writes, never waits for a running
campaign); a missing store, an unknown campaign or a metric that was never recorded is a usage
error (exit 2) naming what was wrong.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from hybridnas.report.data import collect
from hybridnas.report.render import render_html
from hybridnas.store.cli import CampaignArgument, StoreOption, open_store, resolve_campaign


def write_atomic(path: Path, text: str) -> None:
    """Write beside the target and rename, so a reader never opens half a report."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # plain open: the file gets the user's umask
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def report_command(
    campaign: CampaignArgument = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="HTML file to write", dir_okay=False)] = Path("report.html"),
    store_url: StoreOption = None,
    metric: Annotated[str | None, typer.Option("--metric", "-m", help="rank by this metric (default: the campaign's objective)", show_default=False)] = None,
    direction: Annotated[str | None, typer.Option("--direction", "-d", help="maximize or minimize, or max, min (default: the objective's)", show_default=False)] = None,
    task: Annotated[str | None, typer.Option("--task", help="only evaluations of this task")] = None,
) -> None:
    """Write a self-contained HTML report of a campaign: leaderboard, winner, Pareto fronts, lineage, failures."""
    with open_store(store_url) as store:
        info = resolve_campaign(store, campaign)
        try:
            data = collect(store, info, metric=metric, direction=direction, task=task)
        except ValueError as e:
            field = str(e).split(":", 1)[0]  # errors name their field first
            hint = {"direction": "'--direction'", "metric": "'--metric'"}.get(field, "'CAMPAIGN'")
            raise typer.BadParameter(str(e), param_hint=hint) from None
        html = render_html(data)
    write_atomic(out, html)
    typer.echo(f"wrote {out} ({len(html.encode()) / 1024:.0f} KiB): campaign {info.name}, {len(data.entries)} scored candidates, "
               f"{data.counts['failed']} failed, {data.counts['invalid']} invalid")


__all__ = ["report_command", "write_atomic"]
