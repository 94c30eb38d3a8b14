"""``trainer``: train a policy from a YAML config plus ``key.sub=value`` overrides.

Examples::

    trainer --config config/train_obstacles2d.yaml
    trainer --config config/train_pusht.yaml method=energyflow optim.steps=20000 device=cuda
    trainer --config config/train_pusht.yaml --resume          # continue after a kill
    torchrun --nproc_per_node 4 -m energyflow_ros.cli.trainer --config ... device=cuda

Writes ``<out_dir>/checkpoint.pt`` (latest, resumable), ``final.pt``, ``metrics.csv`` and
``train_config.yaml``; when training completes, it exports ``final.pt`` to the ONNX model
family ``<out_dir>/model.onnx`` (behind the exporter's torch/onnxruntime parity gate; skip with
``--no-export``). Bad input ends with one ``trainer: error: ...`` line and exit code 2.
"""

from __future__ import annotations

import argparse
import os
import sys

import yaml

from energyflow_ros.core.config import ConfigError, config_to_dict
from energyflow_ros.data.dataset import DemoError
from energyflow_ros.training.checkpoint import CheckpointError
from energyflow_ros.training.trainer import load_train_config, train, TrainError

PROG = 'trainer'
EXPECTED_ERRORS = (ConfigError, DemoError, TrainError, CheckpointError, OSError, ValueError)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__.split('\n')[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog='overrides: any config field, dotted, e.g. optim.lr=3e-4 backbone.kind=unet '
               'eval.every=500 (values are YAML)')
    parser.add_argument('--config', help='train config YAML (default: built-in defaults)')
    parser.add_argument('--resume', action='store_true',
                        help='continue from <out_dir>/checkpoint.pt when it exists')
    parser.add_argument('--stop-after', type=int, metavar='STEP',
                        help='stop after this step, leaving a resumable checkpoint')
    parser.add_argument('--print-config', action='store_true',
                        help='print the resolved config as YAML and exit')
    parser.add_argument('--no-export', dest='export', action='store_false',
                        help='do not export <out_dir>/model.onnx at the end')
    parser.add_argument('overrides', nargs='*', metavar='key.sub=value')
    return parser.parse_intermixed_args(argv)


def _error(exc: BaseException) -> int:
    message = ' '.join(str(exc).split()) or type(exc).__name__
    print(f'{PROG}: error: {message}', file=sys.stderr, flush=True)
    return 2


def _export(checkpoint: str, out: str) -> None:
    from energyflow_ros.export.onnx_export import export_checkpoint  # torch.onnx loads slowly
    try:
        meta = export_checkpoint(checkpoint, out)
    except RuntimeError as exc:  # ExportError, ParityError: nothing was written
        raise TrainError(f'training finished ({checkpoint}) but the export failed: {exc}; '
                         'retry with energyflow-export') from exc
    print(f'{PROG}: exported {meta.method} ({meta.task}) to {out}', flush=True)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (0 done, 2 bad input)."""
    args = _parse(argv)
    try:
        if args.stop_after is not None and args.stop_after < 1:
            raise ConfigError(f'--stop-after = {args.stop_after} must be >= 1')
        cfg = load_train_config(args.config, args.overrides)
        if args.print_config:
            print(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), end='')
            return 0
        result = train(cfg, resume=args.resume, stop_after=args.stop_after)
        if args.export and result.final_path and result.trainer.ctx.is_main:
            _export(result.final_path, os.path.join(cfg.out_dir, 'model.onnx'))
    except EXPECTED_ERRORS as exc:
        return _error(exc)
    except KeyboardInterrupt:
        print(f'{PROG}: interrupted; continue with --resume', file=sys.stderr)
        return 130
    return 0


if __name__ == '__main__':
    sys.exit(main())
