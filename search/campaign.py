"""The campaign file: one YAML that says what to search, on which task, how to train, and where to run.

Validated with pydantic (`extra="forbid"`, so a typo is an error, not a silently ignored key) before
anything is written to the store. `load_campaign` returns the validated file and the task and search
space it builds; every problem comes back as `field.path: message` lines in `CampaignFileError`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from hybridnas.space import SearchSpace, SpaceFile, format_validation_error
from hybridnas.workers.trainer import TrainConfig

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class CampaignFileError(ValueError):
    """The campaign file is invalid; `problems` holds one `field: message` line each."""

    def __init__(self, problems: list[str], source: str = "") -> None:
        self.problems = problems
        head = f"invalid campaign file {source}" if source else "invalid campaign file"
        super().__init__(head + ":\n" + "\n".join(f"  {p}" for p in problems))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


#: Metrics the analytic cost model gives before training: bounds on them reject a design up front.
ANALYTIC_METRICS = ("cost_params", "cost_flops_per_token", "cost_state_bytes")


class SuccessiveHalvingSection(_Strict):
    """Asynchronous successive halving (ASHA): train short, promote the best 1/eta to eta-times more steps."""

    eta: int = Field(default=3, ge=2)  # promote the top 1/eta of each rung; each rung trains eta times longer
    rungs: int = Field(default=3, ge=2)  # fidelities training.steps / eta^(rungs-1), ..., training.steps


class ReevaluateSection(_Strict):
    """Noise-aware ranking: re-train the final top-k with extra seeds, so a lead can be told from noise."""

    top_k: int = Field(default=3, ge=1)  # how many of the best candidates get extra seeds
    seeds: int = Field(default=2, ge=1)  # extra seeds each (seed+1, seed+2, ...), at its highest fidelity


class SearchSection(_Strict):
    """Which strategy proposes candidates, and how many it may propose."""

    strategy: str = "evolution"  # a name in hybridnas.search.strategies.STRATEGIES
    budget: int = Field(default=16, ge=1)  # distinct designs to evaluate (promotions and extra seeds come on top)
    population: int = Field(default=8, ge=2)  # evolution: population size (oldest dies first); nsga2: generation size
    tournament: int = Field(default=3, ge=1)  # evolution: candidates per tournament
    crossover_prob: float | None = Field(default=None, ge=0, le=1)  # evolution (0.2) and nsga2 (0.9): crossover chance
    n_startup: int = Field(default=10, ge=0)  # tpe, gp: random designs before the model takes over
    successive_halving: SuccessiveHalvingSection | None = None  # multi-fidelity; off = every design at training.steps
    reevaluate: ReevaluateSection | None = None  # extra seeds for the final top-k; off = one seed each

    @field_validator("strategy")
    @classmethod
    def _strategy(cls, v: str) -> str:
        from hybridnas.search.strategies import STRATEGIES

        if v not in STRATEGIES:
            raise ValueError(f"{v!r} is not allowed; allowed: {', '.join(STRATEGIES)}")
        return v


class ExecutionSection(_Strict):
    """Where evaluations run."""

    executor: Literal["ray", "inprocess", "replay"] = "ray"  # ray: local embedded cluster, or `address`
    workers: int = Field(default=2, ge=1)  # evaluations in flight at once
    address: str | None = None  # join an existing Ray cluster instead of starting one
    cpus_per_worker: int = Field(default=1, ge=1)  # torch threads per worker
    gpus_per_worker: float = Field(default=0, ge=0)  # GPUs requested per worker
    timeout_s: float | None = Field(default=900, gt=0)  # per-evaluation limit; exceeded -> failed
    max_retries: int = Field(default=2, ge=0)  # ray: re-runs of an evaluation whose worker process died
    replay_table: str | None = None  # replay: a tabular benchmark (benchmarks/hybridbench) answering evaluations

    @model_validator(mode="after")
    def _replay_needs_table(self) -> ExecutionSection:
        if self.executor == "replay" and not self.replay_table:
            raise ValueError("replay_table: required when executor is 'replay' (a hybridbench table file)")
        return self


class Objective(_Strict):
    """One metric the search optimizes, with its direction."""

    metric: str = "accuracy"  # any metric an evaluation records
    direction: Literal["maximize", "minimize"] = "maximize"


class Bound(_Strict):
    """A constraint: metric >= min and/or metric <= max."""

    metric: str
    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _some_bound(self) -> Bound:
        if self.min is None and self.max is None:
            raise ValueError("give min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} > max {self.max}")
        return self

    def violation(self, value: float | None) -> str | None:
        """Why `value` breaks the bound, or None when it holds (a missing value breaks it)."""
        if value is None or not math.isfinite(value):
            return f"{self.metric} is missing"
        if self.min is not None and value < self.min:
            return f"{self.metric} {value:.6g} < min {self.min:.6g}"
        if self.max is not None and value > self.max:
            return f"{self.metric} {value:.6g} > max {self.max:.6g}"
        return None


class HardwareSection(_Strict):
    """How each candidate's cost is measured on its worker (hybridnas.workers.hardware.MeasureConfig)."""

    context_len: int = Field(default=512, ge=1)  # prefill length, and the context of the analytic state/KV bytes
    batch_size: int = Field(default=4, ge=1)  # sequences per timed prefill and per decode step
    prompt_len: int = Field(default=32, ge=1)  # tokens prefilled (untimed) before decode timing
    decode_tokens: int = Field(default=32, ge=1)  # single-token steps timed with the recurrent state / KV cache
    repeats: int = Field(default=3, ge=1)  # timed repetitions; the median is recorded
    warmup: int = Field(default=1, ge=0)  # untimed repetitions first


class CampaignFile(_Strict):
    name: str  # unique in the store; letters, digits, _ . -
    seed: int = 0  # seeds the strategy, the task data and every model's initialization
    task: dict[str, Any] = Field(default_factory=lambda: {"name": "mqar"})  # `name` plus that task's settings, or a suite
    space: SpaceFile = Field(default_factory=SpaceFile)
    training: TrainConfig = Field(default_factory=TrainConfig)
    search: SearchSection = Field(default_factory=SearchSection)
    execution: ExecutionSection = Field(default_factory=ExecutionSection)
    objectives: list[Objective] = Field(default_factory=lambda: [Objective()], min_length=1)  # the first one leads
    constraints: list[Bound] = Field(default_factory=list)  # analytic (cost_*) ones reject before training
    hardware: HardwareSection = Field(default_factory=HardwareSection)

    @model_validator(mode="before")
    @classmethod
    def _single_objective(cls, data: Any) -> Any:
        # `objective: {...}` is shorthand for a one-element `objectives:` list.
        if isinstance(data, dict) and "objective" in data:
            if "objectives" in data:
                raise ValueError("give either objective or objectives, not both")
            data = dict(data)
            data["objectives"] = [data.pop("objective")]
        return data

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME_RE.match(v):
            raise ValueError(f"{v!r} is not allowed; use letters, digits, '_', '.', '-' (at most 128, not starting with a symbol)")
        return v

    @property
    def objective(self) -> Objective:
        """The primary objective: it ranks the leaderboard and drives single-objective strategies."""
        return self.objectives[0]


@dataclass(frozen=True)
class Campaign:
    """A validated campaign: the file plus what it builds."""

    file: CampaignFile
    task: Any  # hybridnas.workers.tasks.Task
    space: SearchSpace

    @property
    def name(self) -> str:
        return self.file.name

    def config(self) -> dict[str, Any]:
        """The JSON stored with the campaign: enough to rebuild everything on resume."""
        return self.file.model_dump(mode="json")


def parse_campaign(data: Any, source: str = "", **overrides: Any) -> Campaign:
    """Validate a campaign mapping (as loaded from YAML or from the store)."""
    from hybridnas.workers.evaluate import METRICS
    from hybridnas.workers.suite import build_task

    if not isinstance(data, dict):
        raise CampaignFileError([f"the file must be a mapping of sections, got {type(data).__name__}"], source)
    data = {**data, **{k: v for k, v in overrides.items() if v is not None}}
    try:
        file = CampaignFile.model_validate(data)
    except ValidationError as e:
        raise CampaignFileError(format_validation_error(e), source) from None
    try:
        task = build_task(dict(file.task))
    except (ValueError, TypeError) as e:
        msg = str(e)
        raise CampaignFileError([msg if msg.startswith("task") else f"task: {msg}"], source) from None
    # Suites also record each member's metrics as "<member key>.<metric>".
    keys = [m.key for m in getattr(task, "members", ())]
    known = set(METRICS) | {f"{k}.{m}" for k in keys for m in METRICS}
    allowed = ", ".join(METRICS) + (f", or <member>.<metric> for members {', '.join(keys)}" if keys else "")
    problems = [
        f"{where}[{i}].metric: {item.metric!r} is not recorded; allowed: {allowed}"
        for where, items in (("objectives", file.objectives), ("constraints", file.constraints))
        for i, item in enumerate(items)
        if item.metric not in known
    ]
    if problems:
        raise CampaignFileError(problems, source)
    try:
        space = file.space.build(vocab_size=task.vocab_size)
    except ValueError as e:
        raise CampaignFileError([f"space: {e}"], source) from None
    return Campaign(file=file, task=task, space=space)


def load_campaign(path: str | Path, **overrides: Any) -> Campaign:
    p = Path(path)
    if not p.is_file():
        raise CampaignFileError([f"file: {p} does not exist"], str(p))
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise CampaignFileError([f"yaml: {e}"], str(p)) from None
    return parse_campaign(data, str(p), **overrides)
