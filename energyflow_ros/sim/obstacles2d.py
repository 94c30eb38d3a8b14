"""obstacles2d: a point robot drives past circular obstacles to a goal (R-NCE path planning).

The arena is the unit square, in metres. The robot starts near the left edge and must reach a
goal near the right edge; ``n_obstacles`` discs sit on the line between them, so every obstacle
can be passed above (+1) or below (-1) and the expert's paths form ``2 ** n_obstacles`` modes.
The layout is fixed, so the observation is only the robot and goal positions: which side to
take is a genuinely multimodal choice that the observation does not decide.

Dynamics: the action is the next position target; the robot moves towards it by at most
``max_step`` metres per tick (a rate-limited position controller). Obstacles are not solid:
passing through one is recorded as a collision and the episode goes on.

Metrics (see :meth:`Obstacles2DTask.episode_metrics`):
    success: 1 when the robot came within ``goal_tolerance`` of the goal.
    collision: 1 when any tick's motion segment touched an obstacle.
    safe_success: success without collision.
    path_cost: (travelled length + remaining distance to the goal) / straight start-goal
        distance - 1: 0 for the straight line, never negative, and an unfinished episode pays
        for the distance it has left. The expert scores about 0.13 with two obstacles.
    first_obstacle_side: side (+1 above, -1 below, 0 not yet passed) of the robot when it
        first crossed the first obstacle's x coordinate; ``obstacle_<i>_side`` likewise.
    mode: the sides as a binary code in [0, 2**k) (bit i set = obstacle i passed above),
        -1 until every obstacle has been passed.
    n_steps: ticks taken.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from energyflow_ros.sim.base import Expert, StepResult, Task, TaskInfo

__all__ = ['Obstacles2DConfig', 'Obstacles2DTask', 'Obstacles2DExpert', 'Obstacles2DExpertConfig',
           'check_action', 'segment_circle_hit']


def check_action(action: Any, dim: int) -> np.ndarray:
    """Validate one raw action.

    Args:
        action: array-like of shape (dim,).
        dim: expected action length.

    Returns:
        The action as a float64 array of shape (dim,).

    Raises:
        ValueError: the action has the wrong shape or holds NaN/inf, naming the problem.
    """
    try:
        array = np.asarray(action, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f'action must be numeric with shape ({dim},): {exc}') from exc
    if array.shape != (dim,):
        raise ValueError(f'action has shape {array.shape}; expected ({dim},)')
    if not np.all(np.isfinite(array)):
        raise ValueError(f'action holds non-finite values (NaN or inf): {array.tolist()}')
    return array


def segment_circle_hit(p0: np.ndarray, p1: np.ndarray, centres: np.ndarray,
                       radii: np.ndarray) -> np.ndarray:
    """Which discs the segment p0-p1 touches.

    Args:
        p0: (2,) segment start.
        p1: (2,) segment end.
        centres: (K, 2) disc centres.
        radii: (K,) disc radii.

    Returns:
        (K,) bool, True where the closest point of the segment lies inside the disc.
    """
    seg = p1 - p0
    length2 = float(seg @ seg)
    rel = centres - p0
    t = np.clip(rel @ seg / length2, 0.0, 1.0) if length2 > 0 else np.zeros(len(centres))
    closest = p0 + t[:, None] * seg
    return np.linalg.norm(centres - closest, axis=1) < radii


@dataclass(frozen=True)
class Obstacles2DConfig:
    """Layout and dynamics of obstacles2d (units: metres, ticks).

    Attributes:
        n_obstacles: number of discs on the start-goal line (1 to 4); 2**n modes.
        obstacle_radius: disc radius; by default 0.07 shrunk in proportion when the spacing of
            the discs falls below 0.3.
        x_span: the discs' centres are spread evenly over this x interval; by default centred
            on 0.5, 0.3 wide per gap between discs, at most 0.48 wide.
        start_x: start x range; start y is drawn from ``y_range``.
        goal_x: goal x range.
        y_range: range of the start and goal y; with the default two discs it is narrow enough
            that the straight start-goal line always touches a disc.
        max_step: largest move per tick (the speed limit).
        goal_tolerance: distance to the goal that counts as reached.
        max_steps: episode length limit.
        control_hz: tick rate.
    """

    n_obstacles: int = 2
    obstacle_radius: float | None = None
    x_span: tuple[float, float] | None = None
    start_x: tuple[float, float] = (0.05, 0.12)
    goal_x: tuple[float, float] = (0.88, 0.95)
    y_range: tuple[float, float] = (0.44, 0.56)
    max_step: float = 0.04
    goal_tolerance: float = 0.02
    max_steps: int = 120
    control_hz: float = 10.0

    def __post_init__(self) -> None:
        if not (isinstance(self.n_obstacles, int) and 1 <= self.n_obstacles <= 4):
            raise ValueError(f'Obstacles2DConfig.n_obstacles = {self.n_obstacles!r} is '
                             'invalid: expected an integer from 1 to 4')
        if self.x_span is None:
            half = min(0.15 * (self.n_obstacles - 1), 0.24)
            object.__setattr__(self, 'x_span', (0.5 - half, 0.5 + half))
        if self.obstacle_radius is None:
            spacing = (self.x_span[1] - self.x_span[0]) / max(self.n_obstacles - 1, 1)
            radius = 0.07 * min(1.0, spacing / 0.3) if self.n_obstacles > 1 else 0.07
            object.__setattr__(self, 'obstacle_radius', radius)
        for name in ('obstacle_radius', 'max_step', 'goal_tolerance', 'control_hz'):
            if not getattr(self, name) > 0:
                raise ValueError(f'Obstacles2DConfig.{name} = {getattr(self, name)!r} is '
                                 'invalid: expected a positive number')
        if not (isinstance(self.max_steps, int) and self.max_steps > 0):
            raise ValueError(f'Obstacles2DConfig.max_steps = {self.max_steps!r} is invalid: '
                             'expected a positive integer')

    def obstacle_centres(self) -> np.ndarray:
        """(K, 2) disc centres, evenly spread on y = 0.5."""
        k = self.n_obstacles
        xs = [0.5 * sum(self.x_span)] if k == 1 else np.linspace(*self.x_span, k)
        return np.array([[x, 0.5] for x in xs], dtype=np.float64)


class Obstacles2DTask(Task):
    """Point robot in the unit square passing ``n_obstacles`` discs on its way to a goal.

    Observation: ``(robot_x, robot_y, goal_x, goal_y)`` in metres. Action: the next position
    target ``(robot_x, robot_y)`` in metres, clipped to the arena [0, 1]^2 (the joint limits).
    """

    def __init__(self, **kwargs: Any) -> None:
        """Create the task; keyword arguments are :class:`Obstacles2DConfig` fields."""
        self.config = Obstacles2DConfig(**kwargs)
        self.centres = self.config.obstacle_centres()
        self.radii = np.full(len(self.centres), self.config.obstacle_radius)
        self.info = TaskInfo(
            name='obstacles2d', obs_names=('robot_x', 'robot_y', 'goal_x', 'goal_y'),
            action_names=('robot_x', 'robot_y'), action_low=(0.0, 0.0),
            action_high=(1.0, 1.0), control_hz=self.config.control_hz,
            max_steps=self.config.max_steps, metric_name='path_cost')
        self._low = np.array(self.info.action_low)
        self._high = np.array(self.info.action_high)
        self._pos = np.zeros(2)
        self._goal = np.zeros(2)
        self._start = np.zeros(2)
        self._reset_stats()

    def _reset_stats(self) -> None:
        self._steps = 0
        self._length = 0.0
        self._collided = False
        self._success = False
        self._sides = np.zeros(len(self.centres), dtype=np.int64)

    @property
    def position(self) -> np.ndarray:
        """(2,) current robot position (a copy)."""
        return self._pos.copy()

    @property
    def goal(self) -> np.ndarray:
        """(2,) goal position (a copy)."""
        return self._goal.copy()

    def reset(self, seed: int) -> np.ndarray:
        """Draw start and goal from ``seed``; returns the first observation."""
        rng = np.random.default_rng(seed)
        cfg = self.config
        self._start = np.array([rng.uniform(*cfg.start_x), rng.uniform(*cfg.y_range)])
        self._goal = np.array([rng.uniform(*cfg.goal_x), rng.uniform(*cfg.y_range)])
        self._pos = self._start.copy()
        self._reset_stats()
        return self._obs()

    def _obs(self) -> np.ndarray:
        return np.concatenate([self._pos, self._goal])

    def step(self, action: np.ndarray) -> StepResult:
        """Move towards the clipped target by at most ``max_step``.

        Raises:
            ValueError: the action has the wrong shape or is not finite.
        """
        raw = check_action(action, 2)
        target = np.clip(raw, self._low, self._high)
        delta = target - self._pos
        dist = float(np.linalg.norm(delta))
        if dist > self.config.max_step:
            delta *= self.config.max_step / dist
        new_pos = self._pos + delta
        hits = segment_circle_hit(self._pos, new_pos, self.centres, self.radii)
        self._collided |= bool(hits.any())
        self._record_sides(self._pos, new_pos)
        self._length += float(np.linalg.norm(delta))
        self._pos = new_pos
        self._steps += 1
        self._success |= bool(np.linalg.norm(self._goal - self._pos)
                              <= self.config.goal_tolerance)
        done = self._success or self._steps >= self.config.max_steps
        info = {'collision': bool(hits.any()), 'clipped': bool(np.any(target != raw))}
        return StepResult(obs=self._obs(), done=done, success=self._success, info=info)

    def _record_sides(self, p0: np.ndarray, p1: np.ndarray) -> None:
        """Note the side of every obstacle whose centre x the move p0 -> p1 crosses first."""
        for i, (cx, cy) in enumerate(self.centres):
            if self._sides[i] != 0 or (p0[0] - cx) * (p1[0] - cx) > 0 or p0[0] == p1[0]:
                continue
            t = (cx - p0[0]) / (p1[0] - p0[0])
            y = p0[1] + t * (p1[1] - p0[1])
            self._sides[i] = 1 if y >= cy else -1

    def episode_metrics(self) -> dict[str, float]:
        """Success, collision, safe_success, path_cost, sides, mode and n_steps (module doc)."""
        straight = float(np.linalg.norm(self._goal - self._start))
        remaining = float(np.linalg.norm(self._goal - self._pos))
        passed = bool(np.all(self._sides != 0))
        mode = int(sum(1 << i for i, s in enumerate(self._sides) if s > 0)) if passed else -1
        metrics = {
            'success': float(self._success),
            'collision': float(self._collided),
            'safe_success': float(self._success and not self._collided),
            'path_cost': (self._length + remaining) / max(straight, 1e-9) - 1.0,
            'first_obstacle_side': float(self._sides[0]),
            'mode': float(mode),
            'n_steps': float(self._steps),
        }
        for i, side in enumerate(self._sides):
            metrics[f'obstacle_{i}_side'] = float(side)
        return metrics


@dataclass(frozen=True)
class Obstacles2DExpertConfig:
    """Settings of :class:`Obstacles2DExpert`; clearances and noise in obstacle radii (R).

    Attributes:
        clearance: via-points sit at least ``R * (1 + clearance)`` from an obstacle's centre.
        side_noise: plus ``R * U(0, side_noise)`` further out.
        x_noise: via-points move ``R * U(-x_noise, x_noise)`` along x.
        min_clearance: every leg of the path keeps ``R * min_clearance`` off every obstacle.
        speed_range: the episode's speed (metres per tick) is drawn from this range.
        jitter: standard deviation of the per-tick Gaussian noise on the target (metres).
    """

    clearance: float = 0.65
    side_noise: float = 0.55
    x_noise: float = 0.45
    min_clearance: float = 0.2
    speed_range: tuple[float, float] = (0.022, 0.032)
    jitter: float = 0.002

    def __post_init__(self) -> None:
        for name in ('clearance', 'side_noise', 'x_noise', 'min_clearance', 'jitter'):
            if not getattr(self, name) >= 0:
                raise ValueError(f'Obstacles2DExpertConfig.{name} = {getattr(self, name)!r} '
                                 'is invalid: expected a number >= 0')
        low, high = self.speed_range
        if not 0 < low <= high:
            raise ValueError(f'Obstacles2DExpertConfig.speed_range = {self.speed_range!r} is '
                             'invalid: expected (low, high) with 0 < low <= high')


class Obstacles2DExpert(Expert):
    """Scripted demonstrator: a random side per obstacle, noisy via-points, bounded speed.

    At the first :meth:`act` of an episode it plans start -> via-points -> goal, one via-point
    per obstacle at ``R * (1 + clearance + U(0, side_noise))`` above or below its centre (side
    drawn with probability 1/2; R the obstacle radius) and ``R * U(-x_noise, x_noise)`` along
    x, redrawing the noise until every leg clears every obstacle by ``R * min_clearance``. It
    then walks the polyline at a speed drawn once per episode, with Gaussian jitter per tick.
    Settings: :class:`Obstacles2DExpertConfig`.
    """

    def __init__(self, task: Obstacles2DTask,
                 config: Obstacles2DExpertConfig | None = None) -> None:
        """Create the expert for ``task`` (it reads the task's obstacle layout)."""
        self.task = task
        cfg = config or Obstacles2DExpertConfig()
        self.config = cfg
        radius = task.config.obstacle_radius
        self.clearance = cfg.clearance * radius
        self.side_noise = cfg.side_noise * radius
        self.x_noise = cfg.x_noise * radius
        self.min_clearance = cfg.min_clearance * radius
        self.speed_range = cfg.speed_range
        self.jitter = cfg.jitter
        self.sides = np.ones(len(task.centres), dtype=np.int64)
        self._rng = np.random.default_rng(0)
        self._path: list[np.ndarray] = []
        self._speed = cfg.speed_range[0]

    def reset(self, seed: int) -> None:
        """Draw this episode's sides (its mode) and speed from ``seed``."""
        self._rng = np.random.default_rng([seed, 7])
        self.sides = self._rng.choice([-1, 1], size=len(self.task.centres))
        self._speed = float(self._rng.uniform(*self.speed_range))
        self._path = []

    def _plan(self, start: np.ndarray, goal: np.ndarray) -> list[np.ndarray]:
        """Via-points for the current sides, ending with the goal."""
        centres, radii = self.task.centres, self.task.radii
        for _ in range(100):
            offsets = radii + self.clearance + self._rng.uniform(0, self.side_noise,
                                                                 len(centres))
            vias = centres + np.stack([self._rng.uniform(-self.x_noise, self.x_noise,
                                                         len(centres)),
                                       self.sides * offsets], axis=1)
            points = [start, *vias, goal]
            clear = not any(segment_circle_hit(a, b, centres, radii + self.min_clearance).any()
                            for a, b in zip(points[:-1], points[1:], strict=True))
            if clear:
                break
        return [np.asarray(p, dtype=np.float64) for p in points[1:]]

    def act(self, obs: np.ndarray) -> np.ndarray:
        """Next position target along the planned polyline, ``speed`` metres ahead."""
        pos, goal = np.asarray(obs[:2], dtype=np.float64), np.asarray(obs[2:4])
        if not self._path:
            self._path = self._plan(pos, goal)
        budget = self._speed
        target = pos.copy()
        while budget > 0:
            leg = self._path[0] - target
            dist = float(np.linalg.norm(leg))
            if dist > budget or len(self._path) == 1:
                target = target + leg * min(1.0, budget / max(dist, 1e-12))
                break
            target, budget = self._path.pop(0).copy(), budget - dist
        if len(self._path) > 1:
            target = target + self._rng.normal(0.0, self.jitter, 2)
        return np.clip(target, self.task.info.action_low, self.task.info.action_high)
