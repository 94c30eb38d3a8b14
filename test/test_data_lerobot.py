"""LeRobot v3 reader on a small local dataset written here with pyarrow."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from energyflow_ros.data.align import summarize
from energyflow_ros.data.dataset import DemoError
from energyflow_ros.data.lerobot import read_lerobot

MOTORS = ['shoulder_pan', 'shoulder_lift', 'elbow_flex']


def write_lerobot(root: Path, lengths: tuple[int, ...] = (5, 3), drop_frame: int | None = None,
                  nan_at: int | None = None) -> Path:
    """Episodes of state (T, 3) = episode*100 + frame, action (T, 2), split over two files."""
    features = {
        'observation.state': {'dtype': 'float32', 'shape': [3], 'names': MOTORS},
        'action': {'dtype': 'float32', 'shape': [2], 'names': {'motors': ['pan', 'lift']}},
        'observation.images.top': {'dtype': 'video', 'shape': [48, 64, 3],
                                   'names': ['height', 'width', 'channels']},
        'timestamp': {'dtype': 'float32', 'shape': [1], 'names': None},
        'frame_index': {'dtype': 'int64', 'shape': [1], 'names': None},
        'episode_index': {'dtype': 'int64', 'shape': [1], 'names': None},
        'index': {'dtype': 'int64', 'shape': [1], 'names': None},
    }
    (root / 'meta').mkdir(parents=True)
    (root / 'meta' / 'info.json').write_text(json.dumps({
        'codebase_version': 'v3.0', 'robot_type': 'so100', 'fps': 30,
        'total_episodes': len(lengths), 'total_frames': sum(lengths), 'features': features,
        'data_path': 'data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet'}))
    rows = [(e, f) for e, n in enumerate(lengths) for f in range(n) if (e, f) != (
        1, drop_frame)]
    ep = np.array([r[0] for r in rows])
    fr = np.array([r[1] for r in rows])
    state = (ep * 100 + fr)[:, None] + np.array([0.0, 0.1, 0.2])
    if nan_at is not None:
        state[nan_at, 1] = np.nan
    table = pa.table({
        'observation.state': pa.array(list(state.astype(np.float32)),
                                      type=pa.list_(pa.float32(), 3)),
        'action': pa.array(list(np.stack([ep, fr], 1).astype(np.float32)),
                           type=pa.list_(pa.float32())),
        'timestamp': pa.array(fr / 30, type=pa.float32()),
        'frame_index': pa.array(fr), 'episode_index': pa.array(ep),
        'index': pa.array(np.arange(len(rows))), 'task_index': pa.array(np.zeros(len(rows),
                                                                                 int))})
    order = np.r_[np.arange(len(rows))[::2], np.arange(len(rows))[1::2]]  # shuffled rows
    half = len(rows) // 2
    for k, part in enumerate((order[:half], order[half:])):
        (root / 'data' / 'chunk-000').mkdir(parents=True, exist_ok=True)
        pq.write_table(table.take(part), root / 'data' / 'chunk-000' / f'file-{k:03d}.parquet')
    return root


def test_two_episodes(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        demos, report = read_lerobot(write_lerobot(tmp_path / 'ds'))
    assert demos.episode_ends.tolist() == [5, 8]
    np.testing.assert_allclose(demos.obs[:, 0], [0, 1, 2, 3, 4, 100, 101, 102])
    np.testing.assert_allclose(demos.obs[:, 2] - demos.obs[:, 0], 0.2, atol=1e-5)
    np.testing.assert_array_equal(demos.actions[:, 1], [0, 1, 2, 3, 4, 0, 1, 2])
    assert demos.obs_names == MOTORS and demos.action_names == ['pan', 'lift']
    assert demos.meta['rate_hz'] == 30 and demos.meta['episode_indices'] == [0, 1]
    assert any('observation.images.top' in n for n in report.notes)
    assert 'observation.images.top' in caplog.text
    assert 'episodes: 2  frames: 8' in summarize(demos, report)


def test_several_obs_keys_are_concatenated(tmp_path: Path) -> None:
    demos, _ = read_lerobot(write_lerobot(tmp_path / 'ds'),
                            obs_keys=['observation.state', 'timestamp'])
    assert demos.obs.shape == (8, 4) and demos.obs_names[-1] == 'timestamp_0'


def test_errors_name_feature_and_episode(tmp_path: Path) -> None:
    root = write_lerobot(tmp_path / 'ds')
    with pytest.raises(DemoError, match=r"feature 'observation.environment_state' not in"):
        read_lerobot(root, obs_keys=['observation.environment_state'])
    with pytest.raises(DemoError, match="'observation.images.top' is a video"):
        read_lerobot(root, obs_keys=['observation.images.top'])
    with pytest.raises(DemoError, match='episode 1 has frame_index 2 where 1 was expected'):
        read_lerobot(write_lerobot(tmp_path / 'gap', drop_frame=1))
    with pytest.raises(DemoError, match="'observation.state' is non-finite in episode"):
        read_lerobot(write_lerobot(tmp_path / 'nan', nan_at=3))
    with pytest.raises(DemoError, match='no meta/info.json'):
        read_lerobot(tmp_path / 'nothing')


def test_bad_files_and_columns_are_errors_naming_them(tmp_path: Path) -> None:
    root = write_lerobot(tmp_path / 'ds')
    data = root / 'data' / 'chunk-000'
    first = data / 'file-000.parquet'
    table = pq.read_table(first)
    uneven = [[1.0, 2.0, 3.0], [4.0]] + [[0.0, 0.0]] * (table.num_rows - 2)  # 3 + 1 = 2 + 2
    pq.write_table(table.set_column(table.schema.get_field_index('action'), 'action',
                                    pa.array(uneven, pa.list_(pa.float32()))), first)
    with pytest.raises(DemoError, match=r"file-000.parquet: column 'action' has rows of "
                                        r'different lengths \[1, 2, 3\]'):
        read_lerobot(root)
    pq.write_table(table, first)
    pq.write_table(table.slice(0, 0), data / 'file-002.parquet')  # adds nothing, breaks nothing
    demos, _ = read_lerobot(root)
    assert demos.episode_ends.tolist() == [5, 8]
    first.write_bytes(first.read_bytes()[:40])  # cut off
    with pytest.raises(DemoError, match='file-000.parquet: not a readable parquet file'):
        read_lerobot(root)
