"""Start package nodes as separate processes and stop them cleanly (what a launch file does)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Any

__all__ = ['start_node', 'stop_nodes']


def start_node(name: str, overrides: dict[str, Any], log_dir: str | None = None,
               params_file: str | None = None) -> subprocess.Popen:
    """Run ``energyflow_ros.nodes.<name>`` in its own process.

    Args:
        name: node module, e.g. ``sim_node``.
        overrides: parameters set with ``-p name:=value`` (after the parameter file).
        log_dir: where ``<name>.log`` collects its output; None leaves it on this terminal.
        params_file: a ROS parameter YAML, or None.
    """
    cmd = [sys.executable, '-m', f'energyflow_ros.nodes.{name}', '--ros-args']
    if params_file:
        cmd += ['--params-file', params_file]
    for key, value in overrides.items():
        cmd += ['-p', f'{key}:={value}']
    env = dict(os.environ, PYTHONUNBUFFERED='1')
    if log_dir is None:
        return subprocess.Popen(cmd, env=env)
    log = open(os.path.join(log_dir, f'{name}.log'), 'w', encoding='utf-8')
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)


def stop_nodes(procs: list[subprocess.Popen], timeout: float = 10.0) -> None:
    """SIGINT every node still running (they hold and clean up), kill what does not exit."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
    for proc in procs:
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
