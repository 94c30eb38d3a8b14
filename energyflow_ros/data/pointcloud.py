"""sensor_msgs/PointCloud2 -> numpy, shared by the bag reader and the nodes (numpy only).

Works on rclpy and rosbags message objects alike, and on clouds whose fields have different
types (a lidar's float32 x/y/z beside a uint16 ring): only the fields asked for are read.
Every malformed cloud raises ValueError naming what is wrong, never another exception.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

__all__ = ['POINT_TYPES', 'cloud_points', 'cloud_summary']

POINT_TYPES = {1: 'i1', 2: 'u1', 3: 'i2', 4: 'u2', 5: 'i4', 6: 'u4', 7: 'f4', 8: 'f8'}
"""sensor_msgs/PointField datatypes -> numpy type codes."""


def cloud_points(msg: Any, fields: Sequence[str]) -> np.ndarray:
    """(P, len(fields)) float64 values of the finite points of a PointCloud2, in order.

    Raises:
        ValueError: a field is missing, of an unknown datatype or outside a point; the data is
            shorter than ``height`` rows of ``row_step`` bytes; ``row_step`` is shorter than
            ``width`` points.
    """
    layout = {f.name: f for f in msg.fields}
    missing = [f for f in fields if f not in layout]
    if missing:
        raise ValueError(f'PointCloud2 lacks fields {missing} (it has {sorted(layout)})')
    width, height = int(msg.width), int(msg.height)
    point_step, row_step = int(msg.point_step), int(msg.row_step)
    data = np.frombuffer(bytes(msg.data), dtype=np.uint8)
    if point_step <= 0 and width * height:
        raise ValueError(f'PointCloud2 has point_step {point_step}')
    if row_step == 0 and height <= 1:  # an unorganised cloud whose producer left it unset
        row_step = width * point_step
    if row_step < width * point_step:
        raise ValueError(f'PointCloud2 row_step {row_step} is shorter than width {width} x '
                         f'point_step {point_step}')
    if data.size < height * row_step:
        raise ValueError(f'PointCloud2 data holds {data.size} bytes, height {height} x '
                         f'row_step {row_step} = {height * row_step} expected')
    rows = data[:height * row_step].reshape(height, row_step)[:, :width * point_step]
    points = rows.reshape(width * height, point_step)
    order = '>' if msg.is_bigendian else '<'
    columns = []
    for name in fields:
        f = layout[name]
        if f.datatype not in POINT_TYPES:
            raise ValueError(f'PointCloud2 field {name!r} has unknown datatype {f.datatype}')
        dtype = np.dtype(order + POINT_TYPES[f.datatype])
        if f.offset + dtype.itemsize > point_step:
            raise ValueError(f'PointCloud2 field {name!r} (offset {f.offset}, '
                             f'{dtype.itemsize} bytes) lies outside the {point_step}-byte point')
        cell = np.ascontiguousarray(points[:, f.offset:f.offset + dtype.itemsize])
        columns.append(cell.view(dtype)[:, 0].astype(np.float64))
    values = np.stack(columns, axis=1) if columns else np.zeros((len(points), 0))
    return values[np.isfinite(values).all(axis=1)]


def cloud_summary(points: np.ndarray, n_points: int) -> np.ndarray | None:
    """A fixed-length vector from (P, F) finite points: their centroid (F values) for
    ``n_points`` 0, else the first ``n_points`` flattened; None when there are too few."""
    if len(points) < max(n_points, 1):
        return None
    return points.mean(axis=0) if n_points == 0 else points[:n_points].reshape(-1)
