"""energyflow-record: the scripted expert drives sim_node over real DDS into a rosbag2 bag.

The bag must read back (through the trainer's bag reader) into exactly the observation/action
pairs the expert used, and an MCAP and a sqlite3 recording of the same seeds must give
identical training arrays.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml

from energyflow_ros.data.dataset import DemoSet
from energyflow_ros.data.rosbag import read_rosbag
from test.ros_helpers import domain_id, ros_env

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _record(tmp_path, storage: str, episodes: int = 2) -> dict:
    env = ros_env(domain_id(f'{__name__}.{storage}'))
    out = tmp_path / storage
    proc = subprocess.run(
        [sys.executable, '-m', 'energyflow_ros.cli.record', '--task', 'obstacles2d',
         '--episodes', str(episodes), '--seed', '5', '--storage', storage, '--out', str(out),
         '--timeout', '120'], cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return json.loads(proc.stdout[proc.stdout.index('{'):])


@pytest.fixture(scope='module')
def recordings(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('record')
    return {storage: _record(tmp, storage) for storage in ('mcap', 'sqlite3')}


def test_bag_reads_back_into_the_pairs_the_expert_used(recordings):
    summary = recordings['mcap']
    assert summary['bag_matches_npz'] and summary['frames_dropped_on_read'] == 0
    assert summary['episodes_joined_late'] == []  # the sim waited for the driver
    assert summary['episodes'] == 2 and summary['messages']['/demo/episode'] >= 2
    demos = DemoSet.load_npz(summary['npz'])
    read, _ = read_rosbag(summary['bag'], yaml.safe_load(open(summary['bag_spec'])))
    np.testing.assert_array_equal(read.obs, demos.obs)
    np.testing.assert_array_equal(read.actions, demos.actions)
    # a real demonstration: the robot ends at its goal
    last = demos.obs[demos.episode_ends[0] - 1]
    assert np.linalg.norm(last[:2] - last[2:4]) < 0.1


def test_mcap_and_sqlite3_recordings_of_the_same_seeds_agree(recordings):
    arrays = []
    for storage in ('mcap', 'sqlite3'):
        summary = recordings[storage]
        assert os.path.isdir(summary['bag'])
        read, _ = read_rosbag(summary['bag'], summary['bag_spec'])
        arrays.append(read)
    np.testing.assert_array_equal(arrays[0].obs, arrays[1].obs)
    np.testing.assert_array_equal(arrays[0].actions, arrays[1].actions)
    np.testing.assert_array_equal(arrays[0].episode_ends, arrays[1].episode_ends)


def test_existing_output_bag_is_refused(tmp_path):
    (tmp_path / 'bag_mcap').mkdir()
    proc = subprocess.run(
        [sys.executable, '-m', 'energyflow_ros.cli.record', '--out', str(tmp_path),
         '--episodes', '1', '--timeout', '5'], cwd=REPO, capture_output=True, text=True,
        timeout=60)
    assert proc.returncode == 1
    assert 'already exists' in proc.stderr and 'Traceback' not in proc.stderr


def test_a_recording_that_times_out_keeps_what_it_recorded(tmp_path):
    proc = subprocess.run(
        [sys.executable, '-m', 'energyflow_ros.cli.record', '--out', str(tmp_path),
         '--episodes', '100', '--timeout', '4', '--time-scale', '5'], cwd=REPO,
        env=ros_env(domain_id(f'{__name__}.timeout')), capture_output=True, text=True,
        timeout=90)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert 'no end of recording after 4 s; the ' in proc.stderr, proc.stderr[-2000:]
    assert 'are kept in' in proc.stderr and 'Traceback' not in proc.stderr
    kept = tmp_path / 'bag_mcap'
    assert kept.is_dir() and any(kept.iterdir())


def test_a_time_scale_the_simulator_refuses_is_a_usage_error(tmp_path):
    proc = subprocess.run(
        [sys.executable, '-m', 'energyflow_ros.cli.record', '--out', str(tmp_path),
         '--time-scale', '50'], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and '--time-scale 50: expected 0.1 .. 20' in proc.stderr


def test_a_recording_stopped_by_sigterm_keeps_a_readable_bag(tmp_path):
    """What timeout, systemd and docker stop send: the bag so far is kept, with its index."""
    import signal

    from sensor_msgs.msg import JointState

    from test.ros_helpers import Probe, wait_until

    domain = domain_id(f'{__name__}.sigterm')
    probe = Probe(domain, 'record_probe')
    try:
        joints = probe.record(JointState, '/joint_states', 100)
        proc = subprocess.Popen(
            [sys.executable, '-m', 'energyflow_ros.cli.record', '--out', str(tmp_path),
             '--episodes', '100', '--timeout', '120', '--time-scale', '5'], cwd=REPO,
            env=ros_env(domain), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert wait_until(lambda: len(joints) > 30, 60), 'the recording never started'
            time.sleep(1.0)
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    finally:
        probe.close()
    assert proc.returncode == 1, err[-2000:]
    assert 'interrupted; the ' in err and 'are kept in' in err and 'Traceback' not in err, err
    kept = tmp_path / 'bag_mcap'
    assert (kept / 'metadata.yaml').is_file()
    from rosbags.highlevel import AnyReader
    with AnyReader([kept]) as reader:
        assert reader.message_count > 30
