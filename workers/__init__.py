"""Workers: proxy tasks, the trainer, hardware measurement, and the executors that run evaluations."""

from __future__ import annotations

# `evaluate` the function stays in its module: re-exporting it here would shadow the submodule
# `hybridnas.workers.evaluate` (then `import hybridnas.workers.evaluate as m` returns the function).
from hybridnas.workers.evaluate import EvalRequest, EvalResult
from hybridnas.workers.executor import EXECUTORS, Executor, InProcessExecutor, RayExecutor, make_executor
from hybridnas.workers.hardware import describe_device, measure_prefill
from hybridnas.workers.tasks import TASKS, Task, TaskConfigError, TaskData, make_task
from hybridnas.workers.trainer import EvaluationFailed, TrainConfig, TrainResult, train

__all__ = [
    "EXECUTORS",
    "TASKS",
    "EvalRequest",
    "EvalResult",
    "EvaluationFailed",
    "Executor",
    "InProcessExecutor",
    "RayExecutor",
    "Task",
    "TaskConfigError",
    "TaskData",
    "TrainConfig",
    "TrainResult",
    "describe_device",
    "make_executor",
    "make_task",
    "measure_prefill",
    "train",
]
