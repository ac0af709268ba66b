"""Workers: proxy tasks and suites of them, pre-training checks, the trainer, hardware measurement, and the
executors that run evaluations."""

from __future__ import annotations

from hybridnas.workers.checks import CheckFailed, CheckReport, check_model

# `evaluate` the function stays in its module: re-exporting it here would shadow the submodule
# `hybridnas.workers.evaluate` (then `import hybridnas.workers.evaluate as m` returns the function).
from hybridnas.workers.evaluate import METRICS, EvalRequest, EvalResult
from hybridnas.workers.executor import EXECUTORS, Executor, InProcessExecutor, RayExecutor, make_executor
from hybridnas.workers.hardware import (
    MeasureConfig,
    describe_device,
    measure_decode,
    measure_hardware,
    measure_peak_memory,
    measure_prefill,
)
from hybridnas.workers.suite import SuiteMember, TaskSuite, build_task
from hybridnas.workers.tasks import TASKS, Task, TaskConfigError, TaskData, make_task
from hybridnas.workers.trainer import EvaluationFailed, TrainConfig, TrainResult, train

__all__ = [
    "EXECUTORS",
    "METRICS",
    "TASKS",
    "CheckFailed",
    "CheckReport",
    "EvalRequest",
    "EvalResult",
    "EvaluationFailed",
    "Executor",
    "InProcessExecutor",
    "MeasureConfig",
    "RayExecutor",
    "SuiteMember",
    "Task",
    "TaskConfigError",
    "TaskData",
    "TaskSuite",
    "TrainConfig",
    "TrainResult",
    "build_task",
    "check_model",
    "describe_device",
    "make_executor",
    "make_task",
    "measure_decode",
    "measure_hardware",
    "measure_peak_memory",
    "measure_prefill",
    "train",
]
