from __future__ import annotations

import os
import re
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from hybridnas.space import ArchSpec, LayerSpec
from hybridnas.workers.evaluate import EvalRequest, EvalResult, evaluate
from hybridnas.workers import executor as executor_module
from hybridnas.workers.executor import Executor, InProcessExecutor, RayExecutor, make_executor

TASK = {"name": "mqar", "vocab_size": 17, "seq_len": 16, "num_kv_pairs": 2, "num_train": 300, "num_test": 32}
TRAIN = {"batch_size": 8, "lr": 3e-3, "eval_batch_size": 32}
SPEC = ArchSpec(d_model=16, layers=(LayerSpec("short_conv"), LayerSpec("attention", n_heads=2)), vocab_size=17)


def _request(evaluation_id: int, seed: int = 0, **overrides: object) -> EvalRequest:
    fields = {"evaluation_id": evaluation_id, "spec_json": SPEC.to_json(), "task": TASK, "train": TRAIN}
    fields.update(steps=12, seed=seed)
    return EvalRequest(**{**fields, **overrides})  # type: ignore[arg-type]


REQUESTS = [_request(0, seed=0), _request(1, seed=1), _request(2, spec_json="{}")]


def _drain(ex: Executor) -> list[EvalResult]:
    results: list[EvalResult] = []
    while ex.in_flight:
        got = ex.wait(timeout=120)
        assert got, "wait returned nothing while evaluations were in flight"
        results.extend(got)
    return results


@pytest.fixture(scope="module")
def reference() -> dict[int, EvalResult]:
    """The requests evaluated directly in this process, single-threaded like a one-CPU worker."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return {r.evaluation_id: evaluate(r) for r in REQUESTS}
    finally:
        torch.set_num_threads(before)


@pytest.fixture(params=["inprocess", pytest.param("ray", marks=pytest.mark.ray)])
def executor(request: pytest.FixtureRequest) -> Iterator[Executor]:
    if request.param == "ray":
        request.getfixturevalue("ray_cluster")
        ex = make_executor("ray", workers=2)
    else:
        request.getfixturevalue("one_thread")
        ex = make_executor("inprocess", workers=1)
    yield ex
    ex.close()


def test_executor_contract_and_same_results_as_direct_evaluation(
    executor: Executor, reference: dict[int, EvalResult]
) -> None:
    assert executor.in_flight == 0 and executor.wait(timeout=0.1) == []
    for r in REQUESTS:
        executor.submit(r)
    assert executor.in_flight == 3
    results = {r.evaluation_id: r for r in _drain(executor)}
    assert sorted(results) == [0, 1, 2] and executor.in_flight == 0
    assert executor.wait(timeout=0.1) == []

    assert results[2].status == "failed" and results[2].error.startswith("invalid spec_json: ")
    for i in (0, 1):
        got, want = results[i], reference[i]
        assert got.status == "done", got.error
        for key in ("accuracy", "loss", "train_loss", "params", "cost_flops_per_token"):
            assert got.metrics[key] == want.metrics[key], key
        assert got.weights == want.weights
    assert results[0].metrics["train_loss"] != results[1].metrics["train_loss"]
    # Each result names the process that ran it: host names alone repeat across nodes of one machine.
    for r in results.values():
        if isinstance(executor, RayExecutor):
            assert re.fullmatch(r"[0-9a-f]{8}/\d+", r.worker or ""), r.worker
            assert int(r.worker.split("/")[1]) in executor.worker_pids()
        else:
            assert r.worker == f"inprocess/{os.getpid()}"

    executor.close()
    with pytest.raises(RuntimeError, match="closed"):
        executor.submit(REQUESTS[0])


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time process `pid` has used so far (fields 14 and 15 of /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()  # from field 3 on
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _kill_while_evaluating(ex: RayExecutor, busy_cpu_s: float = 0.3) -> int:
    """SIGKILL the executor's only worker once it is busy with its request; returns its pid.

    `worker_pids` returns once the actor has answered `info`, which runs before the request queued
    behind it; an idle actor burns almost no CPU, so `busy_cpu_s` of CPU after that is the request
    being evaluated (a fresh worker spends seconds on its first one: imports, codegen, training).
    """
    [pid] = ex.worker_pids()
    start, give_up = _cpu_seconds(pid), time.monotonic() + 120
    while _cpu_seconds(pid) - start < busy_cpu_s:
        assert time.monotonic() < give_up, f"worker {pid} never started evaluating"
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    return pid


def _await_replacement(ex: RayExecutor, dead_pid: int) -> None:
    """Run `wait` until the executor has noticed `dead_pid` died and started a fresh worker."""
    give_up = time.monotonic() + 120
    while ex.worker_pids() == [dead_pid]:
        assert time.monotonic() < give_up, f"worker {dead_pid} was never replaced"
        assert ex.wait(timeout=0.2) == [], "the request came back instead of being retried"


needs_proc = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/PID/stat")


@pytest.mark.ray
@pytest.mark.slow
@needs_proc
def test_ray_worker_killed_mid_evaluation_is_retried_on_a_fresh_worker(
    ray_cluster: None, reference: dict[int, EvalResult]
) -> None:
    ex = RayExecutor(workers=1)
    try:
        assert ex.max_retries == 2
        ex.submit(REQUESTS[0])
        killed = _kill_while_evaluating(ex)
        [ok] = ex.wait(timeout=120)
        assert ok.evaluation_id == 0 and ok.status == "done", ok.error
        for key in ("accuracy", "loss", "train_loss"):  # the retry is a clean run of the same request
            assert ok.metrics[key] == reference[0].metrics[key], key
        assert ex.in_flight == 0
        [pid] = ex.worker_pids()
        assert pid != killed
    finally:
        ex.close()


@pytest.mark.ray
@pytest.mark.slow
@needs_proc
def test_ray_request_whose_worker_always_dies_fails_after_its_retries(ray_cluster: None) -> None:
    ex = make_executor("ray", workers=1, max_retries=1)
    assert isinstance(ex, RayExecutor)
    try:
        ex.submit(_request(10))
        killed = [_kill_while_evaluating(ex)]
        _await_replacement(ex, killed[0])  # the first death is retried, not reported
        killed.append(_kill_while_evaluating(ex))
        [died] = ex.wait(timeout=120)
        assert died.evaluation_id == 10 and died.status == "failed" and died.metrics == {}
        assert re.match(r"worker died 2 times; last error: \S", died.error), died.error
        assert len(set(killed)) == 2 and ex.in_flight == 0
        # Capacity intact: a fresh worker in place of the dead one, and it evaluates.
        [pid] = ex.worker_pids()
        assert ex.capacity == 1 and pid not in killed
        ex.submit(_request(11))
        [ok] = ex.wait(timeout=120)
        assert ok.evaluation_id == 11 and ok.status == "done", ok.error
    finally:
        ex.close()


@pytest.mark.ray
def test_ray_worker_past_its_timeout_is_killed(ray_cluster: None) -> None:
    # No grace: the request is overdue as soon as it is dispatched, long before the fresh actor
    # has even imported torch, so the executor kills it rather than waiting for the trainer's check.
    ex = RayExecutor(workers=1, kill_grace_s=0.0)
    try:
        ex.submit(_request(20, timeout_s=1e-3))
        [killed] = ex.wait(timeout=120)
        assert killed.status == "failed"
        assert re.match(r"time limit of 0.001s exceeded: worker killed after \d+s", killed.error), killed.error
        assert ex.in_flight == 0  # a hung evaluation would hang again: not retried
        ex.submit(_request(21))
        [ok] = ex.wait(timeout=120)
        assert ok.status == "done", ok.error
    finally:
        ex.close()


class _CannotStart(executor_module._EvalActor):
    """A worker whose process cannot start (on a node without hybridnas, say)."""

    def __init__(self, cpus: int) -> None:
        raise ImportError("no module named 'hybridnas'")


@pytest.mark.ray
@pytest.mark.slow
def test_ray_workers_that_cannot_start_end_the_wait_with_an_error(
    ray_cluster: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Replaced while they fail, a bounded number of times in a row: never in a loop forever.
    monkeypatch.setattr(executor_module, "_EvalActor", _CannotStart)
    ex = RayExecutor(workers=1)
    try:
        ex.submit(_request(30))
        with pytest.raises(RuntimeError, match=r"^Ray workers fail to start \(4 in a row\); last error: ImportError: no module named .hybridnas."):
            ex.wait(timeout=120)
    finally:
        ex.close()


def test_in_process_runs_one_request_per_wait(one_thread: None) -> None:
    ex = InProcessExecutor(capacity=2)
    ex.submit(REQUESTS[2])
    ex.submit(REQUESTS[2])
    assert ex.capacity == 2 and ex.in_flight == 2
    assert len(ex.wait()) == 1 and ex.in_flight == 1
    assert len(ex.wait()) == 1 and ex.in_flight == 0


def test_make_executor_validates_its_arguments() -> None:
    with pytest.raises(ValueError, match=r"^kind: got 'dask', allowed: inprocess, ray, replay$"):
        make_executor("dask", workers=1)
    with pytest.raises(ValueError, match=r"^replay_table: required"):
        make_executor("replay", workers=1)
    with pytest.raises(ValueError, match=r"^workers: "):
        make_executor("inprocess", workers=0)
    with pytest.raises(ValueError, match=r"^cpus_per_worker: "):
        make_executor("ray", workers=1, cpus_per_worker=0)
    with pytest.raises(ValueError, match=r"^gpus_per_worker: "):
        make_executor("ray", workers=1, gpus_per_worker=-1)
    with pytest.raises(ValueError, match=r"^max_retries: got -1, must be an integer >= 0$"):
        make_executor("ray", workers=1, max_retries=-1)
    with pytest.raises(ValueError, match=r"^address: "):
        make_executor("inprocess", workers=1, address="ray://head:10001")
    assert isinstance(make_executor("in-process", workers=1), InProcessExecutor)


@pytest.mark.parametrize(("value", "ok"), [(0, True), (0.25, True), (0.5, True), (1, True), (2, True), (1.5, False), (-0.1, False), (True, False), (float("nan"), False)])
def test_gpus_per_worker_packs_fractions_or_takes_whole_gpus(value: object, ok: bool) -> None:
    from hybridnas.search import parse_campaign
    from hybridnas.search.campaign import CampaignFileError
    from hybridnas.workers.executor import check_gpus_per_worker

    config = {"name": "gpus", "execution": {"executor": "ray", "gpus_per_worker": value}}
    if ok:
        assert check_gpus_per_worker(value) == float(value)
        assert parse_campaign(config).file.execution.gpus_per_worker == float(value)
    else:
        with pytest.raises(ValueError, match="gpus_per_worker"):
            check_gpus_per_worker(value)
        with pytest.raises(CampaignFileError, match="execution.gpus_per_worker"):
            parse_campaign(config)
