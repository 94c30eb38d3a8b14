"""Two blocks, two targets: IBC's multimodal block-push layout on the official ``mujoco`` wheel.

The scene is a table, a planar position-controlled effector (two slide joints driven by
position servos), two 4 cm cubes (planar joints x, y, yaw with dry friction standing in for
table friction) and two target zones (sites, not physical). Units are metres and radians.

Layout (IBC ``BlockPushMultimodal`` as forked by Diffusion Policy): the effector starts at
(0.30, -0.40); each block at x = 0.4 +- 0.1, y = -0.2 +- 0.15 with yaw U(0, pi), the second
redrawn until the two differ by more than 0.1 in x (IBC's rejection test compares x only; the
first is redrawn only when no second fits, so it stays near uniform — revision 2: revision 1
redrew both, which put 9 % of first blocks within 3 cm of the centre line instead of 30 %); the
targets sit at x = 0.4 +- 0.12 (side chosen at random, +- 5 mm), y = 0.2 +- 7.5 mm, yaw
pi +- pi/30. Orientations are reported modulo pi, as Diffusion Policy does.

Observation (16): block_translation (2), block_orientation (1), block2_translation (2),
block2_orientation (1), effector_translation (2), effector_target_translation (2),
target_translation (2), target_orientation (1), target2_translation (2),
target2_orientation (1). With ``relative_obs=True`` 12 more follow (:data:`RELATIVE_NAMES`):
each block's offset to each target and the effector's offset to each block, in metres (what
the expert decides by, which an MLP otherwise has to learn to subtract). Action (2): the
effector's absolute target xy in metres, clipped to
the workspace x in [0.15, 0.70], y in [-0.50, 0.50]; 10 Hz control.

Metrics follow Diffusion Policy's evaluation, where events are latched over the episode: a
block is in a target when its centre is within ``goal_tolerance`` (5 cm) of the target's
centre; ``p1`` = at some step a block was in a target; ``p2`` = at some step both blocks were
in different targets (the episode ends then, so ``p2`` also holds at the end). ``mode`` is
``2 * block + target`` of the first block-in-target event (0: block->target first,
1: block->target2 first, 2: block2->target first, 3: block2->target2 first), -1 if none.
"""

from __future__ import annotations

import math
from typing import Any

import mujoco
import numpy as np

from energyflow_ros.sim.base import Expert, StepResult, Task, TaskInfo

__all__ = [
    'MODES', 'OBS_NAMES', 'RELATIVE_NAMES', 'BlockPushExpert', 'BlockPushTask',
    'build_blockpush_mjcf', 'detour_waypoint', 'sample_block_poses', 'sample_target_poses',
]

WORKSPACE_LOW = (0.15, -0.5)
WORKSPACE_HIGH = (0.7, 0.5)
EFFECTOR_START = (0.3, -0.4)
BLOCK_HALF = 0.02
EFFECTOR_RADIUS = 0.0125
TIMESTEP = 0.01
# The four modes: ((first_block, first_target), (second_block, second_target)), IBC's order.
MODES = (((0, 0), (1, 1)), ((0, 1), (1, 0)), ((1, 0), (0, 1)), ((1, 1), (0, 0)))

OBS_NAMES = (
    'block_translation_x', 'block_translation_y', 'block_orientation',
    'block2_translation_x', 'block2_translation_y', 'block2_orientation',
    'effector_translation_x', 'effector_translation_y',
    'effector_target_translation_x', 'effector_target_translation_y',
    'target_translation_x', 'target_translation_y', 'target_orientation',
    'target2_translation_x', 'target2_translation_y', 'target2_orientation',
)
# Offsets appended with relative_obs: (name, minuend, subtrahend) over OBS_NAMES' xy slices.
_RELATIVE = (('block_to_target', 'block', 'target'), ('block_to_target2', 'block', 'target2'),
             ('block2_to_target', 'block2', 'target'), ('block2_to_target2', 'block2', 'target2'),
             ('effector_to_block', 'effector', 'block'),
             ('effector_to_block2', 'effector', 'block2'))
RELATIVE_NAMES = tuple(f'{name}_{axis}' for name, _, _ in _RELATIVE for axis in 'xy')
_BLOCK_XY = (slice(0, 2), slice(3, 5))
_EFFECTOR_XY = slice(6, 8)
_TARGET_XY = (slice(10, 12), slice(13, 15))
_YAW = [2, 5, 12, 15]

_BLOCK_BODY = """
    <body name="{name}" pos="0 0 {half}">
      <joint name="{name}_x" type="slide" axis="1 0 0" frictionloss="0.3" damping="0.5"/>
      <joint name="{name}_y" type="slide" axis="0 1 0" frictionloss="0.3" damping="0.5"/>
      <joint name="{name}_yaw" type="hinge" axis="0 0 1" frictionloss="0.004" damping="0.001"/>
      <geom name="{name}" type="box" size="{half} {half} {half}" mass="0.1" rgba="{rgba}"/>
    </body>"""


def build_blockpush_mjcf() -> str:
    """The MJCF of the scene as a string (no assets, no rendering needed).

    Returns:
        An XML string for ``mujoco.MjModel.from_xml_string``.
    """
    blocks = ''.join(
        _BLOCK_BODY.format(name=name, half=BLOCK_HALF, rgba=rgba)
        for name, rgba in (('block', '0.2 0.3 0.9 1'), ('block2', '0.9 0.5 0.1 1')))
    (xlo, ylo), (xhi, yhi) = WORKSPACE_LOW, WORKSPACE_HIGH
    return f"""
<mujoco model="blockpush">
  <option timestep="{TIMESTEP}" integrator="implicitfast"/>
  <default><geom condim="3" friction="0.3 0.005 0.0001"/></default>
  <worldbody>
    <geom name="table" type="plane" size="0.6 0.6 0.01" pos="0.4 0 0" contype="0"
          conaffinity="0" rgba="0.8 0.8 0.8 1"/>
    <site name="target" type="box" size="{BLOCK_HALF} {BLOCK_HALF} 0.001" rgba="0 0 1 0.3"/>
    <site name="target2" type="box" size="{BLOCK_HALF} {BLOCK_HALF} 0.001" rgba="1 .5 0 .3"/>
    <body name="effector" pos="0 0 {BLOCK_HALF}">
      <joint name="effector_x" type="slide" axis="1 0 0"/>
      <joint name="effector_y" type="slide" axis="0 1 0"/>
      <geom name="effector" type="capsule" fromto="0 0 -0.012 0 0 0.012"
            size="{EFFECTOR_RADIUS}" mass="0.5" rgba="0.3 0.3 0.3 1"/>
    </body>{blocks}
  </worldbody>
  <actuator>
    <position name="effector_x" joint="effector_x" kp="1800" kv="60" ctrlrange="{xlo} {xhi}"
              forcerange="-40 40"/>
    <position name="effector_y" joint="effector_y" kp="1800" kv="60" ctrlrange="{ylo} {yhi}"
              forcerange="-40 40"/>
  </actuator>
</mujoco>
"""


class BlockPushTask(Task):
    """IBC's two-block push task (16-D state observation, 2-D absolute xy action, 10 Hz).

    Args:
        max_steps: episode length limit in control steps.
        goal_tolerance: a block is in a target within this distance of its centre (metres).
        substeps: physics steps of ``0.01`` s per control step; 10 gives 10 Hz control.
        relative_obs: append the 12 block-target and effector-block offsets
            (:data:`RELATIVE_NAMES`) to the observation.
    """

    def __init__(self, *, max_steps: int = 350, goal_tolerance: float = 0.05,
                 substeps: int = 10, relative_obs: bool = False) -> None:
        if not isinstance(max_steps, int) or max_steps <= 0:
            raise ValueError(f'max_steps = {max_steps!r} is invalid: expected a positive int')
        if not goal_tolerance > 0:
            raise ValueError(f'goal_tolerance = {goal_tolerance!r} is invalid: expected > 0')
        if not isinstance(substeps, int) or substeps <= 0:
            raise ValueError(f'substeps = {substeps!r} is invalid: expected a positive int')
        if not isinstance(relative_obs, bool):
            raise ValueError(f'relative_obs = {relative_obs!r} is invalid: expected true or '
                             'false')
        self.goal_tolerance = float(goal_tolerance)
        self.substeps = substeps
        self.relative_obs = relative_obs
        self.model = mujoco.MjModel.from_xml_string(build_blockpush_mjcf())
        self.data = mujoco.MjData(self.model)
        self.info = TaskInfo(
            name='blockpush', obs_names=OBS_NAMES + (RELATIVE_NAMES if relative_obs else ()),
            action_names=('effector_x', 'effector_y'),
            action_low=WORKSPACE_LOW, action_high=WORKSPACE_HIGH,
            control_hz=1.0 / (TIMESTEP * substeps), max_steps=max_steps, metric_name='p1',
            revision=2)
        self._low = np.array(WORKSPACE_LOW)
        self._high = np.array(WORKSPACE_HIGH)
        self._block_qpos = [self._qpos_slice(name) for name in ('block', 'block2')]
        self._block_xy_index = np.r_[self._block_qpos[0], self._block_qpos[1]].reshape(2, 3)[:, :2]
        self._effector_qpos = self._qpos_slice('effector')
        self._target_sites = [self.model.site(name).id for name in ('target', 'target2')]
        self._targets = np.zeros((2, 3))
        self._steps = 0
        self._p1 = self._p2 = False
        self._mode = -1
        self._started = False

    def _qpos_slice(self, body: str) -> slice:
        """The qpos entries of a body's planar joints (x, y[, yaw])."""
        start = self.model.jnt_qposadr[self.model.joint(f'{body}_x').id]
        return slice(start, start + (2 if body == 'effector' else 3))

    # ------------------------------------------------------------------ episode

    def reset(self, seed: int) -> np.ndarray:
        """Start an episode from the seed's layout; returns the first observation.

        Args:
            seed: picks the block poses and the target poses.

        Returns:
            The (16,) observation ((28,) with ``relative_obs``).
        """
        rng = np.random.default_rng(seed)
        blocks = sample_block_poses(rng)
        targets = sample_target_poses(rng)
        mujoco.mj_resetData(self.model, self.data)
        for qpos, pose in zip(self._block_qpos, blocks, strict=True):
            self.data.qpos[qpos] = pose
        self.data.qpos[self._effector_qpos] = EFFECTOR_START
        self.data.ctrl[:] = EFFECTOR_START
        for site, pose in zip(self._target_sites, targets, strict=True):
            self.model.site_pos[site] = (pose[0], pose[1], 0.001)
            self.model.site_quat[site] = (math.cos(pose[2] / 2), 0.0, 0.0, math.sin(pose[2] / 2))
        self._targets = targets
        mujoco.mj_forward(self.model, self.data)
        self._steps = 0
        self._p1 = self._p2 = False
        self._mode = -1
        self._started = True
        return self._observation()

    def step(self, action: np.ndarray) -> StepResult:
        """Move the effector's target to ``action`` (clipped) and simulate one control period.

        Args:
            action: (2,) absolute effector target xy in metres.

        Returns:
            The step's result; ``success`` is both blocks in different targets now.

        Raises:
            ValueError: the action has the wrong shape or non-finite entries.
            RuntimeError: :meth:`reset` was not called first.
        """
        if not self._started:
            raise RuntimeError('BlockPushTask.step called before reset')
        self.data.ctrl[:] = np.clip(self._check_action(action), self._low, self._high)
        mujoco.mj_step(self.model, self.data, nstep=self.substeps)
        self._steps += 1
        obs = self._observation()
        pairs = self._blocks_in_targets()
        success = self._update_events(pairs)
        done = success or self._steps >= self.info.max_steps
        info: dict[str, Any] = {'p1': self._p1, 'p2': self._p2, 'mode': self._mode,
                                'blocks_in_targets': len(pairs)}
        return StepResult(obs=obs, done=done, success=success, info=info)

    def episode_metrics(self) -> dict[str, float]:
        """Metrics so far: success (= p2), p1, p2, mode (-1 if no block reached a target), steps.

        Returns:
            A dict of floats.
        """
        return {'success': float(self._p2), 'p1': float(self._p1), 'p2': float(self._p2),
                'mode': float(self._mode), 'steps': float(self._steps)}

    # ------------------------------------------------------------------ state

    def block_xy(self) -> np.ndarray:
        """(2, 2) current block centres, block then block2 (privileged state)."""
        return self.data.qpos[self._block_xy_index]

    def target_xy(self) -> np.ndarray:
        """(2, 2) target centres, target then target2."""
        return self._targets[:, :2].copy()

    def _observation(self) -> np.ndarray:
        """The 16-D IBC observation (orientations modulo pi), then the offsets if asked."""
        qpos = self.data.qpos
        obs = np.empty(16)
        obs[0:3] = qpos[self._block_qpos[0]]
        obs[3:6] = qpos[self._block_qpos[1]]
        obs[6:8] = qpos[self._effector_qpos]
        obs[8:10] = self.data.ctrl
        obs[10:13] = self._targets[0]
        obs[13:16] = self._targets[1]
        obs[_YAW] %= math.pi
        if not self.relative_obs:
            return obs
        xy = {'block': obs[_BLOCK_XY[0]], 'block2': obs[_BLOCK_XY[1]],
              'effector': obs[_EFFECTOR_XY], 'target': obs[_TARGET_XY[0]],
              'target2': obs[_TARGET_XY[1]]}
        return np.concatenate([obs, *(xy[a] - xy[b] for _, a, b in _RELATIVE)])

    def _check_action(self, action: np.ndarray) -> np.ndarray:
        """The action as a float array, or ValueError naming what is wrong with it."""
        try:
            arr = np.asarray(action, dtype=float)
        except (TypeError, ValueError) as err:
            raise ValueError(f'action must be numeric with shape (2,), got {action!r}') from err
        if arr.shape != (2,):
            raise ValueError(f'action must have shape (2,), got shape {arr.shape}')
        if not np.all(np.isfinite(arr)):
            raise ValueError(f'action must be finite (no NaN or inf), got {arr.tolist()}')
        return arr

    def _blocks_in_targets(self) -> list[tuple[int, int]]:
        """(block, target) pairs with the block's centre within tolerance of the target."""
        offsets = self.block_xy()[:, None] - self._targets[None, :, :2]
        dists = np.sqrt((offsets ** 2).sum(axis=-1))
        return [(b, t) for b in range(2) for t in range(2) if dists[b, t] < self.goal_tolerance]

    def _update_events(self, pairs: list[tuple[int, int]]) -> bool:
        """Latch p1, p2 and the mode; True if both blocks are in different targets now.

        Args:
            pairs: (block, target) pairs with the block in the target now.
        """
        if pairs and self._mode < 0:
            block, target = pairs[0]
            self._mode = 2 * block + target
        self._p1 = self._p1 or bool(pairs)
        both = any(b0 != b1 and t0 != t1 for b0, t0 in pairs for b1, t1 in pairs)
        self._p2 = self._p2 or both
        return both


def sample_block_poses(rng: np.random.Generator) -> np.ndarray:
    """IBC's block layout: two (x, y, yaw) poses, more than 0.1 m apart in x; the second is
    redrawn (up to 100 times, else both are) until it fits.

    Args:
        rng: the episode's generator.

    Returns:
        (2, 3) poses, block then block2.
    """
    def draw() -> np.ndarray:
        return np.array([0.4 + rng.uniform(-0.1, 0.1), -0.2 + rng.uniform(-0.15, 0.15),
                         rng.uniform(0.0, math.pi)])

    for _ in range(1000):
        first = draw()
        for _ in range(100):
            second = draw()
            if abs(second[0] - first[0]) > 0.1:
                return np.stack([first, second])
    raise RuntimeError('could not place the second block')  # pragma: no cover


def sample_target_poses(rng: np.random.Generator) -> np.ndarray:
    """Diffusion Policy's target layout: left/right of x = 0.4 by 0.12 m, at y = 0.2.

    Args:
        rng: the episode's generator.

    Returns:
        (2, 3) poses (x, y, yaw), target then target2.
    """
    side = rng.choice([-1.0, 1.0])
    poses = []
    for offset in (0.12 * side, -0.12 * side):
        poses.append([0.4 + offset + rng.uniform(-0.005, 0.005),
                      0.2 + rng.uniform(-0.0075, 0.0075),
                      math.pi + rng.uniform(-math.pi / 30, math.pi / 30)])
    return np.array(poses)


# ---------------------------------------------------------------------- oracle geometry

def _unit(vec: np.ndarray) -> np.ndarray:
    """``vec`` scaled to length 1 (x axis for a zero vector)."""
    norm = float(np.linalg.norm(vec))
    return vec / norm if norm > 1e-9 else np.array([1.0, 0.0])


def _rotate(vec: np.ndarray, angle: float) -> np.ndarray:
    """``vec`` (2,) rotated counter-clockwise by ``angle`` radians."""
    c, s = math.cos(angle), math.sin(angle)
    return np.array([c * vec[0] - s * vec[1], s * vec[0] + c * vec[1]])


def _segment_hit(start: np.ndarray, goal: np.ndarray, centre: np.ndarray,
                 radius: float) -> float | None:
    """Where along start->goal (0..1) the path comes closest to ``centre``, if inside ``radius``.

    A path that only moves away from the centre (closest point at its start) does not count.
    """
    seg = goal - start
    length2 = float(seg @ seg)
    if length2 < 1e-12:
        return None
    t = float(np.clip((centre - start) @ seg / length2, 0.0, 1.0))
    if t <= 1e-6 or np.linalg.norm(start + t * seg - centre) >= radius:
        return None
    return t


def detour_waypoint(start: np.ndarray, goal: np.ndarray,
                    obstacles: list[tuple[np.ndarray, float, int]],
                    arc: float = 0.6) -> np.ndarray:
    """The next point towards ``goal`` that goes around disc obstacles.

    Args:
        start: (2,) current effector position.
        goal: (2,) where to go.
        obstacles: (centre (2,), radius, side) per disc; side +1 goes round counter-clockwise,
            -1 clockwise, 0 the shorter way towards the goal.
        arc: angle stepped along the obstacle's circle per call, radians.

    Returns:
        (2,) the goal itself when the straight path is clear, else a point on a circle slightly
        larger than the first obstacle cut by the path, ``arc`` further round on its side.
    """
    hits = [(t, c, r, s) for c, r, s in obstacles
            if (t := _segment_hit(start, goal, c, r)) is not None]
    if not hits:
        return goal
    _, centre, radius, side = min(hits, key=lambda hit: hit[0])
    out = _unit(start - centre)
    if side == 0:
        cross = out[0] * (goal - centre)[1] - out[1] * (goal - centre)[0]
        side = 1 if cross >= 0 else -1
    return centre + 1.15 * radius * _rotate(out, side * arc)


class BlockPushExpert(Expert):
    """A scripted pusher with IBC's four modes (which block to which target x order).

    Per episode the reset seed picks the mode and, for each of the two pushes, the side on
    which the effector detours round the other block. Each push approaches a point
    ``pre_push`` behind the block on the line to its target (going round the blocks in the
    way), pushes along that line while steering, and backs off once the block is in; a block
    knocked out of its target on the way is pushed again. ``mode`` indexes :data:`MODES` and
    matches the task's ``mode`` metric when the pushes go as planned.

    Args:
        task: the task it demonstrates on (read for its tolerance; the observation carries the
            full state).
        pre_push: distance behind the block's centre of the approach point, metres.
        approach_speed: effector speed while approaching, m/s.
        push_speed: effector speed while pushing, m/s.
    """

    def __init__(self, task: BlockPushTask, *, pre_push: float = 0.055,
                 approach_speed: float = 0.35, push_speed: float = 0.2) -> None:
        for name, value in (('pre_push', pre_push), ('approach_speed', approach_speed),
                            ('push_speed', push_speed)):
            if not value > 0:
                raise ValueError(f'{name} = {value!r} is invalid: expected > 0')
        self.task = task
        self.pre_push = float(pre_push)
        dt = 1.0 / task.info.control_hz
        self.approach_step = approach_speed * dt
        self.push_step = push_speed * dt
        self.done_radius = 0.4 * task.goal_tolerance
        self.mode = 0
        self.detour_sides = (1, 1)
        self._legs: list[tuple[int, int]] = list(MODES[0])
        self._leg = 0
        self._phase = 'approach'
        self._retreat_goal = np.zeros(2)

    def reset(self, seed: int) -> None:
        """Pick this episode's mode and detour sides from ``seed``.

        Args:
            seed: the episode seed (decorrelated from the task's layout draw).
        """
        rng = np.random.default_rng([seed, 0x0B10C])
        self.mode = int(rng.integers(len(MODES)))
        self.detour_sides = tuple(int(s) for s in rng.choice([-1, 1], size=2))
        self._legs = list(MODES[self.mode])
        self._leg = 0
        self._phase = 'approach'

    def act(self, obs: np.ndarray) -> np.ndarray:
        """The effector's next absolute target for the observation.

        Args:
            obs: (16,) observation of :class:`BlockPushTask`.

        Returns:
            (2,) effector target xy in metres.
        """
        obs = np.asarray(obs, dtype=float)
        effector = obs[_EFFECTOR_XY]
        block, target = self._legs[self._leg]
        block_xy, target_xy = obs[_BLOCK_XY[block]], obs[_TARGET_XY[target]]
        direction = _unit(target_xy - block_xy)
        if np.linalg.norm(target_xy - block_xy) < self.done_radius:
            if not self._next_leg(obs):
                return effector.copy()
            self._phase = 'retreat'
            self._retreat_goal = effector - direction * 0.04
            return self.act(obs)
        if self._phase == 'retreat':
            return self._retreat(effector)
        if self._phase == 'push' and not self._behind(effector, block_xy, direction):
            self._phase = 'approach'
        pre_push = block_xy - direction * self.pre_push
        if self._phase == 'approach' and np.linalg.norm(pre_push - effector) < 0.006:
            self._phase = 'push'
        if self._phase == 'push':
            return self._push(effector, block_xy, target_xy)
        return self._approach(effector, block_xy, pre_push, obs[_BLOCK_XY[1 - block]])

    def _next_leg(self, obs: np.ndarray) -> bool:
        """Move on to the next push, re-pushing a block knocked out of its target; False if none.

        Args:
            obs: (16,) observation.
        """
        if self._leg + 1 == len(self._legs) and len(self._legs) < 6:
            for block, target in MODES[self.mode]:
                dist = np.linalg.norm(obs[_TARGET_XY[target]] - obs[_BLOCK_XY[block]])
                if dist > 0.8 * self.task.goal_tolerance:
                    self._legs.append((block, target))
                    break
        if self._leg + 1 == len(self._legs):
            return False
        self._leg += 1
        return True

    def _toward(self, effector: np.ndarray, goal: np.ndarray, step: float) -> np.ndarray:
        """A target at most ``step`` from the effector on the way to ``goal``."""
        delta = goal - effector
        dist = float(np.linalg.norm(delta))
        return goal.copy() if dist <= step else effector + delta * (step / dist)

    def _retreat(self, effector: np.ndarray) -> np.ndarray:
        """Back away from the block just placed before heading for the next one."""
        if np.linalg.norm(self._retreat_goal - effector) < 0.005:
            self._phase = 'approach'
        return self._toward(effector, self._retreat_goal, self.approach_step)

    def _behind(self, effector: np.ndarray, block_xy: np.ndarray,
                direction: np.ndarray) -> bool:
        """Whether the effector is still close behind the block on its line to the target."""
        to_block = block_xy - effector
        misalign = math.acos(float(np.clip(_unit(to_block) @ direction, -1.0, 1.0)))
        return misalign < 0.6 and float(np.linalg.norm(to_block)) < self.pre_push + 0.02

    def _approach(self, effector: np.ndarray, block_xy: np.ndarray, pre_push: np.ndarray,
                  other_xy: np.ndarray) -> np.ndarray:
        """Head for the pre-push point, round this block the short way, the other on a side.

        The other block is passed on this push's random side (``detour_sides``).
        """
        clearance = BLOCK_HALF * math.sqrt(2) + EFFECTOR_RADIUS
        # Shrink the other block's disc when the pre-push point lies close to that block.
        other_radius = min(clearance + 0.015, float(np.linalg.norm(pre_push - other_xy)) - 0.005)
        obstacles = [(block_xy, clearance + 0.004, 0),
                     (other_xy, other_radius, self.detour_sides[min(self._leg, 1)])]
        waypoint = detour_waypoint(effector, pre_push, obstacles)
        return self._toward(effector, waypoint, self.approach_step)

    def _push(self, effector: np.ndarray, block_xy: np.ndarray,
              target_xy: np.ndarray) -> np.ndarray:
        """Push the block towards its target, aiming through its centre, slowing near it."""
        direction = _unit(target_xy - block_xy)
        contact = BLOCK_HALF + EFFECTOR_RADIUS
        advance = float(np.clip(np.linalg.norm(target_xy - block_xy), 0.004, self.push_step))
        aim = block_xy - direction * (contact - advance)
        return self._toward(effector, aim, self.push_step)
