"""robomimic hdf5 reader on small files written here with h5py."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from energyflow_ros.data.align import summarize
from energyflow_ros.data.dataset import DemoError
from energyflow_ros.data.robomimic import read_robomimic

LENGTHS = {'demo_0': 4, 'demo_1': 3, 'demo_2': 5, 'demo_10': 2}


def write_robomimic(path: Path, nan_in: str | None = None) -> Path:
    """Four demos: obs/eef_pos (T, 3), obs/gripper (T,), actions (T, 2); value = demo + frame."""
    with h5py.File(path, 'w') as f:
        data = f.create_group('data')
        data.attrs['env_args'] = json.dumps({'env_name': 'Lift',
                                             'env_kwargs': {'control_freq': 20}})
        for name, n in LENGTHS.items():
            k = int(name.split('_')[1])
            demo = data.create_group(name)
            eef = np.stack([k + np.arange(n) / 10, np.zeros(n), np.ones(n)], axis=1)
            if name == nan_in:
                eef[1, 2] = np.nan
            demo.create_dataset('obs/eef_pos', data=eef)
            demo.create_dataset('obs/gripper', data=np.full(n, -k, dtype=np.float32))
            demo.create_dataset('obs/agentview_image', data=np.zeros((n, 4, 4, 3), np.uint8))
            demo.create_dataset('actions', data=np.full((n, 2), float(k)))
            demo.attrs['num_samples'] = n
        f.create_dataset('mask/train', data=np.array([b'demo_0', b'demo_10', b'demo_2']))
        f.create_dataset('mask/valid', data=np.array([b'demo_1']))
    return path


def test_all_demos_in_numeric_order(tmp_path: Path) -> None:
    demos, report = read_robomimic(write_robomimic(tmp_path / 'd.hdf5'), ['gripper', 'eef_pos'])
    assert demos.episode_ends.tolist() == [4, 7, 12, 14]
    assert demos.obs_names == ['gripper', 'eef_pos_0', 'eef_pos_1', 'eef_pos_2']
    assert demos.action_names == ['action_0', 'action_1']
    np.testing.assert_array_equal(demos.obs[:, 0], np.repeat([0, -1, -2, -10], [4, 3, 5, 2]))
    np.testing.assert_allclose(demos.obs[4:7, 1], 1 + np.arange(3) / 10)
    assert demos.meta['rate_hz'] == 20.0 and demos.meta['env_args']['env_name'] == 'Lift'
    assert 'episodes: 4  frames: 14' in summarize(demos, report)
    assert 'eef_pos_2' in summarize(demos)


def test_filter_mask_selects_demos(tmp_path: Path) -> None:
    demos, _ = read_robomimic(write_robomimic(tmp_path / 'd.hdf5'), ['eef_pos'],
                              filter_key='train')
    assert demos.episode_ends.tolist() == [4, 9, 11]  # demo_0, demo_2, demo_10
    np.testing.assert_array_equal(demos.actions[:, 0], np.repeat([0.0, 2.0, 10.0], [4, 5, 2]))
    valid, _ = read_robomimic(tmp_path / 'd.hdf5', ['eef_pos'], filter_key='valid')
    assert valid.episode_ends.tolist() == [3]


def test_errors_name_key_mask_and_demo(tmp_path: Path) -> None:
    path = write_robomimic(tmp_path / 'd.hdf5')
    with pytest.raises(DemoError, match=r"data/demo_0/obs: key 'joint_pos' missing"):
        read_robomimic(path, ['eef_pos', 'joint_pos'])
    with pytest.raises(DemoError, match=r"filter mask 'test' not found; masks: \['train'"):
        read_robomimic(path, ['eef_pos'], filter_key='test')
    with pytest.raises(DemoError, match=r"'agentview_image' has shape \(4, 4, 4, 3\)"):
        read_robomimic(path, ['agentview_image'])
    with pytest.raises(DemoError, match='cannot open'):
        read_robomimic(tmp_path / 'missing.hdf5', ['eef_pos'])


def test_non_finite_value_is_an_error(tmp_path: Path) -> None:
    path = write_robomimic(tmp_path / 'd.hdf5', nan_in='demo_2')
    with pytest.raises(DemoError, match=r"data/demo_2/obs: 'eef_pos' has a non-finite value at "
                                        r'frame 1, dimension 2'):
        read_robomimic(path, ['eef_pos'])


def test_an_empty_demo_is_skipped_and_noted(tmp_path: Path) -> None:
    path = write_robomimic(tmp_path / 'd.hdf5')
    with h5py.File(path, 'a') as f:
        empty = f['data'].create_group('demo_3')
        empty.create_dataset('obs/eef_pos', data=np.zeros((0, 3)))
        empty.create_dataset('obs/gripper', data=np.zeros((0,), np.float32))
        empty.create_dataset('actions', data=np.zeros((0, 2)))
    demos, report = read_robomimic(path, ['gripper', 'eef_pos'])
    assert demos.episode_ends.tolist() == [4, 7, 12, 14]  # the four demos with frames
    assert 'data/demo_3 has no frames: skipped' in summarize(demos, report)
