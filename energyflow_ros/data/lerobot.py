"""Read a local LeRobot dataset (v3.0; v2.x reads the same way): meta/info.json + data/ parquet.

``meta/info.json`` declares the features; every parquet file under ``data/`` holds rows of
frames with ``episode_index``, ``frame_index`` and one column per feature. The observation is
the concatenation of ``obs_keys`` (default ``observation.state``) and the action is ``action``.
Video and image features are never decoded: they are ignored with a logged note. Rows are put
in (episode_index, frame_index) order; a gap or a repeat in an episode's frame_index, a missing
column, a null or a non-finite value is an error naming the file or episode and the key.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from energyflow_ros.data.align import ReadReport
from energyflow_ros.data.dataset import DemoError, DemoSet

__all__ = ['read_lerobot']

VISUAL_DTYPES = ('video', 'image')


def _read_info(root: Path) -> dict[str, Any]:
    path = root / 'meta' / 'info.json'
    if not path.is_file():
        raise DemoError(f'{root}: no meta/info.json; not a LeRobot dataset')
    try:
        info = json.loads(path.read_text(encoding='utf-8'))
    except ValueError as exc:
        raise DemoError(f'{path}: not valid JSON ({exc})') from exc
    if not isinstance(info, dict) or not isinstance(info.get('features'), dict):
        raise DemoError(f'{path}: no "features" mapping')
    return info


def _check_features(info: dict[str, Any], keys: Sequence[str], root: Path,
                    report: ReadReport) -> None:
    """DemoError for a requested key that is missing or visual; note the ignored visual ones."""
    features = info['features']
    version = str(info.get('codebase_version', '?'))
    if not version.startswith(('v3', 'v2')):
        raise DemoError(f'{root}: codebase_version {version!r} is not supported (v3.x, v2.x)')
    if not version.startswith('v3'):
        report.note(f'codebase_version {version}: read as v3 (same parquet columns)')
    numeric = [k for k, v in features.items() if v.get('dtype') not in VISUAL_DTYPES]
    for key in keys:
        if key not in features:
            raise DemoError(f'{root}: feature {key!r} not in meta/info.json; numeric features: '
                            f'{numeric}')
        if features[key].get('dtype') in VISUAL_DTYPES:
            raise DemoError(f'{root}: feature {key!r} is a {features[key]["dtype"]}; only '
                            'numeric features can be read')
    visual = [k for k, v in features.items() if v.get('dtype') in VISUAL_DTYPES]
    if visual:
        report.note(f'video/image feature(s) ignored: {visual}')


def _column(table: pa.Table, key: str, where: str) -> np.ndarray:
    """(n, d) float64 from a list, fixed-size-list or scalar column."""
    col = table.column(key).combine_chunks()
    if col.null_count:
        raise DemoError(f'{where}: column {key!r} has {col.null_count} null value(s)')
    n = len(col)
    if pa.types.is_list(col.type) or pa.types.is_large_list(col.type) or \
            pa.types.is_fixed_size_list(col.type):
        flat = col.flatten()
        if flat.null_count:
            raise DemoError(f'{where}: column {key!r} has null entries inside its lists')
        widths = set(pc.list_value_length(col).to_numpy(zero_copy_only=False).tolist())
        if len(widths) > 1:
            raise DemoError(f'{where}: column {key!r} has rows of different lengths '
                            f'{sorted(widths)}')
        values = _floats(flat, key, where)
        return values.reshape(n, widths.pop() if widths else 0)
    return _floats(col, key, where).reshape(n, 1)


def _floats(array: pa.Array, key: str, where: str) -> np.ndarray:
    try:
        return array.to_numpy(zero_copy_only=False).astype(np.float64)
    except (ValueError, TypeError, pa.ArrowException) as exc:
        raise DemoError(f'{where}: column {key!r} is not numeric ({exc})') from exc


def _read_file(path: Path, keys: Sequence[str]) -> dict[str, np.ndarray]:
    try:
        names = pq.read_schema(path).names
    except (OSError, pa.ArrowException) as exc:
        raise DemoError(f'{path}: not a readable parquet file ({exc})') from exc
    needed = [*keys, 'episode_index'] + (['frame_index'] if 'frame_index' in names else [])
    missing = [k for k in needed if k not in names]
    if missing:
        raise DemoError(f'{path}: column(s) {missing} missing; it has {names}')
    try:
        table = pq.read_table(path, columns=needed)
    except (OSError, pa.ArrowException) as exc:
        raise DemoError(f'{path}: not a readable parquet file ({exc})') from exc
    out = {k: _column(table, k, str(path)) for k in keys}
    for k in needed[len(keys):]:
        out[k] = _column(table, k, str(path))[:, 0].astype(np.int64)
    return out


def _read_rows(root: Path, keys: Sequence[str]) -> dict[str, np.ndarray]:
    """All rows of all data files, sorted by (episode_index, frame_index)."""
    files = sorted((root / 'data').rglob('*.parquet'))
    if not files:
        raise DemoError(f'{root}: no parquet files under data/')
    parts = [part for part in (_read_file(f, keys) for f in files)
             if len(part['episode_index'])]  # a file without rows adds nothing
    if not parts:
        raise DemoError(f'{root}: the data files hold no frames')
    common = set.intersection(*(set(p) for p in parts))
    try:
        rows = {k: np.concatenate([p[k] for p in parts]) for k in common}
    except ValueError as exc:
        raise DemoError(f'{root}: data files disagree on feature widths ({exc})') from exc
    if not len(rows['episode_index']):
        raise DemoError(f'{root}: the data files hold no frames')
    frame = rows.get('frame_index', np.zeros_like(rows['episode_index']))
    order = np.lexsort((frame, rows['episode_index']))
    return {k: v[order] for k, v in rows.items()}


def _episode_ends(rows: dict[str, np.ndarray], root: Path) -> np.ndarray:
    """End of every episode; DemoError when an episode's frame_index has a gap or a repeat."""
    episode = rows['episode_index']
    ends = np.concatenate([np.flatnonzero(np.diff(episode)) + 1, [len(episode)]])
    if 'frame_index' in rows:
        frame, start = rows['frame_index'], 0
        for end in ends:
            expected = frame[start] + np.arange(end - start)
            if not np.array_equal(frame[start:end], expected):
                bad = start + int(np.flatnonzero(frame[start:end] != expected)[0])
                raise DemoError(f'{root}: episode {int(episode[start])} has frame_index '
                                f'{int(frame[bad])} where {int(expected[bad - start])} was '
                                'expected (a missing or repeated frame)')
            start = end
    return ends


def _check_finite(rows: dict[str, np.ndarray], keys: Sequence[str], root: Path) -> None:
    for key in keys:
        bad = np.argwhere(~np.isfinite(rows[key]))
        if len(bad):
            i = int(bad[0, 0])
            frame = int(rows['frame_index'][i]) if 'frame_index' in rows else i
            raise DemoError(f'{root}: {key!r} is non-finite in episode '
                            f'{int(rows["episode_index"][i])}, frame {frame}')


def _feature_names(feature: dict[str, Any], key: str, dim: int) -> list[str]:
    names = feature.get('names')
    if isinstance(names, dict):
        lists = [v for v in names.values() if isinstance(v, list)]
        names = lists[0] if len(lists) == 1 else None
    if isinstance(names, list) and len(names) == dim and all(isinstance(n, str) for n in names):
        return [str(n) for n in names]
    return [f'{key}_{i}' for i in range(dim)]


def read_lerobot(root: str | os.PathLike[str],
                 obs_keys: Sequence[str] = ('observation.state',),
                 action_key: str = 'action') -> tuple[DemoSet, ReadReport]:
    """Read a LeRobot dataset from a local directory.

    Args:
        root: the dataset directory (holding meta/ and data/).
        obs_keys: numeric features concatenated into the observation, in this order.
        action_key: the action feature.

    Returns:
        demos: one episode per episode_index, in index order; names from the features' names.
        report: rows read, ignored features.

    Raises:
        DemoError: naming the file, feature or episode of what is missing or wrong.
    """
    root = Path(root)
    obs_keys = [obs_keys] if isinstance(obs_keys, str) else list(obs_keys)
    report = ReadReport(source=str(root))
    info = _read_info(root)
    keys = [*obs_keys, action_key]
    _check_features(info, keys, root, report)
    rows = _read_rows(root, keys)
    ends = _episode_ends(rows, root)
    _check_finite(rows, keys, root)
    total = info.get('total_frames')
    if isinstance(total, int) and total != len(rows[action_key]):
        report.note(f'info.json says total_frames {total}; data/ holds {len(rows[action_key])}')
    report.messages['rows'] = report.frames_considered = len(rows[action_key])
    obs = np.concatenate([rows[k] for k in obs_keys], axis=1)
    obs_names = [n for k in obs_keys for n in _feature_names(
        info['features'][k], k, rows[k].shape[1])]
    meta = {'source': str(root.resolve()), 'format': 'lerobot', 'obs_keys': obs_keys,
            'rate_hz': info.get('fps'), 'codebase_version': info.get('codebase_version'),
            'robot_type': info.get('robot_type'),
            'episode_indices': [int(rows['episode_index'][e - 1]) for e in ends]}
    return DemoSet(obs=obs, actions=rows[action_key], episode_ends=ends, obs_names=obs_names,
                   action_names=_feature_names(info['features'][action_key], action_key,
                                               rows[action_key].shape[1]), meta=meta), report
