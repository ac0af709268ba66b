"""`hybridnas query ...`: leaderboard, Pareto front and lineage from a store, as a table, JSON or CSV.

Also the campaign printers (`campaign_list`, `campaign_show`) that the campaign commands reuse.
The CLI only reads: it opens the store read-only, so it never writes, never creates an empty
database by mistake, reads stores in folders the user may only read, and (in SQLite WAL mode) never
waits for a running campaign. A store that cannot be opened is one line, `error: --store: ...`, exit 2.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from enum import Enum
from typing import Annotated, Any, NoReturn

import typer
from rich import box
from rich.cells import cell_len
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from hybridnas.store.access import one_line
from hybridnas.store.db import Store
from hybridnas.store.models import CampaignInfo, CampaignNotFound, CandidateNotFound, StoreOpenError
from hybridnas.store.queries import ROW_KEYS, campaign_objectives, is_number, normalize_direction, primary_objective


class OutputFormat(str, Enum):
    table = "table"  # a rich table for people
    json = "json"  # a list of objects with stable keys
    csv = "csv"  # a header row, then one row per object


FORMATS = tuple(f.value for f in OutputFormat)
EDGE_KEYS = ("child_id", "parent_id", "operator", "depth")

query_app = typer.Typer(
    name="query",
    help="Query a hybridnas store: leaderboard, Pareto front, lineage.",
    no_args_is_help=True,
    add_completion=False,
)

StoreOption = Annotated[
    str | None,
    typer.Option("--store", envvar="HYBRIDNAS_STORE", help="SQLAlchemy URL or SQLite file [default: sqlite:///hybridnas.db]"),
]
FormatOption = Annotated[OutputFormat, typer.Option("--format", "-f", case_sensitive=False, help="table, json or csv")]
CampaignArgument = Annotated[str | None, typer.Argument(help="campaign name [default: the most recent]", show_default=False)]


# --- shared helpers (also used by the campaign commands) -------------------------------------------


def check_format(fmt: str | OutputFormat) -> OutputFormat:
    try:
        return OutputFormat(fmt.value if isinstance(fmt, OutputFormat) else str(fmt).lower())
    except ValueError:
        raise typer.BadParameter(f"{fmt!r} is not one of {', '.join(FORMATS)}", param_hint="'--format'") from None


def store_failure(error: StoreOpenError) -> NoReturn:
    """`error: --store: <why>` on one line of stderr, then exit 2: the --store given cannot be used."""
    Console(stderr=True).print(f"[bold red]error:[/] --store: {escape(one_line(str(error)))}", soft_wrap=True, highlight=False)
    raise typer.Exit(2)


def open_store(url: str | None, *, write: bool = False) -> Store:
    """Open an existing store: read-only unless `write` (then a store this user may only read is refused).

    Any failure to open (missing, unreachable, corrupt, read-only for a writer, ...) is `store_failure`.
    """
    try:
        return Store.open(url, create=False, readonly=not write)
    except StoreOpenError as e:
        store_failure(e)


def resolve_campaign(store: Store, name: str | None) -> CampaignInfo:
    try:
        return store.get_campaign(name)
    except CampaignNotFound as e:
        raise typer.BadParameter(str(e), param_hint="'CAMPAIGN'") from None


def _console() -> Console:
    # Piped or captured output has no terminal width; a wide virtual one keeps table cells unfolded.
    console = Console()
    return console if console.is_terminal else Console(width=240)


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (dict, list)):
        return json.dumps(v, separators=(",", ":"))
    return str(v)


def _csv_cell(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, (dict, list)):
        return json.dumps(v, separators=(",", ":"))
    return v


def _columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    cols: dict[str, None] = {}
    for r in rows:
        cols.update(dict.fromkeys(r))
    return list(cols)


def emit(
    rows: Sequence[dict[str, Any]],
    fmt: str | OutputFormat,
    title: str | None = None,
    columns: Sequence[str] = (),
    table_columns: Sequence[str] | None = None,
) -> None:
    """Print rows (dicts with the same leading keys) as a rich table, a JSON list, or CSV.

    `columns` are the header when there are no rows (so an empty CSV still names its fields);
    `table_columns`, when given, narrows a terminal table to those (that are present), in that order.
    """
    fmt = check_format(fmt)
    cols = _columns(rows) or list(columns)
    if fmt is OutputFormat.table and table_columns is not None:
        present = set(cols)
        cols = [c for c in dict.fromkeys(table_columns) if c in present]
    if fmt is OutputFormat.json:
        typer.echo(json.dumps(list(rows), indent=2, default=str))
    elif fmt is OutputFormat.csv:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: _csv_cell(r.get(k)) for k in cols})
        typer.echo(buf.getvalue(), nl=False)
    else:
        table = Table(title=title)
        for c in cols:
            table.add_column(c, overflow="fold")
        for r in rows:
            table.add_row(*(_cell(r.get(c)) for c in cols))
        _console().print(table)


# --- the compact leaderboard table ----------------------------------------------------------------


def human_bytes(n: float) -> str:
    """12595 -> '12.3 KiB'."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _decimals(v: float) -> int:
    # Three significant digits for the value; its spread gets the same decimals so the two line up.
    return 3 if v == 0 else max(0, min(4, 2 - math.floor(math.log10(abs(v)))))


def with_spread(v: Any, std: Any = None, *, as_bytes: bool = False) -> str:
    """0.9812, 0.0041 -> '0.981 ± 0.004'; a missing spread (one seed) shows the value alone."""
    if not is_number(v):
        return _cell(v)
    if as_bytes:
        return human_bytes(v) + (f" ± {human_bytes(std)}" if is_number(std) else "")
    d = _decimals(v)
    return f"{v:.{d}f}" + (f" ± {std:.{d}f}" if is_number(std) else "")


def _spreads(store: Store, campaign_id: int, metrics: Sequence[str], rows: Sequence[dict[str, Any]], task: str | None) -> dict[str, dict[int, Any]]:
    """Seed spread of each metric per candidate: in the rows for the ranked metric, else asked of the store."""
    out: dict[str, dict[int, Any]] = {}
    for m in metrics:
        if any(f"{m}_std" in r for r in rows):
            out[m] = {r["candidate_id"]: r.get(f"{m}_std") for r in rows}
            continue
        try:
            board = store.leaderboard(campaign_id, metric=m, task=task)
        except ValueError:  # never recorded
            board = []
        out[m] = {r["candidate_id"]: r.get(f"{m}_std") for r in board}
    return out


STATE_BYTES = "cost_state_bytes"


def leaderboard_table(
    rows: Sequence[dict[str, Any]],
    objectives: Sequence[tuple[str, str]],
    spreads: Mapping[str, Mapping[int, Any]] | None = None,
    title: str | None = None,
    width: int | None = None,
) -> Table:
    """What a person needs from a leaderboard, narrow enough for a 120-column terminal.

    Rank, candidate id, design label, each objective as 'mean ± seed spread' (↑ maximize, ↓ minimize),
    the number of seeds, and the recurrent state or KV bytes; `--all`, JSON and CSV show everything.
    Numbers never wrap or shrink; given the terminal `width`, the design label takes what is left and
    a longer one is cut with an ellipsis.
    """
    spreads = spreads or {}
    metrics = list(dict.fromkeys(m for m, _ in objectives))
    arrows = {m: "↑" if d == "maximize" else "↓" for m, d in reversed(objectives)}
    state = STATE_BYTES not in metrics and any(is_number(r.get(STATE_BYTES)) for r in rows)
    headers = ["#", "id", "design", *(f"{m} {arrows[m]}" for m in metrics), "seeds", *(["state"] if state else [])]
    body = []
    for r in rows:
        cid = r.get("candidate_id")
        cells = [_cell(r.get("rank")), _cell(cid), _cell(r.get("label"))]
        for m in metrics:
            std = spreads.get(m, {}).get(cid) if m in spreads else r.get(f"{m}_std")
            cells.append(with_spread(r.get(m), std, as_bytes=m.endswith("bytes")))
        cells.append(_cell(r.get("n_seeds")))
        if state:
            cells.append(human_bytes(r[STATE_BYTES]) if is_number(r.get(STATE_BYTES)) else "-")
        body.append(cells)
    widths = [max([cell_len(h), *(cell_len(c[i]) for c in body)]) for i, h in enumerate(headers)]
    design_max = None
    if width is not None:  # one space of padding each side of a column but the outer two, one between columns
        design_max = max(12, width - (sum(widths) - widths[2]) - 3 * len(headers) + 3)
    # No outer frame: those four columns are what lets a full label like
    # 'gated_deltanet×3+attention×1 d64 LLLA gate:swish conv' fit in 120 with two objectives.
    table = Table(
        title=title,
        min_width=min(len(title) + 4, width or len(title) + 4) if title else None,
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
    )
    for i, h in enumerate(headers):
        if i == 2:
            table.add_column(h, no_wrap=True, overflow="ellipsis", max_width=design_max)
        else:
            table.add_column(h, justify="right", no_wrap=True, min_width=widths[i])
    for cells in body:
        table.add_row(*cells)
    return table


def _board_objectives(info: CampaignInfo, metric: str, direction: str) -> list[tuple[str, str]]:
    """The ranked metric first, then the campaign's other objectives."""
    return [(metric, direction), *((m, d) for m, d in campaign_objectives(info.config) if m != metric)]


def _emit_board(
    store: Store,
    info: CampaignInfo,
    rows: list[dict[str, Any]],
    objectives: list[tuple[str, str]],
    title: str,
    fmt: str | OutputFormat,
    task: str | None = None,
    all_columns: bool = False,
) -> None:
    """Ranked rows (leaderboard, Pareto front): the table a person reads, each objective as mean ±
    seed spread; with `all_columns`, JSON or CSV, every column."""
    if check_format(fmt) is OutputFormat.table and not all_columns:
        spreads = _spreads(store, info.id, [m for m, _ in objectives], rows, task)
        console = _console()
        console.print(leaderboard_table(rows, objectives, spreads, title=title, width=console.width))
        return
    emit(rows, fmt, title=title, columns=ROW_KEYS)


def _best_text(info: CampaignInfo) -> str:
    b = info.best
    if not b:
        return "-"
    return f"#{b['candidate_id']} {b['label']}  {info.metric}={_cell(b.get(info.metric))} @ {b['fidelity']} steps"


def campaign_list(store: Store, fmt: str | OutputFormat = OutputFormat.table) -> None:
    """Every campaign, oldest first (JSON/CSV: CampaignInfo fields without the config)."""
    fmt = check_format(fmt)
    infos = store.list_campaigns()
    if fmt is not OutputFormat.table:
        emit([i.to_dict(with_config=False) for i in infos], fmt)
        return
    rows = [
        {
            "name": i.name,
            "id": i.id,
            "status": i.status,
            "seed": i.seed,
            "created": i.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            "candidates": i.n_candidates,
            "done": i.n_done,
            "failed": i.n_failed,
            "pending": i.n_queued + i.n_running,
            "best": _best_text(i),
        }
        for i in infos
    ]
    if not rows:
        typer.echo(f"no campaigns in {store.display_url}")
        return
    emit(rows, fmt, title=f"campaigns in {store.display_url}")


def campaign_show(store: Store, name: str | None, fmt: str | OutputFormat = OutputFormat.table) -> None:
    """One campaign (the most recent when `name` is None): status, counts, best, and its top 5."""
    fmt = check_format(fmt)
    info = resolve_campaign(store, name)
    if fmt is OutputFormat.json:
        typer.echo(json.dumps(info.to_dict(), indent=2, default=str))
        return
    if fmt is OutputFormat.csv:
        emit([info.to_dict()], fmt)
        return
    table = Table(title=f"campaign {info.name}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    for k, v in [
        ("id", info.id),
        ("status", info.status),
        ("seed", info.seed),
        ("created", info.created_at.isoformat(timespec="seconds")),
        ("updated", info.updated_at.isoformat(timespec="seconds")),
        ("finished", info.finished_at.isoformat(timespec="seconds") if info.finished_at else None),
        ("candidates", info.n_candidates),
        ("evaluations", f"{info.n_evaluations} (queued {info.n_queued}, running {info.n_running}, done {info.n_done}, "
                        f"failed {info.n_failed}, invalid {info.n_invalid})"),
        ("objective", f"{info.metric} ({info.direction})"),
        ("best", _best_text(info)),
        ("winner", store.winner(info.id, info.metric, info.direction)["text"] if info.best is not None else None),
        ("controller", info.lease_owner or "none running"),
        ("stop requested", info.stop_requested),
    ]:
        table.add_row(k, _cell(v))
    _console().print(table)
    if info.best is not None:  # the objective metric has been recorded
        top = store.leaderboard(info.id, metric=info.metric, direction=info.direction, limit=5)
        objectives = _board_objectives(info, info.metric, info.direction)
        _emit_board(store, info, top, objectives, f"top {len(top)} by {info.metric}", OutputFormat.table)


def print_leaderboard(
    store: Store,
    campaign: str | None,
    *,
    metric: str | None = None,
    direction: str | None = None,
    limit: int | None = None,
    fmt: str | OutputFormat = OutputFormat.table,
    task: str | None = None,
    all_columns: bool = False,
) -> None:
    """The leaderboard of a campaign (the most recent when None) in `fmt`; bad input is exit 2.

    `metric` defaults to the campaign's first objective; `direction` to that of the campaign's
    objective on `metric`, else maximize."""
    fmt = check_format(fmt)
    info = resolve_campaign(store, campaign)
    if metric is None:
        metric = primary_objective(info.config)[0]
    if direction is None:
        direction = next((d for m, d in campaign_objectives(info.config) if m == metric), None)
    try:
        direction = normalize_direction(direction or "maximize")
    except ValueError:
        raise typer.BadParameter(f"{direction!r} is not one of maximize, minimize, max, min", param_hint="'--direction'") from None
    try:
        rows = store.leaderboard(info.id, metric=metric, direction=direction, limit=limit, task=task)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="'--metric'") from None
    title = f"{info.name}: leaderboard by {metric} ({direction})"
    _emit_board(store, info, rows, _board_objectives(info, metric, direction), title, fmt, task, all_columns)


# --- query commands ------------------------------------------------------------------------------


@query_app.command("leaderboard")
def leaderboard_cmd(
    campaign: CampaignArgument = None,
    metric: Annotated[str | None, typer.Option("--metric", "-m", help="metric to rank by [default: the campaign's first objective]")] = None,
    direction: Annotated[str | None, typer.Option("--direction", "-d", help="maximize or minimize (max, min) [default: the objective's, else maximize]")] = None,
    limit: Annotated[int | None, typer.Option("--limit", "-n", min=1, help="show only the top N")] = None,
    task: Annotated[str | None, typer.Option("--task", help="only evaluations of this task")] = None,
    fmt: FormatOption = OutputFormat.table,
    store_url: StoreOption = None,
    all_columns: Annotated[bool, typer.Option("--all", "--all-columns", help="table: every column and metric, not the usual few")] = False,
) -> None:
    """Candidates ranked by a metric at their highest trained fidelity (mean ± spread over seeds)."""
    with open_store(store_url) as store:
        print_leaderboard(
            store, campaign, metric=metric, direction=direction, limit=limit, fmt=fmt, task=task, all_columns=all_columns
        )


def parse_objective(text: str) -> tuple[str, str]:
    """'accuracy:max' -> ('accuracy', 'maximize')."""
    metric, sep, direction = text.rpartition(":")
    if not sep or not metric:
        raise typer.BadParameter(f"{text!r} must be METRIC:DIRECTION, e.g. accuracy:max (directions: max, min, maximize, minimize)", param_hint="'--objective'")
    try:
        return metric, normalize_direction(direction)
    except ValueError:
        raise typer.BadParameter(f"{text!r}: direction {direction!r} is not one of max, min, maximize, minimize", param_hint="'--objective'") from None


@query_app.command("pareto")
def pareto_cmd(
    campaign: CampaignArgument = None,
    objective: Annotated[
        list[str] | None, typer.Option("--objective", "-o", help="METRIC:max|min; repeat for each objective", show_default=False)
    ] = None,
    task: Annotated[str | None, typer.Option("--task", help="only evaluations of this task")] = None,
    fmt: FormatOption = OutputFormat.table,
    store_url: StoreOption = None,
    all_columns: Annotated[bool, typer.Option("--all", "--all-columns", help="table: every column and metric, not the usual few")] = False,
) -> None:
    """The non-dominated candidates under one or more objectives (repeat --objective; default: the campaign's objectives)."""
    objs = [parse_objective(o) for o in objective or ()]
    with open_store(store_url) as store:
        info = resolve_campaign(store, campaign)
        if not objs:
            objs = campaign_objectives(info.config)
        try:
            rows = store.pareto(info.id, objs, task=task)
        except ValueError as e:
            raise typer.BadParameter(str(e), param_hint="'--objective'") from None
        title = f"{info.name}: Pareto front of " + ", ".join(f"{m} ({d})" for m, d in objs)
        _emit_board(store, info, rows, objs, title, fmt, task, all_columns)


#: Columns of the evaluations table: who ran what, where, and how it ended.
EVALUATION_COLUMNS = (
    "id", "candidate_id", "label", "origin", "fidelity", "seed", "status", "accuracy", "host", "worker", "device", "wall_time_s",
)


@query_app.command("evaluations")
def evaluations_cmd(
    campaign: CampaignArgument = None,
    status: Annotated[str | None, typer.Option("--status", help="only queued | running | done | failed | invalid")] = None,
    fmt: FormatOption = OutputFormat.table,
    store_url: StoreOption = None,
) -> None:
    """Every evaluation of a campaign: candidate, fidelity, seed, status, and the host, worker and
    device that ran it (the error for failed ones in json/csv)."""
    allowed = ("queued", "running", "done", "failed", "invalid")
    if status is not None and status not in allowed:
        raise typer.BadParameter(f"{status!r} is not one of {', '.join(allowed)}", param_hint="'--status'")
    with open_store(store_url) as store:
        info = resolve_campaign(store, campaign)
        rows = []
        for e in store.evaluations(info.id):
            if status is not None and e.status != status:
                continue
            rows.append({
                "id": e.id, "candidate_id": e.candidate_id, "label": e.spec.describe(), "origin": e.origin,
                "fidelity": e.fidelity, "seed": e.seed, "status": e.status, "accuracy": (e.metrics or {}).get("accuracy"),
                "host": e.host, "worker": e.worker, "device": e.device, "wall_time_s": e.wall_time_s, "error": e.error,
            })
        emit(rows, fmt, title=f"{info.name}: evaluations", columns=(*EVALUATION_COLUMNS, "error"), table_columns=EVALUATION_COLUMNS)


@query_app.command("lineage")
def lineage_cmd(
    candidate_id: Annotated[int, typer.Argument(help="candidate id (see the leaderboard)")],
    fmt: FormatOption = OutputFormat.table,
    store_url: StoreOption = None,
) -> None:
    """Every ancestor edge of a candidate: child <- parent by operator, nearest first."""
    with open_store(store_url) as store:
        try:
            edges = store.lineage(candidate_id)
        except CandidateNotFound as e:
            raise typer.BadParameter(str(e), param_hint="'CANDIDATE_ID'") from None
        rows = [e.to_dict() for e in edges]
        if not rows and check_format(fmt) is OutputFormat.table:
            typer.echo(f"candidate {candidate_id} has no recorded parents")
            return
        emit(rows, fmt, title=f"lineage of candidate {candidate_id}", columns=EDGE_KEYS)


__all__ = [
    "query_app",
    "campaign_list",
    "campaign_show",
    "print_leaderboard",
    "leaderboard_table",
    "emit",
    "open_store",
    "store_failure",
    "resolve_campaign",
    "check_format",
    "OutputFormat",
    "ROW_KEYS",
]
