"""What every benchmark task and scripted expert provides (no ROS, no torch).

A task is a small simulated robot with state observations and joint-like actions. The same
object serves the trainer's evaluation rollouts, the demonstration collector and, later,
``sim_node``, which publishes its state as ``/joint_states`` and applies commands it receives.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

__all__ = ['TaskInfo', 'StepResult', 'Task', 'Expert', 'Policy']


@dataclass(frozen=True)
class TaskInfo:
    """Static description of a task.

    Attributes:
        name: registry name, e.g. ``'obstacles2d'``.
        obs_names: one name per observation dimension.
        action_names: one name per action dimension; these are the "joint names" that
            sim_node and the policy node use.
        action_low: (action_dim,) lower bound of a valid action (joint limit).
        action_high: (action_dim,) upper bound.
        control_hz: control rate the task is stepped at.
        max_steps: episode length limit.
        metric_name: name of the task's headline metric besides success.
        revision: raised when the task's layout, dynamics or expert change what the same
            seeds produce, so demonstrations cached from an older revision are collected again.
    """

    name: str
    obs_names: tuple[str, ...]
    action_names: tuple[str, ...]
    action_low: tuple[float, ...]
    action_high: tuple[float, ...]
    control_hz: float
    max_steps: int
    metric_name: str = 'success'
    revision: int = 1

    @property
    def obs_dim(self) -> int:
        """Observation length."""
        return len(self.obs_names)

    @property
    def action_dim(self) -> int:
        """Action length."""
        return len(self.action_names)


@dataclass
class StepResult:
    """Outcome of one control step.

    Attributes:
        obs: observation after the step.
        done: the episode is over (success, failure or time limit).
        success: the task's success criterion holds now.
        info: task-specific extras (coverage, collision, ...).
    """

    obs: np.ndarray
    done: bool
    success: bool
    info: dict[str, Any] = field(default_factory=dict)


class Task(abc.ABC):
    """A simulated task; deterministic given the seed passed to :meth:`reset`."""

    info: TaskInfo

    @abc.abstractmethod
    def reset(self, seed: int) -> np.ndarray:
        """Start an episode from the seed's initial state; returns the first observation."""

    @abc.abstractmethod
    def step(self, action: np.ndarray) -> StepResult:
        """Apply one action (shape (action_dim,), raw units) for one control period."""

    @abc.abstractmethod
    def episode_metrics(self) -> dict[str, float]:
        """Metrics of the episode so far, e.g. success, collision, path cost, coverage, mode."""

    def close(self) -> None:
        """Release simulator resources."""


class Expert(abc.ABC):
    """A scripted, multimodal demonstrator; may read the task's privileged state."""

    @abc.abstractmethod
    def reset(self, seed: int) -> None:
        """Start a new episode; the seed picks the expert's random choices (its mode)."""

    @abc.abstractmethod
    def act(self, obs: np.ndarray) -> np.ndarray:
        """The action for the current observation (shape (action_dim,), raw units)."""


# A policy maps an observation (raw units) to an action (raw units).
Policy = Callable[[np.ndarray], np.ndarray]
