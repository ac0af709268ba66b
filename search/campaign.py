"""The campaign file: one YAML that says what to search, on which task, how to train, and where to run.

Validated with pydantic (`extra="forbid"`, so a typo is an error, not a silently ignored key; strict,
so `true` is not 1 and "3" is not 3; no inf or nan) before anything is written to the store.
`load_campaign` returns the validated file and the task and search space it builds; every problem
comes back as `field.path: message` lines in `CampaignFileError`.

Hostile input is refused with a message, never a traceback: a file that is not UTF-8 text, YAML with
duplicate keys, tags, deep nesting or aliases that expand without bound, and sizes past a hard bound.
Sizes within the bounds can still be too much for the machine together, so `check_size` estimates the
memory and time of one evaluation from the file alone (no model built, no data generated) and refuses
what cannot fit; `hybridnas campaign launch --no-size-check` skips it.
"""

from __future__ import annotations

import itertools
import math
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from hybridnas.space import SearchSpace, SpaceFile, format_validation_error
from hybridnas.space.yamlfile import YAMLFileError, read_yaml
from hybridnas.workers.hardware import MEASURE_LIMITS
from hybridnas.workers.trainer import TrainConfig

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")

# Hard bounds: far above any real campaign, low enough that a typo fails here rather than on the workers.
MAX_BUDGET = 1_000_000  # search.budget, population, tournament, n_startup, reevaluate.top_k
MAX_WORKERS = 4096  # execution.workers, cpus_per_worker
MAX_SEED = 2**32 - 1
#: training.<field> -> its largest value (TrainConfig bounds them from below).


class CampaignFileError(ValueError):
    """The campaign file is invalid; `problems` holds one `field: message` line each."""

    def __init__(self, problems: list[str], source: str = "") -> None:
        self.problems = problems
        head = f"invalid campaign file {source}" if source else "invalid campaign file"
        super().__init__(head + ":\n" + "\n".join(f"  {p}" for p in problems))


class _Strict(BaseModel):
    # strict: `true` is not 1 and "3" is not 3; allow_inf_nan: no .inf or .nan where a number is expected.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


#: Metrics the analytic cost model gives before training: bounds on them reject a design up front.
ANALYTIC_METRICS = ("cost_params", "cost_flops_per_token", "cost_state_bytes")


class SuccessiveHalvingSection(_Strict):
    """Asynchronous successive halving (ASHA): train short, promote the best 1/eta to eta-times more steps."""

    eta: int = Field(default=3, ge=2, le=1024)  # promote the top 1/eta of each rung; each rung trains eta times longer
    rungs: int = Field(default=3, ge=2, le=32)  # fidelities training.steps / eta^(rungs-1), ..., training.steps


class ReevaluateSection(_Strict):
    """Noise-aware ranking: re-train the final top-k with extra seeds, so a lead can be told from noise."""

    top_k: int = Field(default=3, ge=1, le=MAX_BUDGET)  # how many of the best candidates get extra seeds
    seeds: int = Field(default=2, ge=1, le=1000)  # extra seeds each (seed+1, seed+2, ...), at its highest fidelity


class SearchSection(_Strict):
    """Which strategy proposes candidates, and how many it may propose."""

    strategy: str = "evolution"  # a name in hybridnas.search.strategies.STRATEGIES
    budget: int = Field(default=16, ge=1, le=MAX_BUDGET)  # distinct designs to evaluate (promotions and extra seeds come on top)
    population: int = Field(default=8, ge=2, le=MAX_BUDGET)  # evolution: population size (oldest dies first); nsga2: generation size
    tournament: int = Field(default=3, ge=1, le=MAX_BUDGET)  # evolution: candidates per tournament
    crossover_prob: float | None = Field(default=None, ge=0, le=1)  # evolution (0.2) and nsga2 (0.9): crossover chance
    n_startup: int = Field(default=10, ge=0, le=MAX_BUDGET)  # tpe, gp: random designs before the model takes over
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
    workers: int = Field(default=2, ge=1, le=MAX_WORKERS)  # evaluations in flight at once
    address: str | None = None  # join an existing Ray cluster instead of starting one
    cpus_per_worker: int = Field(default=1, ge=1, le=MAX_WORKERS)  # torch threads per worker
    gpus_per_worker: float = Field(default=0, ge=0, le=1024)  # GPUs per worker: a fraction packs several on one (0.25: four)
    timeout_s: float | None = Field(default=900, gt=0)  # per-evaluation limit; exceeded -> failed
    max_retries: int = Field(default=2, ge=0, le=100)  # ray: re-runs of an evaluation whose worker process died
    replay_table: str | None = None  # replay: a tabular benchmark (benchmarks/hybridbench) answering evaluations

    @field_validator("gpus_per_worker")
    @classmethod
    def _gpus(cls, v: float) -> float:
        from hybridnas.workers.executor import check_gpus_per_worker

        return check_gpus_per_worker(v)

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

    context_len: int = Field(default=512, ge=1, le=MEASURE_LIMITS["context_len"])  # prefill length, and the context of the analytic state/KV bytes
    batch_size: int = Field(default=4, ge=1, le=MEASURE_LIMITS["batch_size"])  # sequences per timed prefill and per decode step
    prompt_len: int = Field(default=32, ge=1, le=MEASURE_LIMITS["prompt_len"])  # tokens prefilled (untimed) before decode timing
    decode_tokens: int = Field(default=32, ge=1, le=MEASURE_LIMITS["decode_tokens"])  # single-token steps timed with the recurrent state / KV cache
    repeats: int = Field(default=3, ge=1, le=MEASURE_LIMITS["repeats"])  # timed repetitions; the median is recorded
    warmup: int = Field(default=1, ge=0, le=MEASURE_LIMITS["warmup"])  # untimed repetitions first


class CampaignFile(_Strict):
    name: str  # unique in the store; letters, digits, _ . -
    seed: int = Field(default=0, ge=0, le=MAX_SEED)  # seeds the strategy, the task data and every model's initialization
    task: dict[str, Any] = Field(default_factory=lambda: {"name": "mqar"})  # `name` plus that task's settings, or a suite
    space: SpaceFile = Field(default_factory=SpaceFile)
    training: TrainConfig = Field(default_factory=TrainConfig)
    search: SearchSection = Field(default_factory=SearchSection)
    execution: ExecutionSection = Field(default_factory=ExecutionSection)
    objectives: list[Objective] = Field(default_factory=lambda: [Objective()], min_length=1, max_length=64)  # the first one leads
    constraints: list[Bound] = Field(default_factory=list, max_length=64)  # analytic (cost_*) ones reject before training
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
        got = "nothing" if data is None else f"a {type(data).__name__}"
        raise CampaignFileError([f"file: a campaign must be a mapping of sections (name:, task:, ...), got {got}"], source)
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


# --- reading the file ----------------------------------------------------------------------------

def read_campaign_yaml(path: str | Path) -> Any:
    """The parsed document of a campaign file; CampaignFileError (naming the file, key or line) for a
    file that is missing, not UTF-8, not YAML, or YAML that a campaign must not contain."""
    try:
        return read_yaml(path, what="a campaign file", first_key="name")
    except YAMLFileError as e:
        raise CampaignFileError([e.problem], str(path)) from None


def load_campaign(path: str | Path, size_check: bool = True, **overrides: Any) -> Campaign:
    """Read, parse and validate a campaign file; with `size_check`, also refuse one whose evaluation
    cannot fit this machine (`check_size`)."""
    p = Path(path)
    campaign = parse_campaign(read_campaign_yaml(p), str(p), **overrides)
    if size_check:
        check_size(campaign, source=str(p))
    return campaign


# --- what one evaluation costs, from the file alone -----------------------------------------------

#: FLOP/s no single worker beats by much today (a large GPU in bf16): training time below this rate is a lower bound.
PEAK_FLOPS = 1e15


@dataclass(frozen=True)
class SizePart:
    """One share of an evaluation's memory, with the field that drives it."""

    field: str  # e.g. "task.num_train": the setting that makes this part large
    what: str  # how it was reckoned, for the message
    bytes: int
    on_device: bool = False  # held where the model trains: a GPU worker's accelerator, not host memory


@dataclass(frozen=True)
class SizeEstimate:
    """Memory and training work of one evaluation of the largest design, estimated without building it."""

    parts: tuple[SizePart, ...]  # task data, batch order, model state, the largest working set (training, scoring or measuring)
    train_flops: float  # forward and backward FLOPs of the training runs (every lr, every suite member)
    params: int  # parameters of the largest design in the space

    @property
    def memory_bytes(self) -> int:
        return sum(p.bytes for p in self.parts)

    def host_parts(self, gpu: bool) -> tuple[SizePart, ...]:
        """The parts held in host memory: all of them on a CPU worker, those not on the device on a GPU one."""
        return tuple(p for p in self.parts if not (gpu and p.on_device))


def format_bytes(n: float) -> str:
    """1536 -> "1.5 KiB"."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.3g} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    raise AssertionError("unreachable")


def machine_memory_bytes() -> int | None:
    """Memory this process may use: physical memory, or a lower cgroup (container) limit; None if unknown."""
    sizes: list[int] = []
    try:
        import psutil  # optional

        sizes.append(int(psutil.virtual_memory().total))
    except Exception:
        pass
    try:
        sizes.append(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        pass
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and 0 < int(text) < (1 << 60):  # "max", or a huge number, means no limit
            sizes.append(int(text))
    return min(sizes) if sizes else None


def _largest_designs(space: SearchSpace) -> list[Any]:
    """Uniform stacks of every mixer (and MLP kind) at the largest width, depth, ratios and options of the
    space: no design in it has more parameters, FLOPs or state than the largest of them."""
    from hybridnas.space import ArchSpec, SpecError

    genes = dict(space.genes)
    mixers = genes["hybrid.linear_mixer"] + genes["hybrid.full_mixer"] if space.mode == "hybrid" else genes["layer.mixer"]
    gates = {g for name, values in genes.items() if name.endswith(".gate") for g in values}
    gate = next((g for g in sorted(gates) if g != "none"), "none")  # a gate adds a projection; which one, no size
    conv = any(c for name, values in genes.items() if name.endswith("short_conv") for c in values)
    norm = "layernorm" if "layernorm" in genes["norm"] else genes["norm"][0]  # layernorm has a bias
    d, depth = max(genes["d_model"]), max(genes["n_layers"])
    out = []
    for mixer, mlp in itertools.product(mixers, genes["mlp"]):
        for heads in genes["n_heads"]:  # the first that builds: sizes hardly depend on the head count
            layer = replace(space.base_layer, mixer=mixer, gate=gate, short_conv=conv, n_heads=heads, expand_k=max(genes["expand_k"]))
            try:
                out.append(ArchSpec(d_model=d, layers=(layer,) * depth, vocab_size=space.vocab_size, mlp=mlp,
                                    mlp_ratio=max(genes["mlp_ratio"]), norm=norm))
                break
            except SpecError:
                continue
    return out


#: Typical values (the defaults) of the sizes an estimate multiplies: the factor furthest above its own is named.
_TYPICAL = {"num_train": 2000, "seq_len": 64, "vocab_size": 64, "d_model": 64, "n_layers": 4, "steps": 300,
            "batch_size": 32, "eval_batch_size": 256, "context_len": 512, "hardware.batch_size": 4}


def _culprit(*factors: tuple[str, float]) -> str:
    """Of (field, value) pairs, the field whose value is furthest above its typical size."""

    def excess(factor: tuple[str, float]) -> float:
        name, value = factor
        return value / _TYPICAL.get(name, _TYPICAL.get(name.rsplit(".", 1)[-1], 1))

    return max(factors, key=excess)[0]


def estimate_size(campaign: Campaign) -> SizeEstimate:
    """Memory and training FLOPs of one evaluation of the largest design in the space.

    Memory is the task data (inputs and targets, int64: (num_train + num_test) x seq_len x 16 bytes,
    every suite member's, as a worker caches them), the model (parameters x 16 bytes: fp32 weights,
    gradients and AdamW's two moments), the batch order (steps x batch_size indices, drawn up front),
    and the largest working set of: training (batch_size x seq_len x (d_model x n_layers x 40 + vocab
    x 12) bytes of activations and logits), scoring (eval_batch_size sequences, no gradients) and the
    hardware measurement (a prefill of hardware.batch_size x context_len tokens, plus the decode state
    at that context). Rough, by design: it exists to refuse what is off by orders of magnitude, before
    any worker starts.
    """
    from hybridnas.space import estimate_cost
    from hybridnas.workers.suite import suite_members

    tr, hw = campaign.file.training, campaign.file.hardware
    V = campaign.space.vocab_size
    d = max(campaign.space.choices("d_model"))
    L = max(campaign.space.choices("n_layers"))
    designs = _largest_designs(campaign.space)
    ctx = hw.context_len
    params = max((estimate_cost(s, context_len=ctx).params for s in designs), default=0)
    state = max((estimate_cost(s, context_len=ctx, bytes_per_element=4).state_bytes for s in designs), default=0)
    is_suite = hasattr(campaign.task, "members")
    vocab_field = "task.vocab_size"

    data = 0
    biggest: SizePart | None = None
    work: list[SizePart] = []
    flops = 0.0
    for i, m in enumerate(suite_members(campaign.task)):
        at = f"task.members[{i}]" if is_suite else "task"
        cfg = m.task.to_dict()
        T = m.task.seq_len
        n_train, n_test = int(cfg.get("num_train", 0)), int(cfg.get("num_test", 0))
        b = (n_train + n_test) * T * 16
        data += b
        if biggest is None or b > biggest.bytes:
            field = _culprit((f"{at}.num_train", n_train + n_test), (f"{at}.seq_len", T))
            biggest = SizePart(field, f"task data ((num_train + num_test) {n_train + n_test} x seq_len {T} x 16 bytes)", b)
        per_token = max((estimate_cost(s, context_len=T).flops_per_token for s in designs), default=0.0)
        flops += 3.0 * per_token * tr.steps * tr.batch_size * T * len(tr.lrs)
        work.append(SizePart(
            _culprit(("training.batch_size", tr.batch_size), (f"{at}.seq_len", T), (vocab_field, V), ("space.n_layers", L)),
            f"training activations (batch_size {tr.batch_size} x seq_len {T} x (d_model {d} x n_layers {L} x 40 + vocab {V} x 12) bytes)",
            tr.batch_size * T * (d * L * 40 + V * 12),
        ))
        # A scoring batch holds at most the larger of the test set and the validation split.
        scored = min(tr.eval_batch_size, max(n_test, math.ceil(n_train * tr.val_fraction)))
        work.append(SizePart(
            _culprit(("training.eval_batch_size", scored), (f"{at}.seq_len", T), (vocab_field, V)),
            f"scoring ({scored} sequences of eval_batch_size x seq_len {T} x (d_model {d} x 40 + vocab {V} x 8) bytes)",
            scored * T * (d * 40 + V * 8),
        ))
    work.append(SizePart(
        _culprit(("hardware.batch_size", hw.batch_size), ("hardware.context_len", ctx), (vocab_field, V)),
        f"hardware measurement (batch_size {hw.batch_size} x context_len {ctx} x (d_model {d} x 40 + vocab {V} x 4) bytes"
        f" + decode state {format_bytes(state)} per sequence)",
        hw.batch_size * (ctx * (d * 40 + V * 4) + state),
    ))
    embedding = V * d * 2 > params // 2  # embedding and LM head hold most parameters
    model_field = _culprit(*([(vocab_field, V)] if embedding else []), ("space.d_model", d), ("space.n_layers", L))
    assert biggest is not None  # a task has at least one member
    parts = (
        replace(biggest, what=biggest.what + (", every member's summed" if is_suite else ""), bytes=data),
        # The trainer draws every step's batch indices up front (int64, and the permutations they come from).
        SizePart(_culprit(("training.steps", tr.steps), ("training.batch_size", tr.batch_size)),
                 f"batch order (steps {tr.steps} x batch_size {tr.batch_size} x 16 bytes)", tr.steps * tr.batch_size * 16),
        SizePart(model_field, f"model (largest design: d_model {d}, n_layers {L}, vocab {V}: {params:,} parameters"
                 " x 16 bytes for weights, gradients and AdamW)", params * 16, on_device=True),
        replace(max(work, key=lambda p: p.bytes), on_device=True),
    )
    return SizeEstimate(parts=parts, train_flops=flops, params=params)


def check_size(campaign: Campaign, memory_bytes: int | None = None, source: str = "") -> SizeEstimate:
    """Refuse (CampaignFileError naming the dominant field) a campaign whose evaluation needs more memory
    than this machine has, or more training than `execution.timeout_s` allows even at PEAK_FLOPS.

    With GPU workers (`execution.gpus_per_worker` > 0) only the host's share is checked: the model and
    its activations live on the accelerator, whose memory is not known before a worker starts.
    """
    est = estimate_size(campaign)
    memory = machine_memory_bytes() if memory_bytes is None else memory_bytes
    gpu = campaign.file.execution.gpus_per_worker > 0
    parts = est.host_parts(gpu)
    need = sum(p.bytes for p in parts)
    problems = []
    if memory is not None and need > memory:
        top = max(parts, key=lambda p: p.bytes)
        listed = ", ".join(f"{p.what.split(' (')[0]} {format_bytes(p.bytes)}" for p in parts)
        problems.append(
            f"{top.field}: one evaluation needs about {format_bytes(need)} of {'host ' if gpu else ''}memory ({listed}), "
            f"more than this machine's {format_bytes(memory)}; the largest part is {top.what} = {format_bytes(top.bytes)}. "
            "Lower it, or pass --no-size-check to run anyway"
        )
    timeout = campaign.file.execution.timeout_s
    if timeout is not None and est.train_flops / PEAK_FLOPS > timeout:
        tr = campaign.file.training
        problems.append(
            f"training.steps: one evaluation trains about {est.train_flops:.3g} FLOPs (steps {tr.steps} x batch_size "
            f"{tr.batch_size} x seq_len x {len(tr.lrs)} learning rate(s) x 3 x forward FLOPs per token), at least "
            f"{est.train_flops / PEAK_FLOPS:.3g} s even at {PEAK_FLOPS:.0e} FLOP/s, beyond execution.timeout_s {timeout:g}. "
            "Lower it, or pass --no-size-check to run anyway"
        )
    if problems:
        raise CampaignFileError(problems, source)
    return est
