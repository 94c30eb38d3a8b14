"""``energyflow-export``: a trainer checkpoint -> an ONNX model family the robot runs.

Writes ``<stem>.onnx`` (the fused sampler) and its siblings (warm sampler, energy, gradient,
proposal) with the model's metadata inside, after checking onnxruntime against torch. Exits 1
with the reason when the checkpoint cannot be exported or the parity gate fails (then nothing
is written).
"""

from __future__ import annotations

import argparse
import os
import sys

from energyflow_ros.export.onnx_export import (
    DEFAULT_ATOL, DEFAULT_RTOL, export_checkpoint, ExportError,
)
from energyflow_ros.export.parity import ParityError
from energyflow_ros.runtime.model_format import GRAPH_SUFFIXES, graph_path, ModelMetadata
from energyflow_ros.training.checkpoint import CheckpointError

__all__ = ['main']


def _count(low: int):
    """An argparse type: an integer of at least ``low``."""
    def parse(text: str) -> int:
        value = int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f'{text} is not an integer >= {low}')
        return value
    parse.__name__ = 'integer'          # argparse: "invalid integer value: 'x'"
    return parse


_positive, _steps = _count(1), _count(0)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog='energyflow-export', description=__doc__.split('\n')[0])
    parser.add_argument('--checkpoint', required=True, help='checkpoint written by the trainer')
    parser.add_argument('--out', required=True, help='the sampler file, <stem>.onnx')
    parser.add_argument('--particles', type=_positive, help='default particle count N')
    parser.add_argument('--steps', type=_steps,
                        help='unrolled steps K of the sampler (R-NCE: 0 ranks proposal draws '
                        'by the energy without Langevin steps, in one graph)')
    parser.add_argument('--warm-steps', type=_positive,
                        help='unrolled steps of the warm sampler (default: EnergyFlow: the '
                        'training config\'s flow.warm_steps, else the cold step density from '
                        'the warm-start time)')
    parser.add_argument('--warm-start-t', type=float,
                        help='EnergyFlow: flow time a warm-started chunk is re-noised to '
                        '(default: the training config\'s flow.warm_start_t)')
    parser.add_argument('--executed-steps', type=_positive,
                        help='actions executed per chunk (default: as in training)')
    parser.add_argument('--joint-names', help='comma-separated joints, in action order '
                                              '(default: the training data\'s action names)')
    parser.add_argument('--no-ema', action='store_true', help='export the raw, not EMA, weights')
    parser.add_argument('--atol', type=float, default=DEFAULT_ATOL, help='parity gate atol')
    parser.add_argument('--rtol', type=float, default=DEFAULT_RTOL, help='parity gate rtol')
    args = parser.parse_args(argv)
    if not args.out.endswith('.onnx'):
        parser.error(f'--out {args.out}: must end in .onnx')
    if args.atol < 0 or args.rtol < 0:
        parser.error('--atol and --rtol must be >= 0')
    return args


def summary(out: str, metadata: ModelMetadata) -> str:
    """Human-readable lines about an exported family."""
    s = metadata.sampler
    lines = [f'exported {metadata.method} ({metadata.task or "no task"}) -> {out}',
             f'  sampler: {s.kind}, N={s.n_particles}, init={s.init}'
             + (f', K={s.n_steps}' if s.n_steps else '')
             + (f', warm K={s.warm.n_steps}' if s.warm else ''),
             f'  chunk {metadata.horizon} x {metadata.action_dim} '
             f'({", ".join(metadata.joint_names)}), {metadata.executed_steps} executed, every '
             f'{metadata.control_period_s:g} s']
    for graph in GRAPH_SUFFIXES:
        path = graph_path(out, graph)
        if os.path.exists(path):
            parity = metadata.extra.get('parity', {}).get(graph, {})
            err = parity.get('max_abs_error')
            lines.append(f'  {os.path.basename(path)}: {os.path.getsize(path) / 1e6:.2f} MB'
                         + (f', parity max |ort - torch| = {err:.2g}' if err is not None else ''))
    return '\n'.join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = _parse(argv)
    joints = [j.strip() for j in args.joint_names.split(',')] if args.joint_names else None
    try:
        metadata = export_checkpoint(
            args.checkpoint, args.out, n_particles=args.particles, n_steps=args.steps,
            warm_steps=args.warm_steps, warm_start_t=args.warm_start_t,
            executed_steps=args.executed_steps, joint_names=joints, use_ema=not args.no_ema,
            atol=args.atol, rtol=args.rtol)
    except (CheckpointError, ExportError, ParityError, OSError) as exc:
        print(f'energyflow-export: error: {exc}', file=sys.stderr)
        return 1
    print(summary(args.out, metadata))
    return 0


if __name__ == '__main__':
    sys.exit(main())
