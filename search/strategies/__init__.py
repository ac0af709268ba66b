"""Search strategies: one small interface (`base.Strategy`), several implementations, one registry.

| name      | file                 | what it does                                                        |
|-----------|----------------------|---------------------------------------------------------------------|
| random    | random_search.py     | uniform samples from the space (the baseline)                       |
| evolution | evolution.py         | regularized evolution: tournament selection, mutation, crossover, aging |
| grid      | grid.py              | every design of the space once, in a fixed order                    |
| tpe       | optuna_samplers.py   | Optuna's TPE sampler (Tree-structured Parzen Estimator)             |
| nsga2     | optuna_samplers.py   | Optuna's NSGA-II sampler (genetic, multi-objective)                 |
| gp        | optuna_samplers.py   | Optuna's Gaussian-process sampler (Bayesian optimization)           |

`STRATEGIES` is the one list of names: the campaign file, the CLI and the benchmarks read it. A
strategy of your own needs no name: pass it to `hybridnas.run_campaign(..., strategy=...)`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from hybridnas.search.strategies.base import Observation, Proposal, Strategy
from hybridnas.search.strategies.evolution import RegularizedEvolution
from hybridnas.search.strategies.grid import GridSearch
from hybridnas.search.strategies.random_search import RandomSearch
from hybridnas.space import SearchSpace

#: build(space, seed, directions, settings) -> Strategy, where settings is the campaign's search section.
Builder = Callable[[SearchSpace, int, tuple[str, ...], Mapping[str, Any]], Strategy]


@dataclass(frozen=True)
class StrategyEntry:
    """A strategy a campaign file can name."""

    description: str  # one line for the docs and error messages
    build: Builder


def _optuna(sampler: str) -> Builder:
    def build(space: SearchSpace, seed: int, directions: tuple[str, ...], settings: Mapping[str, Any]) -> Strategy:
        from hybridnas.search.strategies.optuna_samplers import OptunaStrategy  # optuna is imported only when used

        return OptunaStrategy.from_settings(space, seed, directions, settings, sampler=sampler)

    return build


#: Every strategy a campaign file may name.
STRATEGIES: dict[str, StrategyEntry] = {
    "random": StrategyEntry("uniform samples from the space (the baseline)", RandomSearch.from_settings),
    "evolution": StrategyEntry(
        "regularized evolution: tournament selection, mutation, crossover, aging", RegularizedEvolution.from_settings
    ),
    "grid": StrategyEntry("every design of the space once, in a fixed order", GridSearch.from_settings),
    "tpe": StrategyEntry("Optuna TPE sampler (Tree-structured Parzen Estimator)", _optuna("tpe")),
    "nsga2": StrategyEntry("Optuna NSGA-II sampler (genetic, multi-objective)", _optuna("nsga2")),
    "gp": StrategyEntry("Optuna Gaussian-process sampler (Bayesian optimization)", _optuna("gp")),
}


def make_strategy(
    name: str,
    space: SearchSpace,
    seed: int,
    directions: tuple[str, ...] = ("maximize",),
    settings: Mapping[str, Any] | Any = None,
    *,
    storage: str | None = None,
    study_name: str | None = None,
    **more: Any,
) -> Strategy:
    """Build a registered strategy by name.

    `settings` is the campaign's search section (or a dict), `more` adds to it; each strategy takes
    the keys it knows and ignores the rest, a missing or None one taking its default:
      population      evolution: population size; nsga2: generation size (the first one is random) [8]
      tournament      evolution: candidates per tournament [3]
      crossover_prob  evolution and nsga2: chance a child comes from two parents [0.2; nsga2 0.9]
      n_startup       tpe and gp: random trials before the model takes over [10]
    With `storage` (an SQLAlchemy URL) the strategy is attached to it under `study_name`, as the
    controller attaches it to the campaign's store.
    """
    if name not in STRATEGIES:
        raise ValueError(f"search.strategy: {name!r} is not allowed; allowed: {', '.join(STRATEGIES)}")
    if settings is not None and not isinstance(settings, Mapping):
        settings = settings.model_dump() if hasattr(settings, "model_dump") else vars(settings)
    strategy = STRATEGIES[name].build(space, seed, tuple(directions), {**(settings or {}), **more})
    if storage is not None:
        strategy.attach(storage, study_name or f"hybridnas.{name}")
    return strategy


__all__ = [
    "STRATEGIES",
    "GridSearch",
    "Observation",
    "Proposal",
    "RandomSearch",
    "RegularizedEvolution",
    "Strategy",
    "StrategyEntry",
    "make_strategy",
]
