"""Run and read campaigns from Python: the same machinery as `hybridnas campaign launch`.

    import hybridnas

    run = hybridnas.run_campaign("examples/quickstart.yaml", store="sqlite:///runs.db", executor="inprocess")
    run.leaderboard()[:3]          # rows as dicts, ranked by the first objective
    run.pareto()                   # the campaign's objectives
    run.winner()["text"]           # the noise-aware verdict
    run.to_dataframe()             # pandas, with `pip install "hybridnas[pandas]"`
    run.export("my_model/")        # the #1 as a standalone module

`open_campaign(name, store=...)` gives the same handle for a campaign already in a store.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from hybridnas.search.campaign import Campaign, check_size, load_campaign, parse_campaign
from hybridnas.search.controller import Controller, Event, RunSummary
from hybridnas.search.scheduler import Scheduler
from hybridnas.search.strategies import Strategy
from hybridnas.store import Store
from hybridnas.store.queries import campaign_objectives
from hybridnas.workers import Executor, make_executor

__all__ = ["CampaignRun", "executor_for", "open_campaign", "run_campaign"]


def _as_campaign(
    config: str | os.PathLike[str] | Mapping[str, Any] | Campaign, name: str | None, size_check: bool
) -> Campaign:
    if isinstance(config, (str, os.PathLike)):
        return load_campaign(config, size_check=size_check, name=name)
    if isinstance(config, Campaign):
        campaign = config if name is None else parse_campaign(config.config(), name=name)
    elif isinstance(config, Mapping):
        campaign = parse_campaign(dict(config), "(dict)", name=name)
    else:
        raise TypeError(f"config_or_path: got {type(config).__name__}, expected a path, a dict or a Campaign")
    if size_check:
        check_size(campaign)
    return campaign


def _as_store(store: Store | str | None) -> tuple[Store, bool]:
    """(the store, whether this module opened it and must close it)."""
    if isinstance(store, Store):
        return store, False
    return Store.open(store), True


def executor_for(
    campaign: Campaign, kind: str | None = None, workers: int | None = None, address: str | None = None
) -> Executor:
    """The executor the campaign file asks for, with `kind`, `workers` and `address` overriding it."""
    ex = campaign.file.execution
    return make_executor(
        kind or ex.executor,
        workers=workers or ex.workers,
        address=address if address is not None else ex.address,
        cpus_per_worker=ex.cpus_per_worker,
        gpus_per_worker=ex.gpus_per_worker,
        max_retries=ex.max_retries,
        replay_table=ex.replay_table,
    )


def _as_strategy(strategy: Strategy | type[Strategy] | None, campaign: Campaign) -> Strategy | None:
    if strategy is None or isinstance(strategy, Strategy):
        return strategy
    if isinstance(strategy, type) and issubclass(strategy, Strategy):
        directions = tuple(o.direction for o in campaign.file.objectives)
        return strategy(campaign.space, campaign.file.seed, directions)
    raise TypeError(f"strategy: got {strategy!r}, expected a Strategy instance or subclass")


class CampaignRun:
    """A campaign in a store: its results, ranked, and its winner's export."""

    def __init__(self, store: Store, name: str, summary: RunSummary | None = None, owns_store: bool = False) -> None:
        self.store = store
        info = store.get_campaign(name)
        self.name = info.name
        self.id = info.id
        self.config = info.config
        self.summary = summary  # what the run that made this handle did (None when opened)
        self._owns_store = owns_store

    @property
    def objectives(self) -> list[tuple[str, str]]:
        """(metric, direction) of every objective, the one that ranks first."""
        return campaign_objectives(self.config)

    @property
    def status(self) -> str:
        return self.store.get_campaign_by_id(self.id).status

    def leaderboard(self, metric: str | None = None, direction: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """Candidates ranked by `metric` (default: the first objective) at their highest fidelity, mean over seeds."""
        m, d = self.objectives[0]
        return self.store.leaderboard(self.id, metric=metric or m, direction=direction or (d if metric is None else "maximize"), limit=limit)

    def pareto(self, objectives: Sequence[tuple[str, str]] | None = None) -> list[dict[str, Any]]:
        """The non-dominated candidates under `objectives` (default: the campaign's)."""
        return self.store.pareto(self.id, list(objectives or self.objectives))

    def winner(self) -> dict[str, Any]:
        """The verdict on #1 against #2 by the first objective: a winner, a tie within the seed spread, or unknown."""
        m, d = self.objectives[0]
        return self.store.winner(self.id, m, d)

    def to_dataframe(self) -> Any:
        """The leaderboard as a pandas DataFrame (one row per candidate)."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError('to_dataframe needs pandas: pip install "hybridnas[pandas]"') from None
        return pd.DataFrame(self.leaderboard())

    def export(self, out_dir: str | os.PathLike[str], candidate_id: int | None = None, name: str | None = None) -> Path:
        """Write candidate `candidate_id` (default: the leaderboard's #1) as a standalone module folder."""
        from hybridnas.search.export import export_candidate

        if candidate_id is None:
            board = self.leaderboard(limit=1)
            if not board:
                raise LookupError(f"campaign {self.name!r} has no finished candidate to export")
            candidate_id = board[0]["candidate_id"]
        return export_candidate(self.store, candidate_id, out_dir, name)

    def close(self) -> None:
        """Close the store if this handle opened it."""
        if self._owns_store:
            self.store.close()

    def __enter__(self) -> CampaignRun:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"CampaignRun(name={self.name!r}, id={self.id}, store={self.store.display_url!r})"


def run_campaign(
    config_or_path: str | os.PathLike[str] | Mapping[str, Any] | Campaign,
    *,
    store: Store | str | None = None,
    executor: Executor | str | None = None,
    strategy: Strategy | type[Strategy] | None = None,
    scheduler: Scheduler | None = None,
    name: str | None = None,
    resume: bool = False,
    on_event: Callable[[Event], None] | None = None,
    size_check: bool = True,
) -> CampaignRun:
    """Validate a campaign (a YAML path, a dict as in the file, or a `Campaign`), create it in `store`
    (a `Store`, a URL, or None for the default `sqlite:///hybridnas.db`) and run it to its budget.

    `executor` is an `Executor`, a kind ("ray", "inprocess", "replay") or None for the file's.
    `strategy` (an instance or a `Strategy` subclass, built with the campaign's space, seed and
    objective directions) and `scheduler` replace what the file names. A campaign of the same name
    already in the store is an error unless `resume`, which continues it. `size_check` refuses a
    campaign whose evaluation would not fit this machine's memory (as the CLI's --no-size-check
    turns off). Returns a `CampaignRun`.
    """
    campaign = _as_campaign(config_or_path, name, size_check)
    st, owns_store = _as_store(store)
    try:
        if st.campaign_exists(campaign.name):
            if not resume:
                raise ValueError(f"name: campaign {campaign.name!r} already exists in {st.display_url}; pass resume=True or another name")
            info = st.get_campaign(campaign.name)
            campaign, campaign_id = parse_campaign(info.config, f"(stored config of {info.name})"), info.id
        else:
            campaign_id = st.create_campaign(campaign.name, campaign.config(), campaign.file.seed)
        ex = executor if isinstance(executor, Executor) else executor_for(campaign, executor)
        controller = Controller(
            st, campaign, campaign_id, ex, on_event, strategy=_as_strategy(strategy, campaign), scheduler=scheduler
        )
        try:
            summary = controller.run()
        finally:
            if not isinstance(executor, Executor):
                ex.close()  # made here: closed here; a caller's executor stays theirs
        return CampaignRun(st, campaign.name, summary, owns_store)
    except BaseException:
        if owns_store:
            st.close()
        raise


def open_campaign(name: str | None = None, *, store: Store | str | None = None) -> CampaignRun:
    """A handle on a campaign already in `store` (default: its most recent one)."""
    st, owns_store = (store, False) if isinstance(store, Store) else (Store.open(store, create=False), True)
    try:
        return CampaignRun(st, st.get_campaign(name).name, None, owns_store)
    except BaseException:
        if owns_store:
            st.close()
        raise
