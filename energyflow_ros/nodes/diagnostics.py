"""Diagnostics helpers: rolling latency statistics and DiagnosticArray construction."""

from __future__ import annotations

from typing import Mapping

from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
import numpy as np

__all__ = ['RollingStats', 'LEVELS', 'make_diagnostics']

LEVELS = {'ok': DiagnosticStatus.OK, 'warn': DiagnosticStatus.WARN,
          'error': DiagnosticStatus.ERROR, 'stale': DiagnosticStatus.STALE}


class RollingStats:
    """Percentiles of the last ``capacity`` samples, stored in a preallocated ring buffer."""

    def __init__(self, capacity: int = 2048) -> None:
        """Create an empty buffer of ``capacity`` samples."""
        self._buf = np.zeros(int(capacity))
        self._n = 0
        self._i = 0

    def add(self, value: float) -> None:
        """Record one sample (no allocation)."""
        self._buf[self._i] = value
        self._i = (self._i + 1) % len(self._buf)
        self._n = min(self._n + 1, len(self._buf))

    def __len__(self) -> int:
        """Samples held."""
        return self._n

    def clear(self) -> None:
        """Forget every sample."""
        self._n = self._i = 0

    def percentile(self, q: float) -> float:
        """The q-th percentile (nan when empty)."""
        if self._n == 0:
            return float('nan')
        return float(np.percentile(self._buf[:self._n], q))

    def values(self) -> np.ndarray:
        """A copy of the samples held (unordered)."""
        return self._buf[:self._n].copy()


def make_diagnostics(stamp: Time, name: str, hardware_id: str, level: str, message: str,
                     values: Mapping[str, object]) -> DiagnosticArray:
    """A DiagnosticArray with one status.

    Args:
        stamp: header stamp.
        name: status name (e.g. ``energyflow_policy: control``).
        hardware_id: what the status is about.
        level: a key of :data:`LEVELS`.
        message: one-line summary.
        values: key/value pairs (floats formatted with 6 significant digits).
    """
    status = DiagnosticStatus(level=LEVELS[level], name=name, message=message,
                              hardware_id=hardware_id)
    status.values = [KeyValue(key=k, value=f'{v:.6g}' if isinstance(v, float) else str(v))
                     for k, v in values.items()]
    array = DiagnosticArray()
    array.header.stamp = stamp
    array.status = [status]
    return array
