"""The result files of the benchmark commands: records merged by key, files written atomically.

``energyflow-eval`` and ``energyflow-reward-eval`` run one task (or one method, one reward
source) per command when a full run takes hours, so each merges its new records into the
``<name>.json`` already in the results folder instead of replacing it, and writes every file
through a temporary file and ``os.replace`` so a kill never leaves a half-written table.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Callable, Hashable

__all__ = ['load_results', 'merge_records', 'refuse_other_settings', 'settings_conflict',
           'write_files']


def load_results(path: str) -> dict[str, Any] | None:
    """The JSON object in ``path``, or None when there is none or it is not an object.

    Raises:
        ValueError: the file is not valid JSON (named, so it can be fixed or moved away
            before hours of work are merged into it).
    """
    if not os.path.exists(path):
        return None
    with open(path, encoding='utf-8') as handle:
        try:
            data = json.load(handle)
        except json.JSONDecodeError as exc:
            raise ValueError(f'{path} is not valid JSON ({exc}); fix or move it: new results '
                             'are merged into it') from exc
    return data if isinstance(data, dict) else None


def merge_records(old: list[dict[str, Any]], new: list[dict[str, Any]],
                  key: Callable[[dict[str, Any]], Hashable]) -> list[dict[str, Any]]:
    """``old`` without the records whose ``key`` a record of ``new`` has, followed by ``new``."""
    replaced = {key(record) for record in new}
    return [record for record in old if key(record) not in replaced] + list(new)


def write_files(out: str, files: dict[str, str]) -> None:
    """Write ``{file name: text}`` into the folder ``out`` (created), each file atomically."""
    os.makedirs(out, exist_ok=True)
    for name, text in files.items():
        tmp = os.path.join(out, f'.{name}.{os.getpid()}.tmp')
        with open(tmp, 'w', encoding='utf-8') as handle:
            handle.write(text)
        os.replace(tmp, os.path.join(out, name))


def settings_conflict(path: str, settings: dict[str, Any]) -> str | None:
    """Why writing results of ``settings`` to ``path`` would replace results of others.

    For the benchmarks whose results file is one run (latency, sampler cost, ROS loop): the
    file's recorded ``settings`` (or, in older files, ``info``) are compared with the new
    run's on the keys both have. Returns a sentence naming the file and every setting that
    differs, or None when the file is absent, records none of them, or they agree.
    """
    old = load_results(path)
    if not old:
        return None
    recorded = old.get('settings') or old.get('info') or {}
    differ = sorted(k for k in settings if k in recorded and recorded[k] != settings[k])
    if not differ:
        return None
    return (f'{path} holds results of other settings ('
            + ', '.join(f'{k}: {recorded[k]!r} there, {settings[k]!r} now' for k in differ)
            + '); write them elsewhere (--out, or --tag where there is one) or pass --force '
            'to replace them')


def refuse_other_settings(prog: str, path: str, settings: dict[str, Any], force: bool) -> bool:
    """Whether a one-run benchmark must stop before measuring: ``path`` holds results of other
    settings (:func:`settings_conflict`, said on stderr) and ``force`` was not given."""
    conflict = None if force else settings_conflict(path, settings)
    if conflict:
        print(f'{prog}: error: {conflict}', file=sys.stderr)
    return conflict is not None
