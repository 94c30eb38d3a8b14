"""``energyflow-density-demo``: train every energy method on a known 2-D multimodal density.

Fits R-NCE, interpolating R-NCE, EnergyFlow and IBC to the same conditional density with the
same network and step budget, then reports how well each recovers the true density
(Bhattacharyya coefficient), whether its sampler finds every mode, and the wall times; it saves
a PNG of the learned densities beside the truth.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import torch

from energyflow_ros.training.toy_density import (
    bhattacharyya_on_grid, fit_on_density, RotatingMixture,
)

METHOD_CONFIGS = {
    'rnce': {'n_negatives': 16, 'proposal': {'n_components': 8, 'hidden': 128, 'depth': 2,
                                             'broad_weight': 0.2}},
    'irnce': {'n_negatives': 16, 'proposal': {'n_components': 8, 'hidden': 128, 'depth': 2,
                                              'broad_weight': 0.2}},
    'energyflow': {},
    'ibc': {'n_negatives': 16},
}


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog='energyflow-density-demo',
                                     description=__doc__.split('\n')[0])
    parser.add_argument('--steps', type=int, default=1500, help='training steps per method')
    parser.add_argument('--methods', default='rnce,irnce,energyflow,ibc',
                        help=f'comma-separated subset of {sorted(METHOD_CONFIGS)}')
    parser.add_argument('--out', default='outputs/demo', help='folder for the plot and JSON')
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)
    unknown = sorted(set(args.methods.split(',')) - set(METHOD_CONFIGS))
    if unknown:
        parser.error(f'unknown method(s) {unknown}; allowed: {sorted(METHOD_CONFIGS)}')
    if args.steps < 1:
        parser.error('--steps must be >= 1')
    return args


def mode_coverage(method, density: RotatingMixture, n: int = 400, seed: int = 1) -> dict:
    """Sample one action for each of n observations; report mode shares and near-mode rate."""
    gen = torch.Generator().manual_seed(seed)
    obs = (torch.rand(n, generator=gen) * 2 - 1)[:, None]
    start = time.perf_counter()
    actions = method.sampler().sample(obs, gen).actions[:, 0]
    sample_ms = 1000 * (time.perf_counter() - start) / n
    log_w, means = density.params(obs[:, 0])
    dist = (actions[:, None, :] - means).norm(dim=-1)
    near = dist.min(dim=1).values < 3 * density.std
    shares = torch.bincount(dist.argmin(dim=1)[near], minlength=4).float() / n
    true_shares = log_w.exp().mean(0)
    return {'near_mode': near.float().mean().item(), 'mode_shares': shares.tolist(),
            'true_mode_shares': true_shares.tolist(), 'sample_ms_per_obs': sample_ms}


def _plot(results: dict, methods: dict, density: RotatingMixture, path: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from energyflow_ros.core.energy import candidate_energies
    xs = torch.linspace(-1.2, 1.2, 120)
    grid = torch.stack(torch.meshgrid(xs, xs, indexing='ij'), -1).reshape(-1, 2)
    o = torch.full((1, 1), 0.2)
    panels = [('truth', density.log_prob(o.expand(len(grid), 1)[:, 0], grid))]
    for name, method in methods.items():
        with torch.no_grad():
            panels.append((f"{name} (BC {results[name]['bhattacharyya']:.3f})",
                           -candidate_energies(method.energy, o, grid[None, :, None, :],
                                               method.sigma_min)[0]))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.2))
    for ax, (title, logp) in zip(axes, panels):
        ax.imshow(torch.softmax(logp, 0).view(120, 120).T.numpy(), origin='lower',
                  extent=(-1.2, 1.2, -1.2, 1.2))
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle('p(a | o = 0.2): learned exp(-E) vs the true density')
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Entry point: train, evaluate, print a table, save JSON and a PNG."""
    args = _parse(argv)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    density = RotatingMixture(std=0.1)
    backbone = {'kind': 'mlp', 'mlp': {'hidden': 128, 'depth': 3}}
    try:
        os.makedirs(args.out, exist_ok=True)
    except OSError as exc:
        print(f'energyflow-demo: error: cannot create --out {args.out}: {exc}', file=sys.stderr)
        return 2
    print(f'energyflow-demo: {args.steps} steps per method on a 4-mode conditional density '
          f'({platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, '
          f'torch {torch.__version__})', flush=True)
    results, trained = {}, {}
    for name in args.methods.split(','):
        method, train_s = fit_on_density(name, density, args.steps, 128, backbone,
                                         METHOD_CONFIGS[name], seed=args.seed)
        trained[name] = method
        results[name] = {'bhattacharyya': bhattacharyya_on_grid(method.energy, density,
                                                                sigma=method.sigma_min),
                         'train_s': train_s, **mode_coverage(method, density)}
        r = results[name]
        print(f"  {name:<11} BC {r['bhattacharyya']:.4f}  samples near a mode "
              f"{r['near_mode']:.2f}  mode shares "
              f"{' '.join(f'{s:.2f}' for s in r['mode_shares'])} (true "
              f"{' '.join(f'{s:.2f}' for s in r['true_mode_shares'])})  train "
              f"{train_s:.1f} s  sample {r['sample_ms_per_obs']:.2f} ms/obs", flush=True)
    with open(os.path.join(args.out, 'demo.json'), 'w') as handle:
        json.dump({'steps': args.steps, 'seed': args.seed, 'results': results}, handle, indent=2)
    plot = os.path.join(args.out, 'densities.png')
    _plot(results, trained, density, plot)
    print(f'wrote {plot} and demo.json')
    return 0


if __name__ == '__main__':
    sys.exit(main())
