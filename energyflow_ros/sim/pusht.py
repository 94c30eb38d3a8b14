"""pusht: push a T-shaped block onto its goal pose with a disc (gym-pusht, state observations).

Units are gym-pusht's: pixels in a 512 x 512 arena, radians, 10 Hz control, 300 ticks.
Observation: :data:`OBS_NAMES`, ``(agent_x, agent_y, block_x, block_y, block_angle_cos,
block_angle_sin)``, where block x/y is the T's body origin (the middle of the bar's outer
edge, away from the stem; not its centre of mass, which sits 45 px along the stem) and the
angle enters as its cosine and sine. gym-pusht's own state wraps the angle to [0, 2 pi), a
jump of 2 pi that about a third of the expert's episodes cross (the goal angle, pi / 4, lies
near the cut); a policy reading it sees two far-apart inputs for one pose. Action: the disc's
target position ``(agent_x, agent_y)`` in pixels, clipped to [0, 512] (the joint limits);
gym-pusht's PD controller chases it.

Success: coverage of the goal region > 0.95 (the episode then ends). Headline metric:
``max_score``, Diffusion Policy's score (and the R-NCE paper's): the episode's highest
gym-pusht reward, ``clip(coverage / 0.95, 0, 1)``, so a success scores 1. ``max_coverage`` is
the highest raw coverage (a success: ~0.95-0.97).

The scripted expert (:class:`PushTExpert`) reads the true state and the goal pose and picks
contacts by predicting the block's quasi-static motion; sampling among near-best contacts
with a softmax makes its demonstrations multimodal.
"""

from __future__ import annotations

from dataclasses import dataclass
import os

import numpy as np

from energyflow_ros.sim.base import Expert, StepResult, Task, TaskInfo
from energyflow_ros.sim.obstacles2d import check_action

__all__ = ['PushTTask', 'PushTExpert', 'PushTExpertConfig', 'T_OUTLINE', 'T_COM', 'GOAL_POSE',
           'OBS_NAMES', 'block_pose']

T_OUTLINE = np.array([(-60, 0), (60, 0), (60, 30), (15, 30), (15, 120), (-15, 120),
                      (-15, 30), (-60, 30)], dtype=np.float64)
"""(8, 2) the T's outline in its body frame (pixels), counter-clockwise."""
T_COM = np.array([0.0, 45.0])
"""The T's centre of mass in its body frame."""
BLOCK_MASS = 1.0
BLOCK_INERTIA = 3000.0
AGENT_RADIUS = 15.0
GOAL_POSE = np.array([256.0, 256.0, np.pi / 4])
"""Goal (x, y, angle) of the T's body origin, as gym-pusht sets it."""
ARENA = (22.0, 490.0)
"""Range of disc centres that keeps the disc clear of the walls (at 5 and 506, 2 px thick)."""
OBS_NAMES = ('agent_x', 'agent_y', 'block_x', 'block_y', 'block_angle_cos', 'block_angle_sin')
"""The task's observation names (the angle as cosine and sine: no wrap-around)."""


def task_observation(state: np.ndarray) -> np.ndarray:
    """(6,) the task's observation from gym-pusht's state ``(agent xy, block xy, angle)``."""
    state = np.asarray(state, dtype=np.float64)
    return np.array([*state[:4], np.cos(state[4]), np.sin(state[4])])


def block_pose(obs: np.ndarray) -> np.ndarray:
    """(3,) the block's ``(x, y, angle)`` from an observation; the angle in (-pi, pi]."""
    obs = np.asarray(obs, dtype=np.float64)
    return np.array([obs[2], obs[3], np.arctan2(obs[5], obs[4])])


def rotation(angle: float) -> np.ndarray:
    """(2, 2) rotation matrix."""
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s], [s, c]])


def wrap_angle(angle: float) -> float:
    """Angle wrapped to [-pi, pi)."""
    return float((angle + np.pi) % (2 * np.pi) - np.pi)


def point_polygon_distance(points: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """Distance from points to a polygon's area (0 inside).

    Args:
        points: (N, 2) query points.
        polygon: (V, 2) vertices in order.

    Returns:
        (N,) distances; 0 for points inside the polygon.
    """
    a = polygon
    b = np.roll(polygon, -1, axis=0)
    edge = b - a
    rel = points[:, None, :] - a[None]
    t = np.clip(np.einsum('nvk,vk->nv', rel, edge) / np.einsum('vk,vk->v', edge, edge), 0, 1)
    dist = np.linalg.norm(rel - t[..., None] * edge[None], axis=-1).min(axis=1)
    # even-odd ray casting along +x
    y = points[:, 1:2]
    crosses = (a[None, :, 1] > y) != (b[None, :, 1] > y)
    with np.errstate(divide='ignore', invalid='ignore'):
        x_cross = a[None, :, 0] + (y - a[None, :, 1]) * edge[None, :, 0] / edge[None, :, 1]
    inside = (crosses & (points[:, 0:1] < x_cross)).sum(axis=1) % 2 == 1
    return np.where(inside, 0.0, dist)


def ring_points(margin: float) -> np.ndarray:
    """Waypoints round the T's convex hull at ``margin`` px, counter-clockwise, body frame.

    Each hull corner contributes three points (along both adjacent edge normals and their
    bisector), so the straight legs between them keep about ``0.9 * margin`` px of clearance.

    Returns:
        (P, 2) ring points.
    """
    hull = T_OUTLINE[[0, 1, 2, 4, 5, 7]]
    points = []
    for prev, corner, nxt in zip(np.roll(hull, 1, axis=0), hull, np.roll(hull, -1, axis=0),
                                 strict=True):
        normals = []
        for a, b in ((prev, corner), (corner, nxt)):
            unit = (b - a) / np.linalg.norm(b - a)
            normals.append(np.array([unit[1], -unit[0]]))
        bisector = (normals[0] + normals[1]) / np.linalg.norm(normals[0] + normals[1])
        points.extend(corner + margin * n for n in (normals[0], bisector, normals[1]))
    return np.array(points)


def contact_candidates(spacing: float = 10.0,
                       tilts: tuple[float, ...] = (-0.5, 0.0, 0.5)) -> dict[str, np.ndarray]:
    """Contact points along the T's outline with their push directions, in the body frame.

    Points sit every ``spacing`` px along each edge (offset by half a spacing from the
    corners); each gets one direction per tilt: the inward normal rotated by the tilt.

    Returns:
        ``point`` (C, 2), ``direction`` (C, 2) unit push directions, ``normal`` (C, 2) inward
        normals, all in the body frame.
    """
    points, directions, normals = [], [], []
    for a, b in zip(T_OUTLINE, np.roll(T_OUTLINE, -1, axis=0), strict=True):
        length = float(np.linalg.norm(b - a))
        unit = (b - a) / length
        inward = np.array([-unit[1], unit[0]])
        for offset in np.arange(spacing / 2, length, spacing):
            for tilt in tilts:
                points.append(a + unit * offset)
                directions.append(rotation(tilt) @ inward)
                normals.append(inward)
    return {'point': np.array(points), 'direction': np.array(directions),
            'normal': np.array(normals)}


class PushTTask(Task):
    """gym-pusht's ``gym_pusht/PushT-v0`` with state observations behind the Task interface."""

    def __init__(self, max_steps: int = 300) -> None:
        """Create the environment (imports gym-pusht lazily).

        Args:
            max_steps: episode length limit in ticks (gym-pusht's own is 300).
        """
        if not (isinstance(max_steps, int) and max_steps > 0):
            raise ValueError(f'PushTTask.max_steps = {max_steps!r} is invalid: expected a '
                             'positive integer')
        os.environ.setdefault('PYGAME_HIDE_SUPPORT_PROMPT', '1')
        import gym_pusht  # noqa: F401  (registers the environment)
        import gymnasium

        self._env = gymnasium.make('gym_pusht/PushT-v0', obs_type='state',
                                   disable_env_checker=True, max_episode_steps=max_steps)
        self.info = TaskInfo(
            name='pusht',
            obs_names=OBS_NAMES,
            action_names=('agent_x', 'agent_y'), action_low=(0.0, 0.0),
            action_high=(512.0, 512.0), control_hz=10.0, max_steps=max_steps,
            metric_name='max_score')
        self._low = np.array(self.info.action_low)
        self._high = np.array(self.info.action_high)
        self.goal_pose = GOAL_POSE.copy()
        self._steps = 0
        self._coverage = self._max_coverage = self._max_score = 0.0
        self._success = False

    def reset(self, seed: int) -> np.ndarray:
        """Reset gym-pusht with ``seed`` (it draws the agent and block poses)."""
        obs, info = self._env.reset(seed=int(seed))
        self.goal_pose = np.asarray(info['goal_pose'], dtype=np.float64)
        self._steps = 0
        self._coverage = self._max_coverage = self._max_score = 0.0
        self._success = False
        return task_observation(obs)

    def step(self, action: np.ndarray) -> StepResult:
        """One 0.1 s tick towards the clipped target.

        Raises:
            ValueError: the action has the wrong shape or is not finite.
        """
        raw = check_action(action, 2)
        target = np.clip(raw, self._low, self._high)
        obs, reward, terminated, _, info = self._env.step(target)
        self._steps += 1
        self._coverage = float(info['coverage'])
        self._max_coverage = max(self._max_coverage, self._coverage)
        self._max_score = max(self._max_score, float(reward))
        self._success |= bool(info['is_success'])
        done = bool(terminated) or self._success or self._steps >= self.info.max_steps
        extras = {'coverage': self._coverage, 'clipped': bool(np.any(target != raw)),
                  'n_contacts': int(info['n_contacts'])}
        return StepResult(obs=task_observation(obs), done=done,
                          success=self._success, info=extras)

    def episode_metrics(self) -> dict[str, float]:
        """success, max_score, max_coverage, final_coverage and n_steps of the episode so
        far."""
        return {'success': float(self._success), 'max_score': self._max_score,
                'max_coverage': self._max_coverage,
                'final_coverage': self._coverage, 'n_steps': float(self._steps)}

    def close(self) -> None:
        """Close the gym environment."""
        self._env.close()


@dataclass(frozen=True)
class PushTExpertConfig:
    """Settings of :class:`PushTExpert` (pixels, radians, ticks).

    Attributes:
        temperature: softmax temperature over contact scores (lower = greedier, less modal).
        top_k: number of best reachable candidates the contact is sampled from.
        travel_cost: score penalty per 100 px from the disc to a pre-contact point.
        standoff: distance of the pre-contact point behind the contact, along the push.
        ring_margin: clearance of the detour ring round the T's convex hull.
        orbit_tie: relative length difference under which both ways round count as equal
            and the episode's preferred way is taken.
        lead: largest distance of a travel target ahead of the disc.
        push_gain: push step per px of pose error.
        max_push: largest push step.
        repick_score: a new contact is picked when the current one scores below this.
        hold_distance: hold still when the block is this close to the goal position ...
        hold_angle: ... and this close to the goal angle.
        stall_ticks: ticks without progress while travelling before the contact is dropped.
    """

    temperature: float = 0.03
    top_k: int = 30
    travel_cost: float = 0.15
    standoff: float = 19.0
    ring_margin: float = 25.0
    orbit_tie: float = 0.2
    lead: float = 30.0
    push_gain: float = 0.6
    max_push: float = 15.0
    repick_score: float = 0.3
    hold_distance: float = 1.0
    hold_angle: float = 0.015
    stall_ticks: int = 5

    def __post_init__(self) -> None:
        for name in ('temperature', 'travel_cost', 'standoff', 'ring_margin', 'lead',
                     'push_gain', 'max_push', 'hold_distance', 'hold_angle'):
            if not getattr(self, name) >= 0 or (name == 'temperature' and self.temperature == 0):
                raise ValueError(f'PushTExpertConfig.{name} = {getattr(self, name)!r} is '
                                 'invalid: expected a positive number')
        for name in ('top_k', 'stall_ticks'):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) > 0):
                raise ValueError(f'PushTExpertConfig.{name} = {getattr(self, name)!r} is '
                                 'invalid: expected a positive integer')


class PushTExpert(Expert):
    """Scripted pusher that samples near-best contacts (multimodal by construction).

    Every contact candidate (a point on the T's outline and a push direction ``d``) is scored
    by the cosine between the block's predicted generalised velocity under a unit push,
    ``(d / m, rho * (r x d) / I)`` with ``rho = sqrt(I / m)`` and ``r`` the offset from the
    centre of mass, and the pose error ``(dp, rho * dtheta)``, minus ``travel_cost`` per 100 px
    from the disc to the candidate's pre-contact point ``contact - d * standoff``. Of the
    ``top_k`` best candidates whose pre-contact point is inside the arena and clear of the
    block, one is drawn from a softmax over scores at ``temperature`` (redrawn if no way round
    the block reaches it). The disc goes there straight when the way is clear, otherwise along
    a ring round the T's convex hull, taking the shorter way round or, when both are about
    equal, a way chosen once per episode; then it pushes along ``d`` by
    ``clip(push_gain * error, 1, max_push)`` px per tick, and picks a new contact when the
    current one scores below ``repick_score``, when the disc slips off it, or when travel
    stalls. It holds still when the block is within ``hold_distance`` px and ``hold_angle`` rad
    of the goal. Settings: :class:`PushTExpertConfig`.
    """

    def __init__(self, task: PushTTask, config: PushTExpertConfig | None = None) -> None:
        """Create the expert for ``task`` (it reads the task's goal pose)."""
        self.task = task
        self.config = config or PushTExpertConfig()
        self.rho = float(np.sqrt(BLOCK_INERTIA / BLOCK_MASS))
        self.candidates = contact_candidates()
        self.ring = ring_points(self.config.ring_margin)
        self._rng = np.random.default_rng(0)
        self._orbit_side = 1.0
        self._contact: int | None = None
        self._pushing = False
        self._stalled = 0
        self._last_agent = np.zeros(2)

    def reset(self, seed: int) -> None:
        """Seed the contact sampling and the preferred way round the block."""
        self._rng = np.random.default_rng([seed, 11])
        self._orbit_side = float(self._rng.choice([-1.0, 1.0]))
        self._contact = None
        self._pushing = False
        self._stalled = 0
        self._last_agent = np.full(2, np.nan)

    def _pose_error(self, block: np.ndarray) -> np.ndarray:
        """(3,) ``(dp, rho * dtheta)`` from the block's centre of mass to the goal's."""
        goal = self.task.goal_pose
        com = block[:2] + rotation(block[2]) @ T_COM
        goal_com = goal[:2] + rotation(goal[2]) @ T_COM
        return np.array([*(goal_com - com), self.rho * wrap_angle(goal[2] - block[2])])

    def _world_candidates(self, block: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Contact points, push directions and pre-contact points in the world frame."""
        rot = rotation(block[2])
        points = block[:2] + self.candidates['point'] @ rot.T
        directions = self.candidates['direction'] @ rot.T
        return points, directions, points - directions * self.config.standoff

    def _scores(self, block: np.ndarray, agent: np.ndarray) -> np.ndarray:
        """(C,) score of every candidate (cosine with the pose error minus travel cost)."""
        points, directions, pre = self._world_candidates(block)
        offsets = points - (block[:2] + rotation(block[2]) @ T_COM)
        torque = offsets[:, 0] * directions[:, 1] - offsets[:, 1] * directions[:, 0]
        motion = np.concatenate([directions / BLOCK_MASS,
                                 (self.rho * torque / BLOCK_INERTIA)[:, None]], axis=1)
        error = self._pose_error(block)
        cosine = motion @ error / (np.linalg.norm(motion, axis=1) * np.linalg.norm(error) + 1e-9)
        travel = np.linalg.norm(pre - agent, axis=1) / 100.0
        return cosine - self.config.travel_cost * travel

    def _pick_contact(self, block: np.ndarray, agent: np.ndarray) -> int | None:
        """Sample a reachable candidate among the best by a softmax over scores."""
        _, _, pre = self._world_candidates(block)
        outline = block[:2] + T_OUTLINE @ rotation(block[2]).T
        inside = np.all((pre >= ARENA[0]) & (pre <= ARENA[1]), axis=1)
        clear = point_polygon_distance(pre, outline) >= AGENT_RADIUS + 1.0
        valid = np.flatnonzero(inside & clear)
        scores = self._scores(block, agent)[valid]
        best = np.argsort(-scores)[:self.config.top_k]
        if len(best) == 0:
            return None
        weights = np.exp((scores[best] - scores[best[0]]) / self.config.temperature)
        while weights.sum() > 0:
            pick = self._rng.choice(len(best), p=weights / weights.sum())
            index = int(valid[best[pick]])
            if self._ring_route(agent, pre[index], block)[1]:
                return index
            weights[pick] = 0.0
        return int(valid[best[0]])

    def act(self, obs: np.ndarray) -> np.ndarray:
        """Target position for the disc (pixels)."""
        agent = np.asarray(obs[:2], dtype=np.float64)
        block = block_pose(obs)
        error = self._pose_error(block)
        cfg = self.config
        if (np.linalg.norm(error[:2]) < cfg.hold_distance
                and abs(error[2]) < self.rho * cfg.hold_angle):
            return agent.copy()
        self._update_contact(block, agent)
        if self._contact is None:
            return agent.copy()
        point, direction, pre = (x[self._contact] for x in self._world_candidates(block))
        if not self._pushing and np.linalg.norm(agent - pre) < 4.0:
            self._pushing = True
        if self._pushing and self._off_contact(agent, point, direction):
            self._pushing = False
        if self._pushing:
            step = np.clip(cfg.push_gain * np.linalg.norm(error), 1.0, cfg.max_push)
            target = agent + direction * step
        else:
            target = self._approach(agent, pre, block)
        return np.clip(target, ARENA[0], ARENA[1])

    def _update_contact(self, block: np.ndarray, agent: np.ndarray) -> None:
        """Pick a new contact at the start, when travel stalls or when the current one fades.

        The current contact fades when its score falls below ``repick_score``.
        """
        moved = np.linalg.norm(agent - self._last_agent) if self._contact is not None else 1.0
        self._stalled = self._stalled + 1 if moved < 0.5 and not self._pushing else 0
        self._last_agent = agent
        if (self._contact is None or self._stalled >= self.config.stall_ticks
                or self._scores(block, agent)[self._contact] < self.config.repick_score):
            self._contact = self._pick_contact(block, agent)
            self._pushing = False
            self._stalled = 0

    def _off_contact(self, agent: np.ndarray, point: np.ndarray, direction: np.ndarray) -> bool:
        """True when the disc has drifted far from the line through the contact along d."""
        rel = point - agent
        lateral = abs(rel[0] * direction[1] - rel[1] * direction[0])
        return bool(lateral > 12.0 or rel @ direction > self.config.standoff + 8.0)

    def _approach(self, agent: np.ndarray, pre: np.ndarray, block: np.ndarray) -> np.ndarray:
        """Next travel target towards the pre-contact point, ``lead`` px ahead at most."""
        outline = block[:2] + T_OUTLINE @ rotation(block[2]).T
        route, _ = self._ring_route(agent, pre, block)
        target = route[0]
        for point in route[::-1]:
            if self._clear(agent, point, outline):
                target = point
                break
        if np.linalg.norm(target - agent) < 2.0:  # parked on the ring with pre hidden: go anyway
            target = route[-1]
        offset = target - agent
        length = float(np.linalg.norm(offset))
        lead = self.config.lead
        return target if length < lead else agent + offset * lead / length

    @staticmethod
    def _clear(start: np.ndarray, end: np.ndarray, outline: np.ndarray) -> bool:
        """True when the disc can slide from start to end without (more than brushing) the T."""
        ts = np.linspace(0.0, 1.0, max(2, int(np.linalg.norm(end - start) / 4.0) + 1))
        path = start + ts[:, None] * (end - start)
        return bool(point_polygon_distance(path, outline).min() >= AGENT_RADIUS - 1.0)

    def _ring_route(self, agent: np.ndarray, pre: np.ndarray,
                    block: np.ndarray) -> tuple[np.ndarray, bool]:
        """Waypoints round the block's ring from the disc to ``pre``.

        Both ways round are considered; a way whose ring points leave the arena is blocked.
        The shorter open way is taken, or this episode's preferred way when the two are within
        ``orbit_tie`` of each other.

        Returns:
            route: (P, 2) waypoints, ``pre`` last.
            open: False when both ways are blocked (the route is then the shorter one).
        """
        rot = rotation(block[2])
        com = block[:2] + rot @ T_COM
        ring = block[:2] + self.ring @ rot.T
        ring_angles = np.arctan2(ring[:, 1] - com[1], ring[:, 0] - com[0])
        start = np.arctan2(agent[1] - com[1], agent[0] - com[0])
        goal = np.arctan2(pre[1] - com[1], pre[0] - com[0])
        ways = []
        for way in (1.0, -1.0):
            rel = (way * (ring_angles - start)) % (2 * np.pi)
            order = np.argsort(rel)
            order = order[rel[order] < (way * (goal - start)) % (2 * np.pi)]
            route = np.concatenate([ring[order], pre[None]])
            length = np.linalg.norm(np.diff(np.concatenate([agent[None], route]), axis=0),
                                    axis=1).sum()
            blocked = not np.all((ring[order] >= ARENA[0]) & (ring[order] <= ARENA[1]))
            ways.append((blocked, float(length), route))
        (b0, l0, r0), (b1, l1, r1) = ways
        if b0 != b1:
            return (r1 if b0 else r0), True
        if min(l0, l1) > (1.0 - self.config.orbit_tie) * max(l0, l1):
            return (r0 if self._orbit_side > 0 else r1), not b0
        return (r0 if l0 <= l1 else r1), not b0
