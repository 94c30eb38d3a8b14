"""Spin a node until Ctrl-C or SIGTERM, then clean up while the ROS context is still valid.

With rclpy's own signal handlers the context is shut down inside the signal handler, so a
timer callback that is already running can publish into a dead context and end the process
with an error instead of a clean exit. Here SIGINT/SIGTERM raise KeyboardInterrupt in the main
thread instead; the context stays valid until the node has been destroyed. When the signal
lands while rclpy's C++ code is converting a message into Python, pybind turns that
KeyboardInterrupt into a RuntimeError ("Unable to convert call argument"); after a signal
that error is the interrupt too (a fresh-clone test run caught reward_node exiting with 1).
"""

from __future__ import annotations

import signal
from typing import Any, Callable

import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.signals import SignalHandlerOptions

__all__ = ['init_without_signal_handlers', 'interrupt_or_raise', 'ignore_signals',
           'spin_until_interrupted']

_signalled: list[int] = []   # signals received since init_without_signal_handlers


def _raise_interrupt(signum: int, frame: Any) -> None:
    _signalled.append(signum)
    raise KeyboardInterrupt


def init_without_signal_handlers(args: list[str] | None) -> None:
    """rclpy.init, with SIGINT and SIGTERM raising KeyboardInterrupt (no rclpy handlers)."""
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    _signalled.clear()
    signal.signal(signal.SIGINT, _raise_interrupt)
    signal.signal(signal.SIGTERM, _raise_interrupt)


def interrupt_or_raise(exc: RuntimeError) -> None:
    """Re-raise ``exc`` unless a signal arrived: then it is the interrupt pybind re-raised."""
    if not _signalled:
        raise exc


def ignore_signals() -> None:
    """Ignore SIGINT and SIGTERM from now on: a second Ctrl-C must not cut the cleanup."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def spin_until_interrupted(make_node: Callable[[], Any], args: list[str] | None = None) -> None:
    """Build the node with ``make_node`` and spin it until interrupted, then destroy it."""
    init_without_signal_handlers(args)
    node = None
    try:
        node = make_node()
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except RuntimeError as exc:
        interrupt_or_raise(exc)
    finally:
        ignore_signals()
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
