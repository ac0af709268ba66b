"""Replay a tabular benchmark: answer evaluations from a table of recorded results, instantly.

A table (see `benchmarks/hybridbench/`) holds the real evaluation of every design of a small space
at a few fidelities (training steps) and seeds. `ReplayExecutor` looks each request up by
(spec hash, steps, seed) and hands back the recorded result, so a search strategy or the controller
can be benchmarked over thousands of campaigns in seconds, against ground truth known in advance.

Lookup rules:
  - the design is `ArchSpec.from_json(request.spec_json).spec_hash`;
  - the fidelity is `request.steps`, which must be one of the table's `fidelities`;
  - the seed is the table's `seeds[request.seed % len(seeds)]`, so every campaign seed maps onto a
    recorded one (campaign seed 0 gets the first recorded seed, 1 the second, and so on, wrapping);
  - the request's task, training and measurement settings, normalized (`normalize_task`,
    `normalize_train`, `normalize_measure`), must equal the table's. Left out of the comparison:
    the training fields that do not change a result (`steps`, which is the fidelity, and
    `eval_batch_size`), and every measurement field but `context_len` (the others
    only set how long the timings run; `context_len` sets the context of the cost metrics).
Anything else (unknown design or fidelity, different settings, an unreadable spec) comes back as a
failed `EvalResult` whose error says why; the executor never raises for a request. Time limits are
not replayed: the recorded result is returned whatever `timeout_s` says.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hybridnas.space import ArchSpec
from hybridnas.workers.evaluate import EvalRequest, EvalResult
from hybridnas.workers.executor import QueueExecutor

#: The `format` field of a table file; `TABLE_VERSION` is bumped when its layout changes.
TABLE_FORMAT = "hybridnas-tabular-benchmark"
TABLE_VERSION = 1
#: TrainConfig fields left out of the comparison: the fidelity, and fields that do not change a result.
IGNORED_TRAIN_FIELDS: tuple[str, ...] = ("steps", "eval_batch_size")
#: MeasureConfig fields compared: the others set only how long the hardware timings run.
COMPARED_MEASURE_FIELDS: tuple[str, ...] = ("context_len",)


def normalize_task(task: dict[str, Any]) -> dict[str, Any]:
    """The task's canonical config (every default filled in), so equal tasks compare equal."""
    from hybridnas.workers.suite import build_task

    return build_task(dict(task)).to_dict()


def normalize_train(train: dict[str, Any]) -> dict[str, Any]:
    """TrainConfig fields as floats/ints with defaults filled in, minus `IGNORED_TRAIN_FIELDS`."""
    from hybridnas.workers.trainer import TrainConfig

    cfg = TrainConfig.from_dict({**train, "steps": 1})
    return {k: v for k, v in cfg.to_dict().items() if k not in IGNORED_TRAIN_FIELDS}


def normalize_measure(measure: dict[str, Any]) -> dict[str, Any]:
    """The `COMPARED_MEASURE_FIELDS` of a MeasureConfig, defaults filled in."""
    from hybridnas.workers.hardware import MeasureConfig

    cfg = dataclasses.asdict(MeasureConfig.from_dict(dict(measure)))
    return {k: cfg[k] for k in COMPARED_MEASURE_FIELDS}


@dataclass(frozen=True)
class Record:
    """One recorded evaluation of the table."""

    status: str  # "done" | "failed" | "invalid", as evaluate returned it
    metrics: dict[str, float]  # as evaluate returned them; empty unless done
    error: str | None  # evaluate's reason when not done
    wall_time_s: float  # the recorded evaluation's wall time on the machine that made the table
    device: str  # that machine's device label


class TableError(ValueError):
    """The table file is missing, unreadable, or not a table this module understands."""


class Table:
    """A loaded table: settings, designs, and records keyed by (spec_hash, fidelity, seed)."""

    def __init__(self, data: dict[str, Any], source: str = "") -> None:
        where = f" ({source})" if source else ""
        if not isinstance(data, dict) or data.get("format") != TABLE_FORMAT:
            raise TableError(f"format: expected {TABLE_FORMAT!r}{where}")
        if data.get("version") != TABLE_VERSION:
            raise TableError(f"version: got {data.get('version')!r}, this module reads {TABLE_VERSION}{where}")
        try:
            self.task: dict[str, Any] = normalize_task(data["task"])
            self.train: dict[str, Any] = normalize_train(data["train"])
            self.measure: dict[str, Any] = normalize_measure(data.get("measure", {}))
            self.fidelities: tuple[int, ...] = tuple(int(f) for f in data["fidelities"])
            self.seeds: tuple[int, ...] = tuple(int(s) for s in data["seeds"])
            self.designs: dict[str, str] = {h: d["spec_json"] for h, d in data["designs"].items()}
            self.records: dict[tuple[str, int, int], Record] = {}
            for r in data["records"]:
                key = (str(r["spec_hash"]), int(r["fidelity"]), int(r["seed"]))
                self.records[key] = Record(
                    status=str(r["status"]),
                    metrics={k: float(v) for k, v in (r.get("metrics") or {}).items()},
                    error=r.get("error"),
                    wall_time_s=float(r.get("wall_time_s", 0.0)),
                    device=str(r.get("device", "unknown")),
                )
        except (KeyError, TypeError, ValueError) as e:
            raise TableError(f"malformed table{where}: {type(e).__name__}: {e}") from None
        if not self.seeds:
            raise TableError(f"seeds: the table records no seed{where}")
        self.space: dict[str, Any] = data.get("space", {})
        self._checked: dict[str, str | None] = {}  # settings JSON -> mismatch reason, per distinct settings
        self.data = data  # the whole file, for scripts that read more (machine, command, ...)

    @classmethod
    def load(cls, path: str | Path) -> Table:
        """Read a `.json` or `.json.gz` table."""
        p = Path(path)
        if not p.is_file():
            raise TableError(f"table: {p} does not exist")
        opener = gzip.open if p.name.endswith(".gz") else open
        try:
            with opener(p, "rt", encoding="utf-8") as fh:
                data = json.load(fh)
        except (OSError, json.JSONDecodeError) as e:
            raise TableError(f"table: {p} is not readable JSON: {e}") from None
        return cls(data, str(p))

    def table_seed(self, seed: int) -> int:
        """The recorded seed a request's seed maps to: `seeds[seed % len(seeds)]`."""
        return self.seeds[seed % len(self.seeds)]

    def lookup(self, spec_hash: str, fidelity: int, seed: int) -> Record | None:
        """The record for a request's (design, steps, seed), or None when the table lacks it."""
        return self.records.get((spec_hash, fidelity, self.table_seed(seed)))

    def mean(self, metric: str, fidelity: int) -> dict[str, float]:
        """spec_hash -> mean of `metric` over the seeds recorded as done at `fidelity`."""
        sums: dict[str, list[float]] = {}
        for (h, f, _), r in self.records.items():
            if f == fidelity and r.status == "done" and metric in r.metrics:
                sums.setdefault(h, []).append(r.metrics[metric])
        return {h: sum(v) / len(v) for h, v in sums.items()}

    def mismatch(self, request: EvalRequest) -> str | None:
        """Why the request's settings differ from the table's, or None when they match."""
        try:
            key = json.dumps([request.task, request.train, request.measure], sort_keys=True)
        except (TypeError, ValueError):
            key = None  # not JSON: checked (and refused) below, uncached
        if key is not None and key in self._checked:
            return self._checked[key]
        reason = self._mismatch(request)
        if key is not None:
            self._checked[key] = reason  # a campaign sends the same settings every time
        return reason

    def _mismatch(self, request: EvalRequest) -> str | None:
        parts = (("task", self.task, normalize_task, request.task),
                 ("train", self.train, normalize_train, request.train),
                 ("measure", self.measure, normalize_measure, request.measure))
        for name, want, normalize, given in parts:
            try:
                got = normalize(given)
            except (ValueError, TypeError) as e:
                return f"{name}: not a valid config: {e}"
            if got != want:
                diff = sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))
                shown = ", ".join(f"{k}={got.get(k)!r} (table: {want.get(k)!r})" for k in diff[:3])
                return f"{name} differs from the table's: {shown}"
        return None


class ReplayExecutor(QueueExecutor):
    """Answers every request from a table at once; `wait` returns all submitted results.

    See the module docstring for the lookup rules. The results carry the recorded metrics, status,
    error and wall time; `host` is this machine, `device` says "replay of" the recorded device, and
    no weights are returned.
    """

    def __init__(self, table_path: str | Path, capacity: int = 1) -> None:
        super().__init__(capacity)
        self.table = Table.load(table_path)
        self._host = socket.gethostname()
        self.answered = 0  # requests answered from the table
        self.refused = 0  # requests answered with a lookup failure

    def _failed(self, request: EvalRequest, reason: str) -> EvalResult:
        self.refused += 1
        return EvalResult(request.evaluation_id, "failed", {}, f"replay: {reason}", self._host, "replay", 0.0)

    def answer(self, request: EvalRequest) -> EvalResult:
        """The table's result for one request (a failed result when the table cannot answer it)."""
        reason = self.table.mismatch(request)
        if reason is not None:
            return self._failed(request, reason)
        try:
            spec_hash = ArchSpec.from_json(request.spec_json).spec_hash
        except (ValueError, TypeError) as e:
            return self._failed(request, f"invalid spec_json: {e}")
        if not isinstance(request.steps, int) or request.steps not in self.table.fidelities:
            allowed = ", ".join(map(str, self.table.fidelities))
            return self._failed(request, f"steps: {request.steps!r} is not a recorded fidelity; allowed: {allowed}")
        if not isinstance(request.seed, int) or isinstance(request.seed, bool):
            return self._failed(request, f"seed: got {request.seed!r}, must be an integer")
        record = self.table.lookup(spec_hash, request.steps, request.seed)
        if record is None:
            kind = "design" if spec_hash not in self.table.designs else "evaluation"
            seed = self.table.table_seed(request.seed)
            return self._failed(request, f"{kind} {spec_hash} (steps {request.steps}, seed {seed}) is not in the table")
        self.answered += 1
        return EvalResult(
            evaluation_id=request.evaluation_id,
            status=record.status,
            metrics=dict(record.metrics),
            error=record.error,
            host=self._host,
            device=f"replay of {record.device}",
            wall_time_s=record.wall_time_s,
        )

    def wait(self, timeout: float | None = None) -> list[EvalResult]:
        out = [self.answer(r) for r in self._queue]
        self._queue.clear()
        return out


__all__ = [
    "COMPARED_MEASURE_FIELDS",
    "IGNORED_TRAIN_FIELDS",
    "TABLE_FORMAT",
    "TABLE_VERSION",
    "Record",
    "ReplayExecutor",
    "Table",
    "TableError",
    "normalize_measure",
    "normalize_task",
    "normalize_train",
]
