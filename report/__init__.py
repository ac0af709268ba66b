"""hybridnas.report: one self-contained HTML page per campaign (no scripts, fonts or links to fetch).

    with Store.open(url, create=False) as store:
        data = collect(store, store.get_campaign("demo"))
    Path("report.html").write_text(render_html(data))

or from the shell: `hybridnas report demo --out report.html`.
"""

from __future__ import annotations

from hybridnas.report.data import Entry, Objective, ReportData, collect, hybrid_shape, objectives_from_config
from hybridnas.report.render import render_html

__all__ = [
    "collect",
    "render_html",
    "ReportData",
    "Entry",
    "Objective",
    "objectives_from_config",
    "hybrid_shape",
]
