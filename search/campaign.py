"""The campaign file: one YAML that says what to search, on which task, how to train, and where to run.

Validated with pydantic (`extra="forbid"`, so a typo is an error, not a silently ignored key) before
anything is written to the store. `load_campaign` returns the validated file and the task and search
space it builds; every problem comes back as `field.path: message` lines in `CampaignFileError`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from hybridnas.space import SearchSpace, SpaceFile, format_validation_error

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class CampaignFileError(ValueError):
    """The campaign file is invalid; `problems` holds one `field: message` line each."""

    def __init__(self, problems: list[str], source: str = "") -> None:
        self.problems = problems
        head = f"invalid campaign file {source}" if source else "invalid campaign file"
        super().__init__(head + ":\n" + "\n".join(f"  {p}" for p in problems))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TrainingSection(_Strict):
    """How every candidate is trained (the fidelity, in steps, may be raised per evaluation)."""

    steps: int = Field(default=300, ge=1)  # optimizer steps at the base fidelity
    batch_size: int = Field(default=32, ge=1)  # sequences per step
    lr: float = Field(default=3e-3, gt=0)  # peak AdamW learning rate
    weight_decay: float = Field(default=0.1, ge=0)  # AdamW decay on matrices (not norms, biases, embeddings)
    warmup_frac: float = Field(default=0.1, ge=0, le=1)  # fraction of steps with linear warmup
    min_lr_frac: float = Field(default=0.1, ge=0, le=1)  # cosine decays to lr * min_lr_frac
    grad_clip: float = Field(default=1.0, gt=0)  # max global gradient norm
    eval_batch_size: int = Field(default=256, ge=1)  # sequences per scoring batch


class SearchSection(_Strict):
    """Which strategy proposes candidates, and how many it may propose."""

    strategy: Literal["random", "evolution"] = "evolution"
    budget: int = Field(default=16, ge=1)  # candidates to evaluate in total
    population: int = Field(default=8, ge=2)  # evolution: population size (oldest dies first)
    tournament: int = Field(default=3, ge=1)  # evolution: candidates per tournament
    crossover_prob: float = Field(default=0.2, ge=0, le=1)  # evolution: chance a child has two parents


class ExecutionSection(_Strict):
    """Where evaluations run."""

    executor: Literal["ray", "inprocess"] = "ray"  # ray: local embedded cluster, or `address`
    workers: int = Field(default=2, ge=1)  # evaluations in flight at once
    address: str | None = None  # join an existing Ray cluster instead of starting one
    cpus_per_worker: int = Field(default=1, ge=1)  # torch threads per worker
    gpus_per_worker: float = Field(default=0, ge=0)  # GPUs requested per worker
    timeout_s: float | None = Field(default=900, gt=0)  # per-evaluation limit; exceeded -> failed


class ObjectiveSection(_Strict):
    """The metric the search optimizes."""

    metric: str = "accuracy"  # any metric an evaluation records
    direction: Literal["maximize", "minimize"] = "maximize"


class ConstraintsSection(_Strict):
    """Analytic limits; designs that break one are rejected before training."""

    max_params: int | None = Field(default=None, ge=1)
    max_state_bytes: int | None = Field(default=None, ge=1)  # recurrent state + KV cache at context_len
    context_len: int = Field(default=2048, ge=1)  # context at which state bytes are measured


class CampaignFile(_Strict):
    name: str  # unique in the store; letters, digits, _ . -
    seed: int = 0  # seeds the strategy, the task data and every model's initialization
    task: dict[str, Any] = Field(default_factory=lambda: {"name": "mqar"})  # `name` plus that task's settings
    space: SpaceFile = Field(default_factory=SpaceFile)
    training: TrainingSection = Field(default_factory=TrainingSection)
    search: SearchSection = Field(default_factory=SearchSection)
    execution: ExecutionSection = Field(default_factory=ExecutionSection)
    objective: ObjectiveSection = Field(default_factory=ObjectiveSection)
    constraints: ConstraintsSection = Field(default_factory=ConstraintsSection)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME_RE.match(v):
            raise ValueError(f"{v!r} is not allowed; use letters, digits, '_', '.', '-' (at most 128, not starting with a symbol)")
        return v


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
    from hybridnas.workers.tasks import make_task

    if not isinstance(data, dict):
        raise CampaignFileError([f"the file must be a mapping of sections, got {type(data).__name__}"], source)
    data = {**data, **{k: v for k, v in overrides.items() if v is not None}}
    try:
        file = CampaignFile.model_validate(data)
    except ValidationError as e:
        raise CampaignFileError(format_validation_error(e), source) from None
    if file.objective.metric not in METRICS:
        raise CampaignFileError(
            [f"objective.metric: {file.objective.metric!r} is not recorded; allowed: {', '.join(METRICS)}"], source
        )
    try:
        task = make_task(dict(file.task))
    except (ValueError, TypeError) as e:
        msg = str(e)
        raise CampaignFileError([msg if msg.startswith("task") else f"task: {msg}"], source) from None
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
