"""policy_node: an exported energy policy driving a ros2_control arm (lifecycle node).

* ``on_configure``: read the parameters, load, validate and warm up the model (its joints and
  observation names against the parameters; any mismatch fails the transition with a message
  naming both sides, and the node stays alive in ``unconfigured``), create the interfaces,
  publish the model metadata on the latched ``~/model_info``.
* ``on_activate``: ramp in from the measured pose, start the planning worker and the control
  timer.
* control tick (one mutually exclusive callback group): read the target from the chunk queue
  (interpolated), pass it through the :class:`JointCommandFilter`, publish. It never waits for
  the sampler: :class:`~energyflow_ros.nodes.worker.PlanningWorker` refills the queue ahead
  of time. Missing, stale or non-finite observations make it hold the last measured position.
* ``on_deactivate`` / ``on_shutdown``: publish the hold command once, stop the timer.

Topics: observations (``/joint_states`` by name + configured streams, sensor-data QoS),
commands (``/forward_position_controller/commands`` Float64MultiArray in ``joint_names`` order,
or ``/joint_trajectory_controller/joint_trajectory``; reliable, depth 1), ``/diagnostics``,
``~/chunk`` (Float64MultiArray: ``data[0]`` energy, then the chunk, layout steps x joints),
``~/model_info`` (String JSON, transient local). Set ``autostart: true`` to configure and
activate at start-up without a lifecycle manager.
"""

from __future__ import annotations

import gc
import json
import math
import threading
import time
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray
import numpy as np
import rclpy
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.duration import Duration
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from std_msgs.msg import Float64MultiArray, String
from trajectory_msgs.msg import JointTrajectory

from energyflow_ros.nodes.diagnostics import make_diagnostics, RollingStats
from energyflow_ros.nodes.lifecycle import AutostartMixin
from energyflow_ros.nodes.messages import (make_chunk_array, make_float64_array,
                                           make_joint_trajectory)
from energyflow_ros.nodes.model_loader import (ConfigError, declare_provider_params,
                                               load_policy_model, LoadedModel)
from energyflow_ros.nodes.observers import ObservationInputs
from energyflow_ros.nodes.params import (command_qos, declare, declare_observation_params,
                                         latched_qos, observation_params, reliable_qos)
from energyflow_ros.nodes.runner import (ignore_signals, init_without_signal_handlers,
                                         interrupt_or_raise)
from energyflow_ros.nodes.worker import PlanningWorker, WorkerStats
from energyflow_ros.runtime.chunk_queue import ChunkQueue, Plan
from energyflow_ros.runtime.planner import describe, WARM_EXTRAPOLATION
from energyflow_ros.runtime.safety import JointCommandFilter, JointLimits

__all__ = ['PolicyNode', 'main']

COMMAND_INTERFACES = ('forward', 'trajectory')
INPUT_ERROR_HOLD_S = 2.0  # an input error keeps the diagnostics at ERROR this long
WAITING_FOR_PLAN = 'waiting for the first plan'
PLANNER_STOPPED = 'the planning thread has stopped (deactivate and activate to restart it)'
HOLD_ACK_TIMEOUT_S = 0.5  # how long a shutdown waits for the hold command to be acknowledged


class PolicyNode(AutostartMixin, LifecycleNode):
    """Runs an exported policy at the control rate with safety filtering (see module doc)."""

    def __init__(self, node_name: str = 'policy_node', **kwargs: Any) -> None:
        """Declare every parameter; create the diagnostics publisher and timer."""
        super().__init__(node_name, **kwargs)
        self.p = self._declare_parameters()
        self.p.update(self._declare_sampler_parameters())
        self.p.update(declare_provider_params(self, declare))
        self._stream_names = declare_observation_params(self)
        self._lock = threading.Lock()
        self._error = ''
        self._loaded: LoadedModel | None = None
        self._timer = None
        self._worker: PlanningWorker | None = None
        self._inputs: ObservationInputs | None = None
        self._entities: list[Any] = []
        self._reset_stats()
        self.diag_pub = self.create_publisher(DiagnosticArray, '/diagnostics', reliable_qos())
        self.create_timer(self.p['diagnostics_period_s'], self.publish_diagnostics)
        if self.p['autostart']:
            self.schedule_autostart()

    def _declare_parameters(self) -> dict[str, Any]:
        d = declare
        return {
            'autostart': d(self, 'autostart', False, 'configure and activate at start-up'),
            'model_path': d(self, 'model_path', '', 'exported model (<stem>.onnx)'),
            'joint_names': d(self, 'joint_names', [], 'commanded joints, in controller order '
                             '(default: the model joint names)'),
            'joint_lower': d(self, 'joint_lower', [], 'lower joint limits (default: the '
                             'model action_low)', element_type=float),
            'joint_upper': d(self, 'joint_upper', [], 'upper joint limits (default: the '
                             'model action_high)', element_type=float),
            'max_velocity': d(self, 'max_velocity', [], 'largest command change per second, '
                              'one value or one per joint (default: joint range / s)',
                              element_type=float),
            'control_rate_hz': d(self, 'control_rate_hz', 50.0, 'command rate',
                                 (1.0, 2000.0)),
            'command_interface': d(self, 'command_interface', 'forward',
                                   f'one of {COMMAND_INTERFACES}'),
            'forward_command_topic': d(self, 'forward_command_topic',
                                       '/forward_position_controller/commands',
                                       'Float64MultiArray output (forward interface)'),
            'trajectory_topic': d(self, 'trajectory_topic',
                                  '/joint_trajectory_controller/joint_trajectory',
                                  'JointTrajectory output (trajectory interface)'),
            'trajectory_time_from_start_s': d(self, 'trajectory_time_from_start_s', 0.0,
                                              'time_from_start of each point (0: one tick)',
                                              (0.0, 10.0)),
        }

    def _declare_sampler_parameters(self) -> dict[str, Any]:
        d = declare
        return {
            'executed_steps': d(self, 'executed_steps', 0, 'steps executed per chunk before '
                                'the next plan takes over (0: the model\'s)', (0, 10000)),
            'sampler.n_particles': d(self, 'sampler.n_particles', 0, 'particles per plan '
                                     '(0: the model\'s)', (0, 1_000_000)),
            'sampler.warm_start': d(self, 'sampler.warm_start', True,
                                    'start each plan from the previous chunk'),
            'sampler.warm_extrapolation': d(self, 'sampler.warm_extrapolation',
                                            WARM_EXTRAPOLATION, 'refill speed of the shifted '
                                            'warm-start chunk, as a fraction of its last '
                                            'step (0: repeat the last action)', (0.0, 1.0)),
            'seed': d(self, 'seed', 0, 'seed of the sampler noise', (0, 2**31 - 1)),
            'temporal_ensemble.size': d(self, 'temporal_ensemble.size', 1, 'chunks averaged '
                                        '(1: newest only)', (1, 64)),
            'temporal_ensemble.decay': d(self, 'temporal_ensemble.decay', 0.0,
                                         'weight exp(-decay * k) of the k-th newest chunk',
                                         (0.0, 100.0)),
            'ramp_in_s': d(self, 'ramp_in_s', 1.0, 'the step limit ramps up over this time '
                           'after activation or recovery', (0.0, 60.0)),
            'discontinuity_threshold': d(self, 'discontinuity_threshold', 0.0, 'a measured '
                                         'jump larger than this restarts planning (0: off)',
                                         (0.0, 1e9)),
            'replan_margin_s': d(self, 'replan_margin_s', 0.05, 'start planning this much '
                                 'before the expected latency requires', (0.0, 10.0)),
            'diagnostics_period_s': d(self, 'diagnostics_period_s', 1.0, 'diagnostics period',
                                      (0.01, 60.0), read_only=True),
            'freeze_gc': d(self, 'freeze_gc', True, 'gc.freeze() after configure (fewer '
                           'collector pauses in the control loop)'),
        }

    # ------------------------------------------------------------------ lifecycle
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Load, validate and warm up the model; create publishers and subscriptions."""
        if self.configure_or_fail(self._drop_model) == TransitionCallbackReturn.FAILURE:
            return TransitionCallbackReturn.FAILURE
        info = self._loaded
        self.get_logger().info(
            f'model {info.path} on {info.provider}: {describe(info.metadata)}; joints '
            f'{list(self.joint_names)}, {self.control_rate:g} Hz, executed '
            f'{self.executed_steps}, warm start {"on" if info.warm_start else "off"}, '
            f'warm-up {info.warmup_s * 1e3:.1f} ms')
        if self.p['freeze_gc']:
            gc.collect()
            gc.freeze()
        return TransitionCallbackReturn.SUCCESS

    def _drop_model(self) -> None:
        self._destroy_entities()
        self._loaded = None

    def _configure(self) -> None:
        if self.p['command_interface'] not in COMMAND_INTERFACES:
            raise ConfigError(f"command_interface = {self.p['command_interface']!r}: expected "
                              f'one of {COMMAND_INTERFACES}')
        loaded = load_policy_model(self.p)
        meta = loaded.metadata
        self.joint_names = self._joint_names(meta)
        self._to_cmd = np.array([meta.joint_names.index(n) for n in self.joint_names])
        self.control_rate = float(self.p['control_rate_hz'])
        self.executed_steps = self._executed_steps(meta)
        self.limits = self._limits(meta)
        ramp = int(round(self.p['ramp_in_s'] * self.control_rate))
        self.filter = JointCommandFilter(self.limits, ramp_ticks=ramp)
        self.queue = ChunkQueue(meta.action_dim, meta.control_period_s,
                                self.p['temporal_ensemble.size'],
                                self.p['temporal_ensemble.decay'])
        self._inputs = ObservationInputs(self, meta, self.joint_names,
                                         observation_params(self, self._stream_names),
                                         self._lock, self._note_input_error,
                                         self.p['discontinuity_threshold'],
                                         on_measured=self.filter.update_measured,
                                         on_restart=self._restart_plan)
        self._worker = PlanningWorker(loaded.plan, self._inputs.history, self.queue,
                                      self._lock, self.now, self.executed_steps,
                                      self.p['sampler.warm_start'], self.p['replan_margin_s'],
                                      on_plan=self._on_plan)
        self._loaded = loaded
        self._create_entities(meta)

    def _joint_names(self, meta: Any) -> tuple[str, ...]:
        names = tuple(self.p['joint_names']) or meta.joint_names
        if sorted(names) != sorted(meta.joint_names) or len(set(names)) != len(names):
            raise ConfigError(f"joint mismatch: parameter joint_names {list(names)} vs model "
                              f"{self.p['model_path']} joint_names {list(meta.joint_names)}")
        return names

    def _executed_steps(self, meta: Any) -> int:
        steps = int(self.p['executed_steps']) or meta.executed_steps
        if not 1 <= steps <= meta.horizon:
            raise ConfigError(f'executed_steps = {steps} must be in [1, model horizon = '
                              f'{meta.horizon}]')
        return steps

    def _limits(self, meta: Any) -> JointLimits:
        order = self._to_cmd
        lower = self.p['joint_lower'] or [meta.action_low[i] for i in order]
        upper = self.p['joint_upper'] or [meta.action_high[i] for i in order]
        n = len(self.joint_names)
        velocity = list(self.p['max_velocity'])
        bad = [v for v in velocity if not (math.isfinite(v) and v > 0)]
        if bad:
            raise ConfigError(f'max_velocity {velocity} is invalid: every value must be finite '
                              'and > 0 (a command that may not move never reaches its target)')
        velocity = velocity or [max(hi - lo, 1e-12) for lo, hi in zip(lower, upper)]
        if len(velocity) == 1:
            velocity = velocity * n
        for name, values in (('joint_lower', lower), ('joint_upper', upper),
                             ('max_velocity', velocity)):
            if len(values) != n:
                raise ConfigError(f'{name} has {len(values)} values for {n} joints '
                                  f'{list(self.joint_names)}')
        step = [v / self.control_rate for v in velocity]
        try:
            return JointLimits.from_arrays(self.joint_names, lower, upper, step)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc

    def _create_entities(self, meta: Any) -> None:
        if self.p['command_interface'] == 'forward':
            self.cmd_pub = self.create_publisher(Float64MultiArray,
                                                 self.p['forward_command_topic'], command_qos())
        else:
            self.cmd_pub = self.create_publisher(JointTrajectory, self.p['trajectory_topic'],
                                                 command_qos())
        self.chunk_pub = self.create_publisher(Float64MultiArray, '~/chunk', reliable_qos(5))
        self.info_pub = self.create_publisher(String, '~/model_info', latched_qos())
        self._entities = [self.cmd_pub, self.chunk_pub, self.info_pub]
        self._entities += self._inputs.subscribe()
        info = json.loads(meta.to_json())
        info.update(path=self._loaded.path, provider=self._loaded.provider,
                    joint_names=list(self.joint_names), control_rate_hz=self.control_rate,
                    executed_steps_used=self.executed_steps)
        self.info_pub.publish(String(data=json.dumps(info, sort_keys=True)))

    def _destroy_entities(self) -> None:
        for entity in self._entities:
            if hasattr(entity, 'topic_name') and hasattr(entity, 'publish'):
                self.destroy_publisher(entity)
            else:
                self.destroy_subscription(entity)
        self._entities = []

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Ramp in from the measured pose; start the worker and the control timer."""
        self._worker.stats = WorkerStats()   # counted per activation, like the tick statistics
        try:
            self._worker.start()
        except RuntimeError as exc:  # the last activation's sampler call has not returned
            self._error = f'activate failed: {exc}'
            self.get_logger().error(self._error)
            self.publish_diagnostics()
            return TransitionCallbackReturn.FAILURE
        self._error = ''
        with self._lock:
            self._worker.clear_locked()
        self.filter.start()
        self._reset_stats()
        self._seen = self._counters()
        group = MutuallyExclusiveCallbackGroup()
        self._tick_period = 1.0 / self.control_rate
        self._timer = self.create_timer(self._tick_period, self._tick, callback_group=group)
        self.get_logger().info('active: ramping in from the measured pose')
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Stop the control timer and the worker; publish the hold command once."""
        self._stop_control()
        self.get_logger().info('inactive: holding the last measured position')
        return TransitionCallbackReturn.SUCCESS

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Destroy publishers and subscriptions; drop the model."""
        self._destroy_entities()
        self._loaded, self._inputs, self._worker = None, None, None
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Hold (when active) and release everything."""
        if state.label == 'active':
            self._stop_control()
            self.get_logger().info('shutting down: holding the last measured position')
        if state.label in ('active', 'inactive'):
            self.on_cleanup(state)
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        """An exception in a transition: hold, release, go back to unconfigured."""
        self.get_logger().error(f'error while in {state.label}: releasing the model')
        self._stop_control()
        self.on_cleanup(state)
        return TransitionCallbackReturn.SUCCESS

    def _stop_control(self) -> None:
        if self._timer is not None:
            self.destroy_timer(self._timer)
            self._timer = None
        if self._worker is not None and not self._worker.stop():
            self.get_logger().warning(
                'the planning thread is still inside the sampler: its plan will be discarded, '
                'and the next activation waits for it to return')
        if self._loaded is not None:
            self._publish(self.filter.hold())
            # The publisher may be destroyed right after (shutdown, cleanup): wait until the
            # reliable subscribers acknowledged the hold, or a robot may never receive it.
            if not self.cmd_pub.wait_for_all_acked(Duration(seconds=HOLD_ACK_TIMEOUT_S)):
                self.get_logger().warning(
                    f'the hold command was not acknowledged within {HOLD_ACK_TIMEOUT_S} s '
                    'by every command subscriber')

    def lifecycle_label(self) -> str:
        """Current lifecycle state label ('unconfigured', 'inactive', 'active', ...)."""
        return self._state_machine.current_state[1]

    # ------------------------------------------------------------------ control
    def now(self) -> float:
        """Current ROS time in seconds."""
        return self.get_clock().now().nanoseconds * 1e-9

    def _reset_stats(self) -> None:
        self.tick_latency = RollingStats(4096)
        self.obs_to_cmd = RollingStats(4096)
        self.ticks = 0
        self.deadline_misses = 0
        self._last_tick = None
        self._holding = True
        self._hold_reason = 'not active'
        self._obs_age = float('inf')
        self._input_error = ''
        self._input_error_time = -np.inf
        self.input_errors = 0
        self._seen = {'misses': 0, 'failures': 0, 'overruns': 0}

    def _tick(self) -> None:
        began = time.perf_counter()
        now = self.now()
        self._count_misses(began)
        planning = self._worker.running
        with self._lock:
            status = self._inputs.history.status(now)
            ok = status.ok and planning
            target = self.queue.action_at(now + self._tick_period) if ok else None
            if not ok:  # also voids a plan being sampled from the old inputs
                self._worker.clear_locked()
        self._obs_age = status.age_s
        if ok and self._holding and target is not None:
            self.filter.start()  # resume: ramp in again from the measured pose
        self._holding = target is None
        self._hold_reason = (PLANNER_STOPPED if not planning else status.message if not ok
                             else WAITING_FOR_PLAN if target is None else '')
        cmd = self.filter.apply(None if target is None else target[self._to_cmd])
        self._publish(cmd)
        if status.ok and self._worker.due(now):
            self._worker.request()
        done = time.perf_counter()
        self.tick_latency.add(done - began)
        pending = self._inputs.take_pending_stamp()
        if pending is not None and cmd is not None:
            self.obs_to_cmd.add(self.now() - pending)

    def _count_misses(self, began: float) -> None:
        self.ticks += 1
        if self._last_tick is not None:
            late = (began - self._last_tick) / self._tick_period
            if late > 1.5:
                self.deadline_misses += int(round(late)) - 1
        self._last_tick = began

    def _publish(self, cmd: np.ndarray | None) -> None:
        if cmd is None:
            return
        if self.p['command_interface'] == 'forward':
            self.cmd_pub.publish(make_float64_array(cmd))
        else:
            dt = self.p['trajectory_time_from_start_s'] or 1.0 / self.control_rate
            self.cmd_pub.publish(make_joint_trajectory(self.joint_names, cmd, dt))

    def _on_plan(self, plan: Plan) -> None:
        self.chunk_pub.publish(make_chunk_array(plan.actions[:, self._to_cmd], plan.energy))

    def _restart_plan(self) -> None:
        """The measured pose jumped (e.g. a new episode) or the clock went back: drop the plan,
        ramp in again.

        A plan being sampled from before the jump is discarded when it arrives.
        """
        with self._lock:
            self._worker.clear_locked()
        self.filter.start()

    def _note_input_error(self, message: str) -> None:
        self.input_errors += 1
        self._input_error = message
        first = self.now() - self._input_error_time > INPUT_ERROR_HOLD_S
        self._input_error_time = self.now()
        self.get_logger().error(f'rejected input: {message}', throttle_duration_sec=1.0)
        if first:
            self.publish_diagnostics()

    # ------------------------------------------------------------------ diagnostics
    def _level(self) -> tuple[str, str]:
        """Diagnostics level and message; "recent" means since the previous diagnostics."""
        state = self.lifecycle_label()
        if self._error:
            return 'error', self._error
        if state != 'active':
            return 'ok', state
        if self.now() - self._input_error_time < INPUT_ERROR_HOLD_S:
            return 'error', f'rejected input: {self._input_error}'
        if self.filter.status.fault:
            self.get_logger().error(self.filter.status.fault, throttle_duration_sec=5.0)
            return 'error', self.filter.status.fault
        stats = self._worker.stats if self._worker is not None else None
        waiting = self._holding and self._hold_reason == WAITING_FOR_PLAN
        if stats is not None and stats.failures_since_plan and (
                waiting or (not self._holding and self.queue.exhausted(self.now()))):
            where = ('holding the last measured position' if waiting
                     else 'holding the last plan\'s final target')
            message = (f'{where}: the sampler failed {stats.failures_since_plan} times since '
                       f'the last plan: {stats.last_error}')
            self.get_logger().error(message, throttle_duration_sec=5.0)
            return 'error', message
        if self._holding:
            level = 'warn' if self._hold_reason == WAITING_FOR_PLAN else 'error'
            return level, f'holding the last measured position: {self._hold_reason}'
        seen, self._seen = self._seen, self._counters()
        new = {k: v - seen.get(k, 0) for k, v in self._seen.items()}
        if new['failures']:
            return 'warn', f'sampler failures: {self._worker.stats.last_error}'
        if new['misses'] or new['overruns']:
            return 'warn', (f"{new['misses']} deadline misses, {new['overruns']} planning "
                            'overruns since the last report')
        return 'ok', 'running'

    def _counters(self) -> dict[str, int]:
        stats = self._worker.stats if self._worker is not None else None
        return {'misses': self.deadline_misses,
                'failures': stats.failures if stats else 0,
                'overruns': stats.overruns if stats else 0}

    def publish_diagnostics(self) -> None:
        """Publish one DiagnosticArray describing the node's state."""
        level, message = self._level()
        values: dict[str, object] = {
            'state': self.lifecycle_label(),
            'tick_latency_p50_ms': self.tick_latency.percentile(50) * 1e3,
            'tick_latency_p99_ms': self.tick_latency.percentile(99) * 1e3,
            'obs_to_cmd_p50_ms': self.obs_to_cmd.percentile(50) * 1e3,
            'obs_to_cmd_p99_ms': self.obs_to_cmd.percentile(99) * 1e3,
            'ticks': self.ticks, 'deadline_misses': self.deadline_misses,
            'observation_age_s': float(self._obs_age), 'input_errors': self.input_errors,
            'last_input_error': self._input_error,
        }
        if self._loaded is not None:
            values['provider'] = self._loaded.provider
        if self._worker is not None:
            stats = self._worker.stats
            values.update(best_energy=stats.best_energy, plans=stats.plans,
                          planning_overruns=stats.overruns, sampler_failures=stats.failures,
                          discarded_plans=stats.discarded,
                          plan_latency_p50_ms=self._worker.latency.percentile(50) * 1e3,
                          plan_latency_p99_ms=self._worker.latency.percentile(99) * 1e3)
        self.diag_pub.publish(make_diagnostics(self.get_clock().now().to_msg(),
                                               f'{self.get_name()}: policy', self.get_name(),
                                               level, message, values))


def main(args: list[str] | None = None) -> None:
    """Spin the policy node; on Ctrl-C or SIGTERM hold the arm, then shut down cleanly."""
    # rclpy's own handlers would invalidate the context before the final hold is published
    init_without_signal_handlers(args)
    node = PolicyNode()
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except RuntimeError as exc:  # the signal, when it landed inside rclpy's C++ code
        interrupt_or_raise(exc)
    finally:
        ignore_signals()
        if rclpy.ok() and node.lifecycle_label() in ('active', 'inactive', 'unconfigured'):
            node.trigger_shutdown()
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == '__main__':
    main()
