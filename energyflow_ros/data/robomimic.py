"""Read robomimic hdf5 demonstrations: ``data/demo_i/{obs/<key>, actions}``.

Demos are taken in numeric order (demo_2 before demo_10), optionally only those a filter mask
``mask/<name>`` lists (e.g. ``train``, ``valid``, ``20_percent``). The observation is the
concatenation of the requested ``obs/<key>`` arrays in the order given; 1-D keys give one
dimension, (T, d) keys d dimensions. Image keys (more than two dimensions) are refused.
Non-finite values are errors naming the demo, key and frame; empty demos are skipped and noted.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Sequence

import h5py
import numpy as np

from energyflow_ros.data.align import ReadReport
from energyflow_ros.data.dataset import DemoError, DemoSet

__all__ = ['read_robomimic']


def _demo_order(name: str) -> tuple[int, str]:
    match = re.search(r'(\d+)$', name)
    return (int(match.group(1)) if match else 1 << 62, name)


def _select_demos(f: h5py.File, filter_key: str | None, path: str) -> list[str]:
    """Demo names in numeric order, restricted to ``mask/<filter_key>`` when given."""
    if 'data' not in f:
        raise DemoError(f'{path}: no "data" group; not a robomimic file (keys: {list(f)})')
    names = sorted(f['data'].keys(), key=_demo_order)
    if filter_key is None:
        return names
    masks = list(f['mask']) if 'mask' in f else []
    if filter_key not in masks:
        raise DemoError(f'{path}: filter mask {filter_key!r} not found; masks: {masks}')
    wanted = [x.decode() if isinstance(x, bytes) else str(x) for x in f['mask'][filter_key][()]]
    unknown = sorted(set(wanted) - set(names))
    if unknown:
        raise DemoError(f'{path}: mask/{filter_key} lists demo(s) not in data: {unknown[:5]}')
    chosen = set(wanted)
    return [n for n in names if n in chosen]


def _read_array(group: h5py.Group, key: str, where: str) -> np.ndarray:
    """(T, d) float64 from ``group[key]``; DemoError naming ``where`` and ``key`` otherwise."""
    if key not in group:
        raise DemoError(f'{where}: key {key!r} missing; it has {sorted(group.keys())}')
    data = group[key]
    if not isinstance(data, h5py.Dataset):
        raise DemoError(f'{where}: {key!r} is a group, not an array')
    array = np.asarray(data[()])
    if array.ndim > 2:
        raise DemoError(f'{where}: {key!r} has shape {array.shape}; images and other arrays '
                        'with more than 2 dimensions are not supported as observations')
    if not np.issubdtype(array.dtype, np.number) and array.dtype != np.bool_:
        raise DemoError(f'{where}: {key!r} has non-numeric dtype {array.dtype}')
    width = int(np.prod(array.shape[1:], dtype=np.int64)) if array.ndim > 1 else 1
    array = array.reshape(len(array), width).astype(np.float64)  # (0, d) too: an empty demo
    bad = np.argwhere(~np.isfinite(array))
    if len(bad):
        raise DemoError(f'{where}: {key!r} has a non-finite value at frame {int(bad[0, 0])}, '
                        f'dimension {int(bad[0, 1])}')
    return array


def _read_demo(demo: h5py.Group, obs_keys: Sequence[str], action_key: str,
               where: str) -> tuple[list[np.ndarray], np.ndarray]:
    if 'obs' not in demo:
        raise DemoError(f'{where}: no "obs" group')
    parts = [_read_array(demo['obs'], k, f'{where}/obs') for k in obs_keys]
    actions = _read_array(demo, action_key, where)
    for key, part in zip(obs_keys, parts):
        if len(part) != len(actions):
            raise DemoError(f'{where}: obs/{key} has {len(part)} frames but {action_key} has '
                            f'{len(actions)}')
    return parts, actions


def _names(key: str, dim: int) -> list[str]:
    return [key] if dim == 1 else [f'{key}_{i}' for i in range(dim)]


def _env_meta(f: h5py.File) -> dict[str, Any]:
    raw = f['data'].attrs.get('env_args')
    if raw is None:
        return {}
    try:
        env_args = json.loads(raw if isinstance(raw, str) else bytes(raw).decode())
    except (ValueError, TypeError):
        return {}
    meta: dict[str, Any] = {'env_args': env_args}
    freq = (env_args.get('env_kwargs') or {}).get('control_freq')
    if freq:
        meta['rate_hz'] = float(freq)
    return meta


def _read_demos(f: h5py.File, path: str, obs_keys: Sequence[str], filter_key: str | None,
                action_key: str, report: ReadReport
                ) -> tuple[list[np.ndarray], list[np.ndarray], list[int]]:
    """Observation and action arrays of every selected demo with frames, and their widths."""
    obs_rows, act_rows, dims = [], [], []
    for name in _select_demos(f, filter_key, path):
        parts, actions = _read_demo(f['data'][name], obs_keys, action_key,
                                    f'{path}: data/{name}')
        if len(actions) == 0:
            report.note(f'data/{name} has no frames: skipped')
            continue
        shape = [p.shape[1] for p in parts] + [actions.shape[1]]
        if dims and shape != dims:
            raise DemoError(f'{path}: data/{name} has dimensions {shape} for '
                            f'{[*obs_keys, action_key]}, earlier demos {dims}')
        dims = shape
        obs_rows.append(np.concatenate(parts, axis=1))
        act_rows.append(actions)
    return obs_rows, act_rows, dims


def read_robomimic(path: str | os.PathLike[str], obs_keys: Sequence[str],
                   filter_key: str | None = None,
                   action_key: str = 'actions') -> tuple[DemoSet, ReadReport]:
    """Read a robomimic hdf5 file.

    Args:
        path: the .hdf5 file.
        obs_keys: keys under ``obs/``, concatenated in this order.
        filter_key: name of a mask under ``mask/`` selecting demos; None takes them all.
        action_key: the action dataset of every demo.

    Returns:
        demos: one episode per demo; obs names '<key>_<i>' (or '<key>' for 1-D keys).
        report: demos read and skipped.

    Raises:
        DemoError: naming the file, demo and key of what is missing, mismatched or non-finite.
    """
    path = os.fspath(path)
    obs_keys = [obs_keys] if isinstance(obs_keys, str) else list(obs_keys)
    if not obs_keys:
        raise DemoError(f'{path}: obs_keys is empty; name the obs/<key> arrays to use')
    report = ReadReport(source=path)
    try:
        f = h5py.File(path, 'r')
    except OSError as exc:
        raise DemoError(f'{path}: cannot open as hdf5 ({exc})') from exc
    with f:
        obs_rows, act_rows, dims = _read_demos(f, path, obs_keys, filter_key, action_key,
                                               report)
        meta = _env_meta(f)
    if not obs_rows:
        raise DemoError(f'{path}: no demo with frames'
                        + (f' in mask {filter_key!r}' if filter_key else ''))
    report.messages['demos'] = len(obs_rows)
    report.frames_considered = sum(len(a) for a in act_rows)
    meta.update(source=os.path.abspath(path), format='robomimic', obs_keys=list(obs_keys),
                filter_key=filter_key)
    ends = np.cumsum([len(a) for a in act_rows])
    names = [n for k, d in zip(obs_keys, dims[:-1]) for n in _names(k, d)]
    return DemoSet(obs=np.concatenate(obs_rows), actions=np.concatenate(act_rows),
                   episode_ends=ends, obs_names=names,
                   action_names=_names('action', dims[-1]), meta=meta), report
