"""The main job: sim_node + policy_node + reward_node over real DDS with the shipped model.

This is what ``make demo`` runs; here with fewer episodes. The shipped model must drive the
simulated robot to the goal, at the requested command rate, with rewards flowing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from test.ros_helpers import domain_id, ros_env

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(REPO, 'models', 'obstacles2d_energyflow.onnx')


@pytest.fixture(scope='module')
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp('closed_loop')
    env = ros_env(domain_id(__name__))
    proc = subprocess.run(
        [sys.executable, '-m', 'energyflow_ros.cli.closed_loop', '--episodes', '3',
         '--control-rate', '50', '--out', str(out), '--timeout', '150'],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    data = json.loads((out / 'closed_loop.json').read_text())
    data['stdout'] = proc.stdout
    data['png'] = out / 'closed_loop.png'
    return data


def test_shipped_model_is_small_and_present():
    sizes = [os.path.getsize(os.path.join(REPO, 'models', f))
             for f in os.listdir(os.path.join(REPO, 'models')) if f.endswith('.onnx')]
    assert os.path.isfile(MODEL) and 0 < sum(sizes) < 10 * 2**20


def test_closed_loop_reaches_the_goal(report):
    assert report['episodes'] == 3
    assert sum(e['success'] for e in report['episode_results']) >= 2, report['episode_results']


def test_closed_loop_runs_at_the_requested_rate(report):
    assert 45.0 <= report['achieved_command_rate_hz'] <= 55.0
    assert report['tick_latency_p99_ms'] is not None and report['ticks'] > 100
    assert report['provider'] == 'cpu'


def test_rewards_flow_and_outputs_are_written(report):
    assert report['reward_messages'] > 20
    assert report['png'].stat().st_size > 5000
    assert 'success' in report['stdout'] and 'achieved' in report['stdout']
    # each episode line says whether the robot touched an obstacle, as the sim reported it
    for e in report['episode_results']:
        said = 'collided' if e['metrics']['collision'] else 'no collision'
        assert f"(seed {e['seed']}): success {e['success']}, {e['step']} steps, {said}" in \
            report['stdout'], report['stdout']


def test_a_run_that_times_out_is_an_error_not_a_report(tmp_path):
    env = ros_env(domain_id(__name__ + '.timeout'))
    proc = subprocess.run(
        [sys.executable, '-m', 'energyflow_ros.cli.closed_loop', '--episodes', '50',
         '--no-reward', '--out', str(tmp_path), '--timeout', '3'],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert ('was not active after --timeout 3 s' in proc.stderr
            or 'of 50 episodes finished within --timeout 3 s' in proc.stderr), proc.stderr
    assert not (tmp_path / 'closed_loop.json').exists()


def test_a_loop_that_ran_but_failed_its_task_or_rate_is_an_error():
    from energyflow_ros.cli.closed_loop import failures

    good = {'episodes': 3, 'success': 2 / 3, 'achieved_command_rate_hz': 49.0,
            'control_rate_hz': 50.0}
    assert failures(good) == []
    assert failures({**good, 'success': 0.0}) == ['no episode of 3 reached the goal']
    assert failures({**good, 'achieved_command_rate_hz': 0.0}) == [
        'commands reached the simulator at 0.0 Hz, under half the 50 Hz control rate']
