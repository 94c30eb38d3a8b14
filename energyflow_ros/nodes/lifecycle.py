"""What policy_node and reward_node share as lifecycle nodes: autostart and a configure step
that turns any failure into a FAILURE transition with one clear log line, never a dead node."""

from __future__ import annotations

from typing import Callable

from rclpy.lifecycle import TransitionCallbackReturn

from energyflow_ros.nodes.model_loader import ConfigError

__all__ = ['AutostartMixin']


class AutostartMixin:
    """Mixed into an rclpy ``LifecycleNode`` that keeps its parameters in ``self.p``.

    The node provides ``_configure()`` (raises on any problem), ``publish_diagnostics()`` and
    an ``_error`` string that its diagnostics report.
    """

    def schedule_autostart(self) -> None:
        """Configure and activate once the executor spins (no lifecycle manager needed)."""
        self._autostart_timer = self.create_timer(0.05, self._autostart)

    def _autostart(self) -> None:
        self._autostart_timer.cancel()
        if self.trigger_configure() == TransitionCallbackReturn.SUCCESS:
            self.trigger_activate()

    def configure_or_fail(self, cleanup: Callable[[], None]) -> TransitionCallbackReturn:
        """Re-read the parameters and run ``_configure``; on failure clean up and report."""
        self.p.update({name: self.get_parameter(name).value for name in self.p})
        try:
            self._configure()
        except Exception as exc:  # noqa: BLE001 - any failure: FAILURE, never a dead node
            cleanup()
            reason = str(exc) if isinstance(exc, ConfigError) else f'{type(exc).__name__}: {exc}'
            self._error = f'configure failed: {reason}'
            self.get_logger().error(self._error)
            self.publish_diagnostics()
            return TransitionCallbackReturn.FAILURE
        self._error = ''
        return TransitionCallbackReturn.SUCCESS
