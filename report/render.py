"""ReportData -> one self-contained HTML page (jinja2, autoescaped; plots as inline SVG).

The page references nothing outside itself: no scripts, no stylesheets, no fonts, no images, so it
opens offline and can be mailed or archived as one file.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import jinja2
from markupsafe import Markup

from hybridnas.report import svg
from hybridnas.report.data import ACCURACY, DECODE, PREFILL, STATE_BYTES, Entry, Front, ReportData
from hybridnas.store.queries import is_number

#: Config sections summarized in the header, in this order (the full config is in a fold below).
SUMMARY_SECTIONS: tuple[str, ...] = ("task", "search", "training", "execution", "constraints")


# --- number formatting -----------------------------------------------------------------------------


def fmt_num(v: Any, digits: int = 4) -> str:
    """A metric value for a table cell; '-' when absent."""
    if not is_number(v):
        return "-" if v is None else str(v)
    if isinstance(v, int) or (abs(v) >= 1e4 and v == int(v)):
        return f"{int(v):,}"
    return f"{v:.{digits}g}"


def fmt_count(v: Any) -> str:
    """Parameter counts and the like: 1.23M."""
    return svg.short(float(v)) if is_number(v) else "-"


def fmt_bytes(v: Any) -> str:
    """Byte sizes in binary units: 12.0 KiB."""
    if not is_number(v):
        return "-"
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(v) >= scale:
            return f"{v / scale:.3g} {unit}"
    return f"{int(v)} B"


def fmt_pm(entry: Entry, metric: str) -> str:
    """mean ± std over seeds (std only with two seeds or more)."""
    mean = entry.get(metric)
    if mean is None:
        return "-"
    std = entry.std.get(metric)
    return f"{mean:.4g} ± {std:.2g}" if std is not None else f"{mean:.4g}"


def _compact(value: Any) -> str:
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={_compact(v)}" for k, v in value.items() if v is not None)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_compact(v) for v in value) + "]"
    return fmt_num(value) if isinstance(value, float) else str(value)


def config_summary(config: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(section, 'key=value, ...') for the sections a reader checks first."""
    out = []
    for section in SUMMARY_SECTIONS:
        value = config.get(section)
        if value not in (None, {}, []):
            out.append((section, _compact(value)))
    space = config.get("space")
    if isinstance(space, Mapping) and space:
        out.append(("space", _compact({k: v for k, v in space.items() if not isinstance(v, (Mapping, list))}) or
                    ", ".join(space)))
    return out


# --- plots -----------------------------------------------------------------------------------------


def _tip(e: Entry, *parts: str) -> str:
    return f"#{e.candidate_id} {e.label} (rank {e.rank}): " + ", ".join(parts)


def front_plot(front: Front, kind: str) -> Markup | None:
    """accuracy vs state bytes (kind 'state') or vs latency in us/token (kind 'latency')."""
    if not front.points:
        return None
    if kind == "state":
        x_label, title = "state / KV-cache bytes at context length (lower is better)", "Pareto front: accuracy vs state bytes"
        fx = fmt_bytes
    else:
        x_label, title = "prefill latency, microseconds per token (lower is better)", "Pareto front: accuracy vs measured latency"
        fx = lambda v: f"{v:.3g} us/token"  # noqa: E731
    pts = [
        svg.Point(x, y, _tip(e, f"{ACCURACY} {fmt_pm(e, ACCURACY)}", fx(x), "on the front" if e.candidate_id in front.front_ids
                             else "dominated"), e.candidate_id, e.candidate_id in front.front_ids)
        for e, x, y in front.points
    ]
    tick = fmt_bytes if kind == "state" else svg.short
    return svg.scatter(pts, title=title, x_label=x_label, y_label=f"{ACCURACY} (higher is better)", css=f"pareto pareto-{kind}",
                       fmt_x=tick, bytes_x=kind == "state")


def progress_plot(p: Any) -> Markup | None:
    if not p.values:
        return None
    better = "higher" if p.direction == "maximize" else "lower"
    in_bytes = p.metric.endswith("bytes")  # cost_state_bytes, peak_memory_bytes
    return svg.progress(p.values, p.best, title=f"best {p.metric} so far ({better} is better) over evaluation order",
                        x_label="evaluations, in the order they finished", y_label=f"{p.metric} (line: best so far)",
                        fmt_y=fmt_bytes if in_bytes else svg.short, bytes_y=in_bytes)


def group_plot(data: ReportData, attr: str) -> Markup | None:
    groups = data.by_group(attr)
    if not groups:
        return None
    what = "linear-to-full ratio (linear layers per full layer)" if attr == "ratio" else "linear mixer"
    series = [(name, [(e.get(ACCURACY), _tip(e, f"{ACCURACY} {fmt_pm(e, ACCURACY)}", f"{attr} {name}")) for e in es])
              for name, es in groups]
    return svg.strip(series, title=f"{ACCURACY} by {what}", x_label=what, y_label=f"{ACCURACY} (line: group mean)",
                     css=f"by-{attr}")


def lineage_plot(data: ReportData) -> Markup | None:
    lin = data.lineage
    if lin is None:
        return None
    by_id = {e.candidate_id: e for e in data.entries}
    nodes = []
    for cid, depth in lin.depth.items():
        e = by_id.get(cid)
        score = fmt_pm(e, data.primary.metric) if e else "not scored"
        label = lin.labels.get(cid, "?")
        nodes.append(svg.TreeNode(
            cid, depth,
            (f"#{cid} · generation {lin.generation.get(cid, 0)}", label if len(label) <= 36 else label[:35] + "…",
             f"{data.primary.metric} {score}"),
            f"#{cid} {label}: {data.primary.metric} {score}",
        ))
    return svg.lineage_tree(nodes, lin.edges, title=f"ancestry of candidate #{lin.candidate_id}")


def group_rows(groups: list[tuple[str, list[Entry]]]) -> list[tuple[str, int, float, Entry]]:
    """(group, candidates, mean accuracy, best candidate) for the table under each group plot."""
    out = []
    for name, es in groups:
        values = [e.get(ACCURACY) for e in es]
        best = max(es, key=lambda e: (e.get(ACCURACY), -e.candidate_id))
        out.append((name, len(es), sum(values) / len(values), best))
    return out


# --- the page --------------------------------------------------------------------------------------


@functools.cache
def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("hybridnas.report", "templates"),
        undefined=jinja2.StrictUndefined,
        autoescape=True,  # labels, errors and config values come from the store: never raw HTML
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(num=fmt_num, count=fmt_count, bytes=fmt_bytes, pm=fmt_pm)
    return env


def _version() -> str:
    try:
        return version("hybridnas")
    except PackageNotFoundError:
        return "unknown"


def render_html(data: ReportData, now: datetime | None = None) -> str:
    """The report page for `data` as one HTML string."""
    c = data.campaign
    has = lambda m: any(e.get(m) is not None for e in data.entries)  # noqa: E731
    winner_id = data.winner.get("candidate_id")
    front_state, front_latency = data.fronts
    page = _env().get_template("report.html.j2").render(
        data=data,
        c=c,
        config_summary=config_summary(c.config or {}),
        config_json=json.dumps(c.config or {}, indent=2, sort_keys=True, default=str),
        objectives=data.objectives,
        primary=data.primary,
        entries=data.entries,
        winner=data.winner,
        winner_id=winner_id,
        cols={"loss": has("loss"), "params": has("params"), "state": has(STATE_BYTES), "prefill": has(PREFILL),
              "decode": has(DECODE)},
        extra_columns=data.extra_columns,
        ACCURACY=ACCURACY,
        fronts=[
            ("state", "accuracy vs state bytes", front_state, front_plot(front_state, "state")),
            ("latency", "accuracy vs measured latency", front_latency, front_plot(front_latency, "latency")),
        ],
        progress=[(p, progress_plot(p)) for p in data.progress],
        lineage=data.lineage,
        lineage_svg=lineage_plot(data),
        ratio_plot=group_plot(data, "ratio"),
        mixer_plot=group_plot(data, "mixer"),
        ratio_groups=group_rows(data.by_group("ratio")),
        mixer_groups=group_rows(data.by_group("mixer")),
        problems=data.problems,
        generated=(now or datetime.now(timezone.utc)).strftime("%Y-%m-%d %H:%M:%S UTC"),
        version=_version(),
    )
    return page


__all__ = ["render_html", "config_summary", "fmt_num", "fmt_bytes", "fmt_count", "fmt_pm", "front_plot"]
