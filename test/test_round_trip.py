"""Round trip: the expert demonstrates over DDS into a bag, the trainer learns from that bag,
and the learned policy solves the simulated task.

The simulator runs 5x faster than real time while recording (``--time-scale 5``); the bag's
control period is therefore given to the trainer explicitly (``data.control_hz=10``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from energyflow_ros.training.data_source import DataConfig, load_demos
from energyflow_ros.training.trainer import load_train_config, train
from test.ros_helpers import domain_id, ros_env

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def recording(tmp_path_factory):
    out = tmp_path_factory.mktemp('round_trip')
    env = ros_env(domain_id(__name__))
    proc = subprocess.run(
        [sys.executable, '-m', 'energyflow_ros.cli.record', '--task', 'obstacles2d',
         '--episodes', '30', '--seed', '100', '--time-scale', '5', '--out', str(out),
         '--timeout', '150'], cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return json.loads(proc.stdout[proc.stdout.index('{'):])


def test_npz_and_bag_give_identical_training_arrays(recording):
    from_npz = load_demos(DataConfig(source='npz', path=recording['npz']), 'obstacles2d')
    from_bag = load_demos(DataConfig(source='rosbag', path=recording['bag'],
                                     bag_spec=recording['bag_spec']), 'obstacles2d')
    assert recording['episodes'] == 30 and recording['frames_dropped_on_read'] == 0
    np.testing.assert_array_equal(from_npz.obs, from_bag.obs)
    np.testing.assert_array_equal(from_npz.actions, from_bag.actions)
    np.testing.assert_array_equal(from_npz.episode_ends, from_bag.episode_ends)


def test_policy_trained_from_the_bag_solves_the_task(recording, tmp_path):
    cfg = load_train_config(os.path.join(REPO, 'config', 'train_obstacles2d.yaml'), [
        'data.source=rosbag', f"data.path={recording['bag']}",
        f"data.bag_spec={recording['bag_spec']}", 'data.control_hz=10',
        'backbone.mlp.hidden=128', 'optim.steps=400', 'optim.lr=2e-3', 'optim.warmup_steps=20',
        'ema_decay=0.99', 'eval.every=0', 'eval.episodes=20', 'progress=false', 'device=cpu',
        f'out_dir={tmp_path / "run"}'])
    result = train(cfg, log=lambda _: None)
    final = result.trainer.metrics[-1]
    assert final['eval_success'] >= 0.8, final
