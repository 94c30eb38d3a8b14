"""Benchmark tasks by name, imported only when asked for.

Every entry names a module and the task and expert classes in it. A task class is built as
``TaskClass(**kwargs)``; its expert as ``ExpertClass(task)``. Importing this module imports no
simulator: gym-pusht or mujoco load when their task is made.
"""

from __future__ import annotations

from dataclasses import dataclass
import importlib
from typing import Any

from energyflow_ros.sim.base import Expert, Task

__all__ = ['TaskEntry', 'TASKS', 'task_names', 'make_task', 'task_info', 'make_expert']


@dataclass(frozen=True)
class TaskEntry:
    """Where a task and its scripted expert live.

    Attributes:
        module: dotted module path, imported on first use.
        task_class: name of the :class:`Task` subclass in that module.
        expert_class: name of the :class:`Expert` subclass in that module.
        summary: one line for listings.
    """

    module: str
    task_class: str
    expert_class: str
    summary: str = ''

    def load(self, attribute: str) -> Any:
        """Import the module and return one of its attributes."""
        return getattr(importlib.import_module(self.module), attribute)


TASKS: dict[str, TaskEntry] = {
    'obstacles2d': TaskEntry('energyflow_ros.sim.obstacles2d', 'Obstacles2DTask',
                             'Obstacles2DExpert',
                             'point robot past 2 discs to a goal; 4 modes (R-NCE paper)'),
    'pusht': TaskEntry('energyflow_ros.sim.pusht', 'PushTTask', 'PushTExpert',
                       'gym-pusht, state observations, 2-D target-position action'),
    'blockpush': TaskEntry('energyflow_ros.sim.blockpush', 'BlockPushTask', 'BlockPushExpert',
                           'two blocks to two targets on mujoco; 4 modes (IBC layout)'),
}


def task_names() -> list[str]:
    """Names of every registered task, sorted."""
    return sorted(TASKS)


def _entry(name: str) -> TaskEntry:
    if name not in TASKS:
        raise ValueError(f'unknown task {name!r}: expected one of {task_names()}')
    return TASKS[name]


def make_task(name: str, **kwargs: Any) -> Task:
    """Build the task registered as ``name``.

    Args:
        name: a name from :func:`task_names`.
        **kwargs: passed to the task's constructor.

    Raises:
        ValueError: ``name`` is not registered (the message lists the allowed names).
    """
    entry = _entry(name)
    return entry.load(entry.task_class)(**kwargs)


def task_info(name: str, **kwargs: Any) -> Any:
    """The :class:`~energyflow_ros.sim.base.TaskInfo` of ``make_task(name, **kwargs)``; the
    task is built to read it and closed again (its simulator is not left open).

    Raises:
        ValueError: ``name`` is not registered.
    """
    task = make_task(name, **kwargs)
    task.close()
    return task.info


def make_expert(task: Task) -> Expert:
    """Build the scripted expert of ``task`` (looked up by ``task.info.name``).

    Raises:
        ValueError: the task's name is not registered.
    """
    entry = _entry(task.info.name)
    return entry.load(entry.expert_class)(task)
