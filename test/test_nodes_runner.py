"""spin_until_interrupted: an interrupt that pybind re-raised as RuntimeError is still one."""

from __future__ import annotations

import signal

import pytest
import rclpy

from energyflow_ros.nodes import runner


class _Node:
    destroyed = False

    def destroy_node(self) -> None:
        self.destroyed = True


def _spin_raising(error: Exception, signal_first: bool):
    def spin(node) -> None:
        if signal_first:
            try:
                runner._raise_interrupt(signal.SIGINT, None)
            except KeyboardInterrupt as exc:     # what pybind swallows and re-raises
                raise error from exc
        raise error
    return spin


@pytest.fixture
def restore_signals():
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGINT, handlers[0])
    signal.signal(signal.SIGTERM, handlers[1])


def test_runtime_error_after_a_signal_is_a_clean_interrupt(monkeypatch, restore_signals):
    node = _Node()
    monkeypatch.setattr(rclpy, 'spin', _spin_raising(
        RuntimeError('Unable to convert call argument'), signal_first=True))
    runner.spin_until_interrupted(lambda: node)
    assert node.destroyed and not rclpy.ok()


def test_runtime_error_without_a_signal_propagates(monkeypatch, restore_signals):
    node = _Node()
    monkeypatch.setattr(rclpy, 'spin', _spin_raising(RuntimeError('broken'),
                                                     signal_first=False))
    with pytest.raises(RuntimeError, match='broken'):
        runner.spin_until_interrupted(lambda: node)
    assert node.destroyed and not rclpy.ok()


def test_policy_node_main_treats_a_reraised_interrupt_as_one(monkeypatch, restore_signals):
    """The policy node spins its own executor: the same interrupt must end it cleanly (exit 0
    after the hold), not as a RuntimeError traceback with exit code 1."""
    from energyflow_ros.nodes import policy_node
    from test.ros_helpers import domain_id

    def spin(executor) -> None:
        try:
            runner._raise_interrupt(signal.SIGINT, None)
        except KeyboardInterrupt as exc:     # what pybind swallows and re-raises
            raise RuntimeError('Unable to convert call argument') from exc
    monkeypatch.setenv('ROS_DOMAIN_ID', str(domain_id(__name__)))
    monkeypatch.setattr(policy_node.SingleThreadedExecutor, 'spin', spin)
    policy_node.main(['--ros-args', '-p', 'autostart:=false'])
    assert not rclpy.ok()
