"""Executors run evaluations and hand back their results as they finish.

Two implementations of one interface: `InProcessExecutor` (tests, debugging: runs each request in
the calling process) and `RayExecutor` (campaigns: one long-lived Ray actor per worker, so torch and
compiled kernels stay warm between evaluations). The controller keeps up to `capacity` requests
submitted and calls `wait` for whatever has finished.
"""

from __future__ import annotations

import logging
import math
import os
import re
import socket
import time
from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass, replace
from typing import Any

import torch

from hybridnas.workers.evaluate import EvalRequest, EvalResult, evaluate

EXECUTORS: tuple[str, ...] = ("inprocess", "ray", "replay")
# Spellings `make_executor` accepts for each kind.
_ALIASES = {"inprocess": "inprocess", "in-process": "inprocess", "in_process": "inprocess", "ray": "ray", "replay": "replay"}


class Executor(ABC):
    """Runs evaluations; `wait` returns those finished since its last call."""

    capacity: int  # evaluations it runs at once

    @abstractmethod
    def submit(self, request: EvalRequest) -> None:
        """Queue `request`; it starts as soon as a worker is free."""

    @abstractmethod
    def wait(self, timeout: float | None = None) -> list[EvalResult]:
        """Results finished since the last call. Blocks until at least one is ready when anything
        is in flight, or until `timeout` seconds pass (then possibly []). Returns [] at once when
        nothing is in flight."""

    @property
    @abstractmethod
    def in_flight(self) -> int:
        """Submitted requests whose result has not been returned yet."""

    @abstractmethod
    def close(self) -> None:
        """Stop every worker. Results not yet returned are lost. Safe to call twice."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class QueueExecutor(Executor):
    """An executor that answers in the calling process: `submit` queues the request, and the
    subclass's `wait` answers from the queue."""

    def __init__(self, capacity: int = 1) -> None:
        if not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 1:
            raise ValueError(f"capacity: got {capacity!r}, must be an integer >= 1")
        self.capacity = capacity
        self._queue: deque[EvalRequest] = deque()
        self._closed = False

    def submit(self, request: EvalRequest) -> None:
        if self._closed:
            raise RuntimeError("submit: the executor is closed")
        self._queue.append(request)

    @property
    def in_flight(self) -> int:
        return len(self._queue)

    def close(self) -> None:
        self._queue.clear()
        self._closed = True


class InProcessExecutor(QueueExecutor):
    """Runs requests one at a time in the calling process, inside `wait`.

    A run cannot be interrupted from here, so `timeout` does not cut one short: each `wait` runs
    exactly one queued request (its own `timeout_s` still bounds its training).
    """

    def __init__(self, capacity: int = 1, device: torch.device | str | None = None) -> None:
        super().__init__(capacity)
        self._device = device

    def wait(self, timeout: float | None = None) -> list[EvalResult]:
        if not self._queue:
            return []
        return [replace(evaluate(self._queue.popleft(), self._device), worker=inprocess_worker())]


def inprocess_worker() -> str:
    """The `worker` label of an evaluation run in this process."""
    return f"inprocess/{os.getpid()}"


class _EvalActor:
    """The body of one Ray worker: a process that evaluates requests one after another."""

    def __init__(self, cpus: int) -> None:
        import ray

        # One intra-op thread per reserved core: oversubscribed OpenMP threads (two processes with
        # two threads on two cores) run many times slower than one thread each.
        torch.set_num_threads(cpus)
        self._host = socket.gethostname()
        # Several nodes can share one host name (or one machine): the node id tells them apart.
        self._worker = f"{ray.get_runtime_context().get_node_id()[:8]}/{os.getpid()}"

    def info(self) -> tuple[str, int, str]:
        """(hostname, process id, worker label "<node id[:8]>/<pid>") of this worker."""
        return self._host, os.getpid(), self._worker

    def run(self, request: EvalRequest) -> EvalResult:
        return replace(evaluate(request), worker=self._worker)


@dataclass(frozen=True)
class _Queued:
    request: EvalRequest  # what to evaluate
    deaths: int = 0  # workers that died while running it so far
    first_started: float | None = None  # time.monotonic() of its first dispatch; None before it


@dataclass(frozen=True)
class _Running:
    actor: Any  # ray ActorHandle
    job: _Queued  # the request and its history of worker deaths
    started: float  # time.monotonic() at this dispatch; its time limit counts from here

    @property
    def request(self) -> EvalRequest:
        return self.job.request


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    return lines[0] if lines else type(e).__name__


class RayExecutor(Executor):
    """One long-lived Ray actor per worker; a dead actor is replaced and its request retried.

    Without `address`, starts an embedded local cluster (`workers * cpus_per_worker` CPUs) unless
    Ray is already initialized; with it, joins that cluster. `close` shuts Ray down only if this
    executor started it.

    A worker process that dies mid-evaluation (killed, segfault, node lost) says nothing about the
    candidate, so its request goes back to the head of the queue for a fresh actor, up to
    `max_retries` times; then it fails with "worker died N times; last error: ...". An actor still
    busy `kill_grace_s` after its request's `timeout_s` is killed and its request failed, not retried:
    a hang inside a kernel would hang again (its trainer checks the limit itself; this catches the
    rest). An evaluation that raises is already a failed result from `evaluate`, never retried.

    Requests go only to actors that have started. A replacement for an actor lost with its node may
    find no free CPU left in the cluster and stay pending; the requests then wait for the surviving
    actors instead of for it (and it takes work as soon as a node with room joins).
    """

    def __init__(
        self,
        workers: int = 1,
        address: str | None = None,
        cpus_per_worker: int = 1,
        gpus_per_worker: float = 0.0,
        kill_grace_s: float = 60.0,
        max_retries: int = 2,
    ) -> None:
        import ray

        _check_counts(workers, cpus_per_worker, gpus_per_worker)
        _check_max_retries(max_retries)
        self.capacity = workers
        self.max_retries = max_retries  # re-runs of a request after its worker died
        self._cpus = cpus_per_worker
        self._kill_grace_s = kill_grace_s
        self._started_ray = False
        if not ray.is_initialized():
            common: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": False}
            if address is not None:
                ray.init(address=address, **common)
            else:
                # A new local cluster turns Ray's token authentication on by default (what we want) and
                # warns about it on every launch; the warning asks nothing of the user, so it is muted.
                logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
                ray.init(num_cpus=workers * cpus_per_worker, include_dashboard=False, **common)
            self._started_ray = True
        options: dict[str, Any] = {"num_cpus": cpus_per_worker, "max_restarts": 0, "max_task_retries": 0}
        if gpus_per_worker > 0:
            options["num_gpus"] = gpus_per_worker
        self._actor_cls = ray.remote(**options)(_EvalActor)
        self._info: dict[Any, Any] = {}  # live actor -> ObjectRef of its (hostname, pid, worker), asked at start
        self._starting: dict[Any, Any] = {}  # ObjectRef of info -> actor that has not answered it yet
        self._start_failures = 0  # actors in a row that died before answering `info`
        self._idle: list[Any] = []  # started actors with nothing to run
        self._queue: deque[_Queued] = deque()
        self._running: dict[Any, _Running] = {}  # ObjectRef -> what it is running
        self._closed = False
        for _ in range(workers):
            self._new_actor()

    # -- actors ---------------------------------------------------------------------------------
    def _new_actor(self) -> None:
        actor = self._actor_cls.remote(self._cpus)
        ref = actor.info.remote()
        self._info[actor] = ref
        self._starting[ref] = actor

    def _started(self, ref: Any) -> None:
        """The actor behind info `ref` answered (it takes work now) or died first (replaced)."""
        import ray

        actor = self._starting.pop(ref)
        try:
            ray.get(ref)
        except Exception as e:  # noqa: BLE001 - any start failure: its node died, or it cannot import us
            self._start_failures += 1
            # Bounded: a node that cannot run a worker at all would otherwise be retried forever.
            if self._start_failures > 3 * self.capacity:
                # The last line of a failed creation task is its exception ("ImportError: ...").
                lines = [ln.strip() for ln in re.sub(r"\x1b\[[0-9;]*m", "", str(e)).splitlines() if ln.strip()]
                last = lines[-1] if lines else type(e).__name__
                raise RuntimeError(f"Ray workers fail to start ({self._start_failures} in a row); last error: {last}") from e
            self._replace(actor)
            return
        self._start_failures = 0
        self._idle.append(actor)

    def _labels(self, actor: Any) -> tuple[str, str | None]:
        """(hostname, worker label) of `actor`, or ("unknown", None) when it never answered."""
        import ray

        ref = self._info.get(actor)
        if ref is None:
            return "unknown", None
        try:
            ready, _ = ray.wait([ref], timeout=0)
            if not ready:
                return "unknown", None
            host, _pid, worker = ray.get(ready[0])
            return host, worker
        except Exception:  # noqa: BLE001 - the actor is gone; its host is only a label
            return "unknown", None

    def worker_pids(self, timeout: float | None = 60.0) -> list[int]:
        """Process ids of the live worker actors (waits for actors still starting)."""
        import ray

        return [ray.get(ref, timeout=timeout)[1] for ref in self._info.values()]

    def _retire(self, actor: Any) -> None:
        import ray

        ref = self._info.pop(actor, None)
        self._starting.pop(ref, None)
        try:
            ray.kill(actor, no_restart=True)
        except Exception:  # noqa: BLE001 - already dead
            pass

    def _replace(self, actor: Any) -> None:
        self._retire(actor)
        if not self._closed:
            self._new_actor()

    def _dispatch(self) -> None:
        while self._idle and self._queue:
            actor = self._idle.pop()
            job = self._queue.popleft()
            now = time.monotonic()
            if job.first_started is None:
                job = replace(job, first_started=now)
            ref = actor.run.remote(job.request)
            self._running[ref] = _Running(actor, job, now)

    def _failed(self, run: _Running, error: str) -> EvalResult:
        started = run.started if run.job.first_started is None else run.job.first_started
        host, worker = self._labels(run.actor)
        return EvalResult(
            evaluation_id=run.request.evaluation_id,
            status="failed",
            metrics={},
            error=error,
            host=host,
            device="unknown",
            wall_time_s=time.monotonic() - started,  # every attempt, from the first dispatch
            worker=worker,
        )

    # -- interface ------------------------------------------------------------------------------
    def submit(self, request: EvalRequest) -> None:
        if self._closed:
            raise RuntimeError("submit: the executor is closed")
        self._queue.append(_Queued(request))
        self._dispatch()

    def _collect(self, ref: Any) -> EvalResult | None:
        """The result behind `ref`, or None when its worker died and the request was queued again."""
        import ray
        from ray.exceptions import NodeDiedError, ObjectLostError, RayActorError, WorkerCrashedError

        run = self._running.pop(ref)
        try:
            result = ray.get(ref)
        # ActorDiedError and ActorUnavailableError are RayActorErrors; a result lost with its node
        # (ObjectLostError) is a lost worker too, never the candidate's fault.
        except (RayActorError, WorkerCrashedError, NodeDiedError, ObjectLostError) as e:
            deaths = run.job.deaths + 1
            failed = None
            if deaths > self.max_retries:
                times = "time" if deaths == 1 else "times"
                failed = self._failed(run, f"worker died {deaths} {times}; last error: {_first_line(e)}")
            else:  # first in line: it was dispatched before anything still queued
                self._queue.appendleft(replace(run.job, deaths=deaths))
            self._replace(run.actor)
            return failed
        except Exception as e:  # noqa: BLE001 - e.g. a result that could not be deserialized
            self._idle.append(run.actor)
            return self._failed(run, f"worker error: {_first_line(e)}")
        self._idle.append(run.actor)
        return result

    def _kill_deadline(self, run: _Running) -> float | None:
        if run.request.timeout_s is None:
            return None
        return run.started + run.request.timeout_s + self._kill_grace_s

    def _kill_overdue(self) -> list[EvalResult]:
        now = time.monotonic()
        out = []
        for ref, run in list(self._running.items()):
            deadline = self._kill_deadline(run)
            if deadline is not None and now > deadline:
                del self._running[ref]
                elapsed = now - run.started
                reason = f"time limit of {run.request.timeout_s:g}s exceeded: worker killed after {elapsed:.0f}s"
                out.append(self._failed(run, reason))
                self._replace(run.actor)
        return out

    def wait(self, timeout: float | None = None) -> list[EvalResult]:
        import ray

        end = None if timeout is None else time.monotonic() + timeout
        results: list[EvalResult] = []
        # Queued requests wait for an actor to start (or for a running one to finish).
        while self._running or (self._queue and self._starting):
            now = time.monotonic()
            wait_for = None if end is None else max(0.0, end - now)
            kills = [d for d in map(self._kill_deadline, self._running.values()) if d is not None]
            if kills:
                to_kill = max(0.0, min(kills) - now)
                wait_for = to_kill if wait_for is None else min(wait_for, to_kill)
            refs = list(self._running) + (list(self._starting) if self._queue else [])
            ready, _ = ray.wait(refs, num_returns=1, timeout=wait_for)
            if ready:  # take everything finished by now, not just the first
                ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
            for ref in ready:
                if ref in self._starting:
                    self._started(ref)
                else:
                    result = self._collect(ref)
                    if result is not None:
                        results.append(result)
            results.extend(self._kill_overdue())
            self._dispatch()
            if results or (end is not None and time.monotonic() >= end):
                break
        return results

    @property
    def in_flight(self) -> int:
        return len(self._queue) + len(self._running)

    def close(self) -> None:
        if self._closed:
            return
        import ray

        self._closed = True
        self._queue.clear()
        actors = list(self._info) + [run.actor for run in self._running.values()]
        self._idle, self._running, self._starting = [], {}, {}
        if ray.is_initialized():
            for actor in dict.fromkeys(actors):
                self._retire(actor)
            if self._started_ray:
                ray.shutdown()


def _check_counts(workers: Any, cpus_per_worker: Any, gpus_per_worker: Any) -> None:
    for name, v in (("workers", workers), ("cpus_per_worker", cpus_per_worker)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name}: got {v!r}, must be an integer >= 1")
    check_gpus_per_worker(gpus_per_worker)


def check_gpus_per_worker(value: Any) -> float:
    """A fraction in [0, 1] packs several workers on one GPU (0.25: four); above 1, whole GPUs only,
    as Ray schedules them. ValueError naming the field otherwise."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0
    if not ok or (value > 1 and value != int(value)):
        raise ValueError(
            f"gpus_per_worker: got {value!r}, must be a fraction in [0, 1] (0.25 packs four workers on a GPU) "
            "or a whole number of GPUs"
        )
    return float(value)


def _check_max_retries(max_retries: Any) -> None:
    if not isinstance(max_retries, int) or isinstance(max_retries, bool) or max_retries < 0:
        raise ValueError(f"max_retries: got {max_retries!r}, must be an integer >= 0")


def make_executor(
    kind: str,
    workers: int,
    address: str | None = None,
    cpus_per_worker: int = 1,
    gpus_per_worker: float = 0,
    max_retries: int = 2,
    replay_table: str | None = None,
) -> Executor:
    """`kind` is "inprocess", "ray" or "replay"; `workers` is the number of evaluations run at once;
    `max_retries` re-runs a request whose Ray worker died (in-process, no worker can die alone);
    `replay_table` is the tabular benchmark a "replay" executor answers from."""
    canonical = _ALIASES.get(kind) if isinstance(kind, str) else None
    if canonical is None:
        raise ValueError(f"kind: got {kind!r}, allowed: {', '.join(EXECUTORS)}")
    _check_counts(workers, cpus_per_worker, gpus_per_worker)
    _check_max_retries(max_retries)
    if canonical == "ray":
        return RayExecutor(workers, address, cpus_per_worker, gpus_per_worker, max_retries=max_retries)
    if address is not None:
        raise ValueError(f"address: got {address!r}, only the ray executor joins a cluster")
    if canonical == "replay":
        if not replay_table:
            raise ValueError("replay_table: required by the replay executor (a hybridbench table file)")
        from hybridnas.workers.replay import ReplayExecutor

        return ReplayExecutor(replay_table, capacity=workers)
    return InProcessExecutor(capacity=workers)


__all__ = ["EXECUTORS", "Executor", "InProcessExecutor", "RayExecutor", "make_executor"]
