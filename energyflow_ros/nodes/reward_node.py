"""reward_node: the reward extracted from the policy's energy, for monitoring and RL (lifecycle).

The reward scores an observation history with the action *chunk* that followed it, so the
reward of the observation stamped ``t`` is emitted once the ``H`` commands of that chunk have
been executed: step ``i`` of the chunk is the command in effect at ``t + (i + 1) * period``
(the same convention as the policy: in the training data action ``t`` is the target applied
during the tick after observation ``t``). The reward of ``t`` is therefore published about
``H * period`` after ``t`` (0.8 s for H = 8 at 10 Hz), once per model control period, with
``t``'s stamp on the stamped variant.

Formula (:class:`~energyflow_ros.runtime.reward.EnergyReward`), at the model's
``reward_sigma``: with ``reward_variant`` ``centered`` (default, EnergyFlow's centred reward)
``r = -[E(o, a) - mean_m E(o, ref_m)]``; with ``soft_value``
``r = -E(o, a) - log mean_m exp(-E(o, ref_m) - log q(ref_m))`` (an estimate of log pi(a|o));
with ``policy_value`` the references are the particles the model's own sampler draws for the
observation (about 0 for a chunk the policy would choose, negative otherwise).

Topics:
    ``/energyflow/reward`` (std_msgs/Float64): r.
    ``/energyflow/reward_stamped`` (geometry_msgs/PointStamped): ``header.stamp`` = the
        observation's stamp, ``point.x`` = r, ``point.y`` = E of the executed chunk,
        ``point.z`` = the mean reference energy (so x = z - y for ``centered``; 0 for
        ``occupancy``, which has no references).
        PointStamped is the standard header-carrying message with three float64 fields: it
        records, plots and bags with every stock tool, and needs no custom message package
        (this is an ament_python package).
    ``/diagnostics``: rewards published, windows skipped (no command), last reward.
Subscriptions: the observation streams (``observation.*`` as for policy_node) and the executed
command (``command_interface`` ``forward``: Float64MultiArray in ``joint_names`` order;
``trajectory``: JointTrajectory by name, first point).
"""

from __future__ import annotations

from collections import deque
import threading
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PointStamped
import numpy as np
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from std_msgs.msg import Float64, Float64MultiArray
from trajectory_msgs.msg import JointTrajectory

from energyflow_ros.nodes.diagnostics import make_diagnostics
from energyflow_ros.nodes.lifecycle import AutostartMixin
from energyflow_ros.nodes.messages import array_values, sec_to_stamp, trajectory_by_name
from energyflow_ros.nodes.model_loader import ConfigError, declare_provider_params, load_onnx
from energyflow_ros.nodes.observers import ObservationInputs
from energyflow_ros.nodes.params import (declare, declare_observation_params,
                                         observation_params, reliable_qos)
from energyflow_ros.nodes.runner import spin_until_interrupted
from energyflow_ros.runtime.onnx_model import check_joints, JointMismatchError
from energyflow_ros.runtime.reward import EnergyReward, reward_from_energies

__all__ = ['RewardNode', 'main']


class RewardNode(AutostartMixin, LifecycleNode):
    """Publishes the centred energy reward of executed chunks (see module doc)."""

    def __init__(self, node_name: str = 'reward_node', **kwargs: Any) -> None:
        """Declare the parameters; create the diagnostics publisher."""
        super().__init__(node_name, **kwargs)
        d = declare
        self.p = {
            'autostart': d(self, 'autostart', False, 'configure and activate at start-up'),
            'model_path': d(self, 'model_path', '', 'exported model (<stem>.onnx)'),
            'joint_names': d(self, 'joint_names', [], 'commanded joints in command order '
                             '(default: the model joint names)'),
            'command_interface': d(self, 'command_interface', 'forward',
                                   "'forward' or 'trajectory'"),
            'command_topic': d(self, 'command_topic', '/forward_position_controller/commands',
                               'executed command (Float64MultiArray)'),
            'trajectory_topic': d(self, 'trajectory_topic',
                                  '/joint_trajectory_controller/joint_trajectory',
                                  'executed command (JointTrajectory)'),
            'reward_topic': d(self, 'reward_topic', '/energyflow/reward', 'Float64 reward'),
            'stamped_reward_topic': d(self, 'stamped_reward_topic',
                                      '/energyflow/reward_stamped', 'PointStamped reward'),
            'reward_variant': d(self, 'reward_variant', 'centered',
                                "'centered', 'soft_value', 'policy_value' or "
                                "'occupancy' (runtime/reward.py)"),
            'reward_sigma': d(self, 'reward_sigma', 0.0, 'noise scale of the energy; 0: the '
                              "model's reward_sigma (sigma_min)", (0.0, 100.0)),
            'max_command_gap_s': d(self, 'max_command_gap_s', 0.5, 'a chunk step with no '
                                   'command this recent is not scored', (0.0, 60.0)),
        }
        self.p.update(declare_provider_params(self, declare))
        self._stream_names = declare_observation_params(self)
        self._lock = threading.Lock()
        self._entities: list[Any] = []
        self._timer = None
        self._error = ''
        self.published = self.skipped = self.input_errors = 0
        self.last_reward = float('nan')
        self.diag_pub = self.create_publisher(DiagnosticArray, '/diagnostics', reliable_qos())
        self.create_timer(1.0, self.publish_diagnostics)
        if self.p['autostart']:
            self.schedule_autostart()

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Load the energy graph, check joints and streams, subscribe, create publishers."""
        if self.configure_or_fail(self._destroy_entities) == TransitionCallbackReturn.FAILURE:
            return TransitionCallbackReturn.FAILURE
        meta = self.meta
        self.get_logger().info(f'reward of {self.p["model_path"]}: sigma {self.reward.sigma:g},'
                               f' {len(self.reward.reference)} reference chunks, delay '
                               f'{meta.horizon * meta.control_period_s:g} s')
        return TransitionCallbackReturn.SUCCESS

    def _configure(self) -> None:
        model = load_onnx(self.p['model_path'], self.p, graphs=['sampler', 'energy'])
        meta = model.metadata
        self.joint_names = tuple(self.p['joint_names']) or meta.joint_names
        try:
            check_joints(meta, self.joint_names, self.p['model_path'])
            self.reward = EnergyReward(model, self.p['reward_variant'],
                                       sigma=self.p['reward_sigma'] or None)
        except (JointMismatchError, ValueError) as exc:
            raise ConfigError(str(exc)) from exc
        if self.p['command_interface'] not in ('forward', 'trajectory'):
            raise ConfigError(f"command_interface = {self.p['command_interface']!r}: expected "
                              "'forward' or 'trajectory'")
        self.meta, self.period = meta, meta.control_period_s
        self._to_model = np.array([self.joint_names.index(n) for n in meta.joint_names])
        self._inputs = ObservationInputs(self, meta, self.joint_names,
                                         observation_params(self, self._stream_names),
                                         self._lock, self._on_input_error,
                                         on_restart=self._forget_timeline)
        self._commands: deque[tuple[float, np.ndarray]] = deque()
        self._pending: deque[tuple[float, np.ndarray]] = deque()
        self._last_obs_stamp = float('nan')
        self.reward_pub = self.create_publisher(Float64, self.p['reward_topic'], 10)
        self.stamped_pub = self.create_publisher(PointStamped, self.p['stamped_reward_topic'],
                                                 10)
        self._entities = [self.reward_pub, self.stamped_pub, *self._inputs.subscribe()]
        if self.p['command_interface'] == 'forward':
            self._entities.append(self.create_subscription(
                Float64MultiArray, self.p['command_topic'], self._on_forward, reliable_qos(50)))
        else:
            self._entities.append(self.create_subscription(
                JointTrajectory, self.p['trajectory_topic'], self._on_trajectory,
                reliable_qos(50)))

    def _destroy_entities(self) -> None:
        for entity in self._entities:
            if hasattr(entity, 'publish'):
                self.destroy_publisher(entity)
            else:
                self.destroy_subscription(entity)
        self._entities = []

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Start scoring at the model's control period."""
        self._pending.clear()
        self._timer = self.create_timer(self.period, self._tick)
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Stop scoring."""
        if self._timer is not None:
            self.destroy_timer(self._timer)
            self._timer = None
        return TransitionCallbackReturn.SUCCESS

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Release the model and the interfaces."""
        self._destroy_entities()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Stop and release everything."""
        self.on_deactivate(state)
        return self.on_cleanup(state)

    # ------------------------------------------------------------------ inputs
    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _on_input_error(self, message: str) -> None:
        self.input_errors += 1
        self.get_logger().warning(f'rejected input: {message}', throttle_duration_sec=1.0)

    def _forget_timeline(self) -> None:
        """The clock went back: windows and commands of the old timeline can never be scored
        (and would block the new one's), so they are dropped."""
        dropped = len(self._pending)
        self._pending.clear()
        self._commands.clear()
        self._last_obs_stamp = float('nan')
        self.skipped += dropped

    def _store_command(self, cmd: np.ndarray) -> None:
        if not np.all(np.isfinite(cmd)):
            self._on_input_error('non-finite command')
            return
        now = self._now()
        self._commands.append((now, cmd[self._to_model]))
        keep = (self.meta.horizon + 4) * self.period + self.p['max_command_gap_s']
        while self._commands and self._commands[0][0] < now - keep:
            self._commands.popleft()

    def _on_forward(self, msg: Float64MultiArray) -> None:
        try:
            self._store_command(array_values(msg, len(self.joint_names)))
        except ValueError as exc:
            self._on_input_error(f"{self.p['command_topic']}: {exc}")

    def _on_trajectory(self, msg: JointTrajectory) -> None:
        try:
            _, positions = trajectory_by_name(msg, self.joint_names)
        except ValueError as exc:
            self._on_input_error(f"{self.p['trajectory_topic']}: {exc}")
            return
        self._store_command(positions[0])

    # ------------------------------------------------------------------ scoring
    def _tick(self) -> None:
        now = self._now()
        with self._lock:
            snapshot = self._inputs.history.stacked(now)
        if snapshot is not None and snapshot[1] != self._last_obs_stamp:
            self._last_obs_stamp = snapshot[1]
            self._pending.append((snapshot[1], snapshot[0]))
        horizon = self.meta.horizon
        while self._pending and self._pending[0][0] + horizon * self.period <= now:
            t_obs, obs = self._pending.popleft()
            chunk = self.executed_chunk(t_obs)
            if chunk is None:
                self.skipped += 1
                continue
            self._publish(t_obs, obs, chunk)

    def executed_chunk(self, t_obs: float) -> np.ndarray | None:
        """(H, A) commands in effect at ``t_obs + (i + 1) * period`` (model order), or None."""
        times = np.array([t for t, _ in self._commands])
        if not len(times):
            return None
        rows = []
        for i in range(self.meta.horizon):
            tau = t_obs + (i + 1) * self.period
            k = int(np.searchsorted(times, tau, side='right')) - 1
            if k < 0 or tau - times[k] > self.p['max_command_gap_s']:
                return None
            rows.append(self._commands[k][1])
        return np.array(rows)

    def _publish(self, t_obs: float, obs: np.ndarray, chunk: np.ndarray) -> None:
        meta = self.meta
        z_obs = (obs - np.asarray(meta.obs_mean)) / np.asarray(meta.obs_std)
        z_act = (chunk - np.asarray(meta.action_mean)) / np.asarray(meta.action_std)
        try:
            energy, ref = self.reward.energies(z_obs[None], z_act[None])
        except ValueError as exc:
            self.skipped += 1
            self._on_input_error(f'window at {t_obs:.3f} s not scored: {exc}')
            return
        # occupancy has no reference chunks: z is 0 (x = -y)
        e, e_ref = float(energy[0]), float(np.mean(ref[0], dtype=np.float64)) if ref.size else 0.0
        reward = float(reward_from_energies(energy, ref, self.reward.reference,
                                            self.reward.variant)[0])
        self.reward_pub.publish(Float64(data=reward))
        msg = PointStamped()
        msg.header.stamp = sec_to_stamp(t_obs)
        msg.header.frame_id = 'reward'
        msg.point.x, msg.point.y, msg.point.z = reward, e, e_ref
        self.stamped_pub.publish(msg)
        self.published += 1
        self.last_reward = reward

    def publish_diagnostics(self) -> None:
        """One DiagnosticArray: state, rewards published and skipped, last reward."""
        state = self._state_machine.current_state[1]
        level, message = ('error', self._error) if self._error else ('ok', state)
        values = {'state': state, 'rewards': self.published, 'skipped_windows': self.skipped,
                  'input_errors': self.input_errors, 'last_reward': self.last_reward}
        self.diag_pub.publish(make_diagnostics(self.get_clock().now().to_msg(),
                                               f'{self.get_name()}: reward', self.get_name(),
                                               level, message, values))


def main(args: list[str] | None = None) -> None:
    """Spin the reward node until Ctrl-C / SIGTERM."""
    spin_until_interrupted(RewardNode, args)


if __name__ == '__main__':
    main()
