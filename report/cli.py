"""`hybridnas report CAMPAIGN --out report.html`: one self-contained HTML page about a campaign.

Reads the store like the query commands do (create=False: never writes, never waits for a running
campaign); a missing store, an unknown campaign or a metric that was never recorded is a usage
error (exit 2) naming what was wrong.
"""

from __future__ import annotations

import os
import re
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


_SECTION = re.compile(r'<section id="([\w-]+)"')
_SVG = re.compile(r"<svg\b.*?</svg>", re.S)


def extract_figures(html: str) -> dict[str, str]:
    """Each plot of a rendered page as a standalone SVG file's text, named after its section
    (`pareto-1.svg`, `by-ratio.svg`, ...), carrying the page's stylesheet so it looks the same."""
    style = re.search(r"<style>(.*?)</style>", html, re.S)
    css = style.group(1) if style else ""
    sections = [(m.start(), m.group(1)) for m in _SECTION.finditer(html)]
    counts: dict[str, int] = {}
    out: dict[str, str] = {}
    for m in _SVG.finditer(html):
        section = max((sec for sec in sections if sec[0] < m.start()), default=(0, "figure"))[1]
        counts[section] = counts.get(section, 0) + 1
        svg = m.group(0).replace("<svg ", '<svg xmlns="http://www.w3.org/2000/svg" ', 1)
        head_end = svg.index(">") + 1
        svg = svg[:head_end] + f"<style>{css}</style>" + svg[head_end:]
        out[f"{section}-{counts[section]}"] = '<?xml version="1.0" encoding="utf-8"?>\n' + svg + "\n"
    return out


def report_command(
    campaign: CampaignArgument = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="HTML file to write", dir_okay=False)] = Path("report.html"),
    store_url: StoreOption = None,
    metric: Annotated[str | None, typer.Option("--metric", "-m", help="rank by this metric (default: the campaign's objective)", show_default=False)] = None,
    direction: Annotated[str | None, typer.Option("--direction", "-d", help="maximize or minimize, or max, min (default: the objective's)", show_default=False)] = None,
    task: Annotated[str | None, typer.Option("--task", help="only evaluations of this task")] = None,
    figures: Annotated[Path | None, typer.Option("--figures", help="also write each plot as a standalone SVG into this folder", file_okay=False)] = None,
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
    if figures is not None:
        for name, text in extract_figures(html).items():
            write_atomic(figures / f"{name}.svg", text)
    typer.echo(f"wrote {out} ({len(html.encode()) / 1024:.0f} KiB): campaign {info.name}, {len(data.entries)} scored candidates, "
               f"{data.counts['failed']} failed, {data.counts['invalid']} invalid")


__all__ = ["extract_figures", "report_command", "write_atomic"]
