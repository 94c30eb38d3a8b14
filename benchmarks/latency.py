"""Per-chunk sampling latency: torch eager vs onnxruntime (gradient loop, fused, warm) vs DDIM.

One run, one model, one set of inputs. Backends, for every particle count N and step count K:

* ``torch-eager-autograd``: the unrolled sampler in torch, gradients by autograd;
* ``ort-gradient-loop``: the exported gradient graph called K times from a Python loop;
* ``ort-fused``: the fused sampler graph (K unrolled steps + ranking in one call, IO-bound);
* ``ort-fused-warm``: the warm-start graph (few steps from the previous chunk);
* ``torch-ddim`` / ``ort-ddim``: the diffusion baseline (same MLP size, DDIM) for one chunk;
* with ``--torch-device D``: ``torch-D-handwritten``, the fused graph's own computation (the
  exported hand-written energy gradient, K unrolled steps, ranking) run by torch on D, and on
  CUDA ``torch-cuda-graph``, the same captured once as a CUDA graph and replayed. Both copy the
  observation and the initial particles in and the chosen chunk out on every call, as the node
  would. This is the GPU path to measure where onnxruntime's CUDA provider cannot be installed
  (its wheel is 256 MB).

torch and onnxruntime run as the policy node runs onnxruntime by default: one intra-op thread,
idle threads not spinning (``--threads``, ``--spin`` change that; with spinning on, the idle
threads of one backend's sessions stall the next backend's calls, and the p99 columns measure
that instead of the backend).

Calls are timed round-robin (every backend once per round), so a machine shared with other
work slows every backend alike: compare backends by their ratios within one run. Results go to
``<out>/latency-<device>[-torch-<D>].json`` (one record per (backend, N, K, device)) and ``.md``.

Usage: ``python benchmarks/latency.py [--quick] [--out benchmarks/results] [--device cpu]
[--torch-device cuda]``.
"""

from __future__ import annotations

import argparse
import copy
from dataclasses import dataclass, field, replace
import json
import os
import platform
import sys
import tempfile
import time
from typing import Any, Callable

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402

from energyflow_ros.core.config import ChunkSpec  # noqa: E402
from energyflow_ros.core.methods import build_method, Method  # noqa: E402
from energyflow_ros.core.networks import count_parameters  # noqa: E402
from energyflow_ros.data.dataset import Normalizer  # noqa: E402
from energyflow_ros.export.graphs import DDIMGraph, energy_term  # noqa: E402
from energyflow_ros.cli.results_files import refuse_other_settings, write_files  # noqa: E402
from energyflow_ros.export.onnx_export import (  # noqa: E402
    DEFAULT_ATOL, DEFAULT_RTOL, export_method,
)
from energyflow_ros.export.parity import reference_sampler  # noqa: E402
from energyflow_ros.runtime import load_model, OnnxModel, ProviderConfig  # noqa: E402
from energyflow_ros.runtime.planner import shift_chunk  # noqa: E402
from energyflow_ros.runtime.providers import (  # noqa: E402
    NODE_ALLOW_SPINNING, NODE_INTRA_OP_THREADS, session_options,
)


@dataclass
class Backend:
    """One timed configuration: ``run()`` samples one chunk and returns (chunk, index)."""

    name: str
    n: int
    k: int
    run: Callable[[], tuple[np.ndarray, int]]
    flops: float
    times_ms: list[float] = field(default_factory=list)
    check: dict[str, Any] = field(default_factory=dict)
    device: str | None = None            # where it runs, when not onnxruntime's device


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0], allow_abbrev=False)
    parser.add_argument('--out', default=os.path.join(os.path.dirname(__file__), 'results'))
    parser.add_argument('--device', default='cpu', choices=['cpu', 'cuda', 'tensorrt'])
    parser.add_argument('--torch-device', default='', choices=['', 'cpu', 'cuda'],
                        help='also time the fused computation in torch on this device (CUDA: '
                        'eager and as a captured CUDA graph)')
    parser.add_argument('--threads', type=int, default=NODE_INTRA_OP_THREADS,
                        help="torch and ORT intra-op threads (default: the policy node's)")
    parser.add_argument('--spin', action=argparse.BooleanOptionalAction,
                        default=NODE_ALLOW_SPINNING,
                        help="let idle onnxruntime threads spin (default: the policy node's "
                        "setting, off; spinning threads of one backend's sessions stall the "
                        "next backend's calls, which shows up in every p99)")
    parser.add_argument('--particles', default='4,16,64,256')
    parser.add_argument('--steps', default='10,20')
    parser.add_argument('--ddim-steps', type=int, default=10)
    parser.add_argument('--repeats', type=int, default=40, help='timed rounds')
    parser.add_argument('--block', type=int, default=5, help='timed calls per backend and round')
    parser.add_argument('--warmup', type=int, default=2, help='untimed rounds first')
    parser.add_argument('--hidden', type=int, default=256)
    parser.add_argument('--depth', type=int, default=4)
    parser.add_argument('--obs-dim', type=int, default=8)
    parser.add_argument('--horizon', type=int, default=16)
    parser.add_argument('--action-dim', type=int, default=2)
    parser.add_argument('--fit-steps', type=int, default=300,
                        help='denoising score matching steps on a two-mode chunk set before '
                        'export, so the sampler moves its particles and the output check '
                        'compares real trajectories (untrained, they barely move)')
    parser.add_argument('--quick', action='store_true',
                        help='tiny model and grid (smoke test); results get a -quick suffix')
    parser.add_argument('--force', action='store_true',
                        help='replace a results file of other settings (refused otherwise)')
    if '--quick' in (sys.argv[1:] if argv is None else argv):   # explicit flags still win
        parser.set_defaults(particles='4,8', steps='2,3', ddim_steps=3, repeats=5, block=1,
                            warmup=1, hidden=32, depth=2, horizon=4, fit_steps=30)
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error(f'--threads {args.threads}: expected at least 1 thread')
    if args.torch_device == 'cuda' and not torch.cuda.is_available():
        parser.error(f'--torch-device cuda: torch {torch.__version__} sees no CUDA device here')
    args.particles = [int(v) for v in args.particles.split(',')]
    args.steps = [int(v) for v in args.steps.split(',')]
    return args


def machine_info(args: argparse.Namespace) -> dict[str, Any]:
    """CPU model, cores, load, versions, and the providers onnxruntime offers."""
    model = platform.processor() or platform.machine()
    try:
        with open('/proc/cpuinfo', encoding='utf-8') as handle:
            names = [ln.split(':', 1)[1].strip() for ln in handle if ln.startswith('model name')]
        model = names[0] if names else model
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
    return {'cpu': model, 'cores': cores, 'load_avg_start': list(os.getloadavg()),
            'python': platform.python_version(), 'torch': torch.__version__,
            'onnx': onnx.__version__, 'onnxruntime': ort.__version__,
            'available_providers': ort.get_available_providers(),
            'gpu': torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            'threads': args.threads, 'spin': args.spin}


def _train_meta(args: argparse.Namespace) -> dict[str, Any]:
    frame = args.obs_dim // 2
    return {'task': 'latency-benchmark', 'obs_names': [f'o{i}' for i in range(frame)],
            'action_names': [f'j{i}' for i in range(args.action_dim)], 'n_obs': 2,
            'horizon': args.horizon, 'executed_steps': max(1, args.horizon // 2),
            'control_period_s': 0.1, 'action_low': [-1.0] * args.action_dim,
            'action_high': [1.0] * args.action_dim, 'data_sha256': 'synthetic'}


def build_models(args: argparse.Namespace, folder: str) -> dict[str, Any]:
    """The EnergyFlow energy and the same-size diffusion baseline, exported per K."""
    torch.manual_seed(0)
    spec = ChunkSpec(args.obs_dim, args.action_dim, args.horizon)
    mlp = {'kind': 'mlp', 'mlp': {'hidden': args.hidden, 'depth': args.depth}}
    energy = fit_energy(build_method('energyflow', spec, mlp, {}), args).eval()
    ddim = build_method('diffusion', spec, mlp, {'ddim': {'sample_steps': args.ddim_steps}})
    norms = (Normalizer.identity(args.obs_dim), Normalizer.identity(args.action_dim))
    meta, cfg = _train_meta(args), ProviderConfig(device=args.device,
                                                  intra_op_threads=args.threads, warmup_runs=0,
                                                  allow_spinning=args.spin)
    # The gradient loop calls its sessions with host arrays, one step at a time: no CUDA
    # graph (a replay needs IO binding at fixed addresses and would ignore new inputs).
    loop_cfg = replace(cfg, cuda_graphs=False)
    families, loops = {}, {}
    for k in args.steps:
        path = os.path.join(folder, f'energyflow_k{k}.onnx')
        export_method(energy, *norms, meta, path, n_steps=k)
        families[k] = load_model(path, providers=cfg, graphs=['sampler', 'warm_sampler'])
        loops[k] = load_model(path, providers=loop_cfg, graphs=['energy', 'gradient'])
    path = os.path.join(folder, 'diffusion.onnx')
    export_method(ddim.eval(), *norms, meta, path)
    return {'energy': energy, 'ddim': ddim.eval(), 'families': families, 'loops': loops,
            'ddim_model': load_model(path, providers=cfg)}


def fit_energy(method: Method, args: argparse.Namespace) -> Method:
    """A few denoising score matching steps on chunks of two modes (a ramp up or down, offset
    by the observation), so the sampler's field is a trained one's, not a random net's."""
    gen = torch.Generator().manual_seed(0)
    optim = torch.optim.Adam(method.parameters(), lr=1e-3)
    ramp = torch.linspace(-1.0, 1.0, args.horizon).view(1, -1, 1)
    method.train()
    for _ in range(args.fit_steps):
        obs = torch.randn(256, args.obs_dim, generator=gen)
        sign = torch.randint(0, 2, (256, 1, 1), generator=gen) * 2.0 - 1.0
        chunks = sign * ramp + 0.5 * obs[:, None, :args.action_dim].tanh()
        loss, _ = method.loss(obs, chunks, gen)
        optim.zero_grad()
        loss.backward()
        optim.step()
    return method


def sampler_flops(args: argparse.Namespace, n: int, k: int) -> float:
    """FLOPs of one chunk: K energy+gradient evaluations and one ranking, N particles."""
    h, d = args.hidden, args.horizon * args.action_dim
    forward = d * h + (args.depth - 1) * h * h + h
    backward = (args.depth - 1) * h * h + h * d + h
    return 2.0 * n * (k * (forward + backward) + forward)


def ddim_flops(args: argparse.Namespace, model: Method) -> float:
    """FLOPs of one DDIM chunk (the denoiser's linear layers, ``ddim_steps`` times)."""
    layers = [m for m in model.net.modules() if isinstance(m, torch.nn.Linear)]
    return 2.0 * args.ddim_steps * sum(m.in_features * m.out_features for m in layers)


def _inputs(model: OnnxModel, n: int, seed: int) -> dict[str, np.ndarray]:
    meta = model.metadata
    rng = np.random.default_rng(seed)
    s = meta.sampler.cold
    shape = (1, n, meta.horizon, meta.action_dim)
    return {'obs': rng.standard_normal((1, meta.obs_dim), dtype=np.float32),
            'init': (s.init_std * rng.standard_normal(shape)).astype(np.float32),
            'sigmas': np.float32(s.sigmas), 'step_sizes': np.float32(s.step_sizes),
            'noise': np.zeros((s.n_steps, *shape), np.float32),
            'rank_sigma': np.float32([meta.sampler.rank_sigma])}


def _warm_inputs(model: OnnxModel, cold: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    meta = model.metadata
    best = model.run('sampler', cold)['action'][0]
    w = meta.sampler.warm
    rng = np.random.default_rng(1)
    init = shift_chunk(best, meta.executed_steps)[None, None] + w.init_std * rng.standard_normal(
        cold['init'].shape)
    return {**cold, 'init': init.astype(np.float32), 'sigmas': np.float32(w.sigmas),
            'step_sizes': np.float32(w.step_sizes),
            'noise': np.zeros((w.n_steps, *cold['init'].shape), np.float32)}


def _torch_sampler(method: Method, feeds: dict[str, np.ndarray]) -> Callable:
    t = {k: torch.from_numpy(v) for k, v in feeds.items()}

    def run() -> tuple[np.ndarray, int]:
        res = reference_sampler(method, t['obs'], t['init'], feeds['sigmas'].tolist(),
                                feeds['step_sizes'].tolist(), t['noise'],
                                float(feeds['rank_sigma'][0]))
        chosen = (res.particles[0] == res.actions[0]).flatten(1).all(1)
        return res.actions[0].numpy(), int(chosen.int().argmax())
    return run


def _torch_fused(term: torch.nn.Module, feeds: dict[str, np.ndarray], device: str,
                 cuda_graph: bool = False) -> Callable:
    """The fused sampler's computation in torch on ``device`` (optionally a CUDA graph).

    The energy term is the exported graphs' (hand-written gradient: no autograd, so the whole
    chunk can be captured); observation and initial particles are copied in from pinned host
    memory and the chosen chunk copied out on every call.
    """
    term = copy.deepcopy(term).to(device).eval()
    pin = device == 'cuda'
    host = {k: torch.from_numpy(feeds[k]) for k in ('obs', 'init')}
    host = {k: v.pin_memory() if pin else v for k, v in host.items()}
    static = {k: torch.from_numpy(v).to(device) for k, v in feeds.items()}
    n_steps = len(feeds['sigmas'])

    @torch.no_grad()
    def chunk() -> tuple[torch.Tensor, torch.Tensor]:
        a = static['init']
        for k in range(n_steps):
            _, g = term.energy_and_grad(static['obs'], a, static['sigmas'][k:k + 1])
            a = a - static['step_sizes'][k] * g + static['noise'][k]
        e = term.energy(static['obs'], a, static['rank_sigma'])
        idx = e.argmin(dim=1)                                            # (B,)
        pick = idx.view(-1, 1, 1, 1).expand(-1, 1, *a.shape[2:])
        return a.gather(1, pick)[:, 0], idx

    def load_inputs() -> None:
        for k, v in host.items():
            static[k].copy_(v, non_blocking=pin)

    if not cuda_graph:
        def run() -> tuple[np.ndarray, int]:
            load_inputs()
            best, idx = chunk()
            return best[0].cpu().numpy(), int(idx[0])
        return run
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):                  # warm-up outside the capture (allocations)
            chunk()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = chunk()
    out_host = out[0].new_empty(out[0].shape, device='cpu').pin_memory()

    def replay() -> tuple[np.ndarray, int]:
        load_inputs()
        graph.replay()
        out_host.copy_(out[0])          # synchronous: waits for the replay
        return out_host[0].numpy().copy(), int(out[1][0])
    return replay


def _torch_backends(args: argparse.Namespace, models: dict[str, Any], n: int, k: int,
                    feeds: dict[str, np.ndarray]) -> list[Backend]:
    """``--torch-device``: the fused computation in torch there (and as a CUDA graph)."""
    dev = args.torch_device
    if not dev:
        return []
    term, traced = energy_term(models['energy'])
    if traced:
        raise SystemExit('--torch-device needs a hand-written gradient (an MLP energy)')
    flops = sampler_flops(args, n, k)
    out = [Backend(f'torch-{dev}-handwritten', n, k, _torch_fused(term, feeds, dev), flops,
                   device=dev)]
    if dev == 'cuda':
        out.append(Backend('torch-cuda-graph', n, k,
                           _torch_fused(term, feeds, dev, cuda_graph=True), flops, device=dev))
    return out


def _ort_loop(model: OnnxModel, feeds: dict[str, np.ndarray]) -> Callable:
    grad, energy = model.sessions['gradient'], model.sessions['energy']

    def run() -> tuple[np.ndarray, int]:
        a = feeds['init']
        for k in range(len(feeds['sigmas'])):
            g = grad.run(['grads'], {'obs': feeds['obs'], 'actions': a,
                                     'sigma': feeds['sigmas'][k:k + 1]})[0]
            a = a - feeds['step_sizes'][k] * g + feeds['noise'][k]
        e = energy.run(['energies'], {'obs': feeds['obs'], 'actions': a,
                                      'sigma': feeds['rank_sigma']})[0]
        idx = int(e[0].argmin())
        return a[0, idx], idx
    return run


def _ort_fused(model: OnnxModel, graph: str, feeds: dict[str, np.ndarray]) -> Callable:
    def run() -> tuple[np.ndarray, int]:
        out = model.run(graph, feeds)
        return out['action'][0], int(out['energies'][0].argmin())
    return run


def _ddim_backends(args: argparse.Namespace, models: dict[str, Any]) -> list[Backend]:
    model, method = models['ddim_model'], models['ddim']
    rng = np.random.default_rng(2)
    obs = rng.standard_normal((1, args.obs_dim), dtype=np.float32)
    init = rng.standard_normal((1, 1, args.horizon, args.action_dim), dtype=np.float32)
    graph_module = DDIMGraph(method)
    t_obs, t_init = torch.from_numpy(obs), torch.from_numpy(init)

    def torch_run() -> tuple[np.ndarray, int]:
        with torch.no_grad():
            return graph_module(t_obs, t_init)[0][0].numpy(), 0

    def ort_run() -> tuple[np.ndarray, int]:
        return model.run('sampler', {'obs': obs, 'init': init})['action'][0], 0
    flops = ddim_flops(args, method)
    return [Backend('torch-ddim', 1, args.ddim_steps, torch_run, flops, device='cpu'),
            Backend('ort-ddim', 1, args.ddim_steps, ort_run, flops, device=model.provider)]


def make_backends(args: argparse.Namespace, models: dict[str, Any]) -> list[Backend]:
    """Every backend of the grid, with its output check against torch."""
    backends, warm_seen = [], set()
    for k, model in models['families'].items():
        warm_k = model.metadata.sampler.warm.n_steps
        for n in args.particles:
            feeds = _inputs(model, n, seed=n * 100 + k)
            warm = _warm_inputs(model, feeds)
            ref = _torch_sampler(models['energy'], feeds)
            group = [Backend('torch-eager-autograd', n, k, ref, sampler_flops(args, n, k),
                             device='cpu'),
                     # each onnxruntime row is labelled by the provider its own session
                     # got (a model may fall back where another did not)
                     Backend('ort-gradient-loop', n, k, _ort_loop(models['loops'][k], feeds),
                             sampler_flops(args, n, k), device=models['loops'][k].provider),
                     Backend('ort-fused', n, k, _ort_fused(model, 'sampler', feeds),
                             sampler_flops(args, n, k), device=model.provider),
                     Backend('ort-fused-warm', n, warm_k,
                             _ort_fused(model, 'warm_sampler', warm),
                             sampler_flops(args, n, warm_k), device=model.provider)]
            extra = _torch_backends(args, models, n, k, feeds)
            _check(group[0], group[1:3] + extra, feeds['init'][0])
            group[2].check['warm_K'] = warm_k
            if (n, warm_k) in warm_seen:       # the same warm graph as another K's family
                group.pop()
            else:
                warm_seen.add((n, warm_k))
                _check(Backend('torch-warm', n, warm_k, _torch_sampler(models['energy'], warm),
                               0, device='cpu'), group[3:], warm['init'][0])
            backends += group + extra
    ddim = _ddim_backends(args, models)
    _check(ddim[0], ddim[1:])
    return backends + ddim


def _check(reference: Backend, others: list[Backend], start: np.ndarray | None = None) -> None:
    """Record how far each backend's chunk is from torch's, whether it chose the same particle,
    whether that is a match (the same choice, the chunk within the export parity gate's
    tolerance atol + rtol |torch|), and how far torch moved the chosen particle from its start
    (``start``: (N, H, A) initial particles): a check of a sampler that barely moves its
    particles would pass by standing still."""
    ref_chunk, ref_idx = reference.run()
    moved = None if start is None else float(np.abs(ref_chunk - start[ref_idx]).max())
    for backend in others:
        chunk, idx = backend.run()
        diff = float(np.abs(chunk - ref_chunk).max())
        bound = DEFAULT_ATOL + DEFAULT_RTOL * float(np.abs(ref_chunk).max())
        backend.check = {'max_abs_diff_vs_torch': diff, 'same_choice_as_torch': idx == ref_idx,
                         'torch_moved': moved, 'matches_torch': idx == ref_idx and diff <= bound}


def time_interleaved(backends: list[Backend], rounds: int, block: int, warmup: int,
                     settle_s: float = 0.02) -> None:
    """Every round, time ``block`` consecutive calls of each backend after one untimed call.

    Rounds interleave the backends over the whole run, so background load affects all
    alike; a short pause and the untimed call let the previous backend's threads (torch's
    OpenMP workers, onnxruntime's spinning pools) go idle before timing starts.
    """
    for r in range(warmup + rounds):
        for backend in backends:
            time.sleep(settle_s)
            backend.run()
            for _ in range(block):
                start = time.perf_counter()
                backend.run()
                if r >= warmup:
                    backend.times_ms.append(1e3 * (time.perf_counter() - start))


def matmul_peak(threads: int, size: tuple[int, int, int] = (512, 1024, 1024),
                repeats: int = 30) -> dict[str, float]:
    """GFLOP/s of one ORT MatMul (M x K) @ (K x N) with the benchmark's thread settings."""
    m, k, n = size
    h = onnx.helper
    graph = h.make_graph([h.make_node('MatMul', ['a', 'b'], ['c'])], 'matmul',
                         [h.make_tensor_value_info('a', onnx.TensorProto.FLOAT, [m, k])],
                         [h.make_tensor_value_info('c', onnx.TensorProto.FLOAT, [m, n])],
                         [onnx.numpy_helper.from_array(
                             np.random.default_rng(0).standard_normal((k, n), np.float32), 'b')])
    model = h.make_model(graph, opset_imports=[h.make_opsetid('', 17)])
    model.ir_version = 9
    session = ort.InferenceSession(model.SerializeToString(),
                                   session_options(ProviderConfig(intra_op_threads=threads)),
                                   providers=['CPUExecutionProvider'])
    a = np.random.default_rng(1).standard_normal((m, k), np.float32)
    times = []
    for i in range(repeats + 3):
        start = time.perf_counter()
        session.run(None, {'a': a})
        if i >= 3:
            times.append(time.perf_counter() - start)
    return {'shape': [m, k, n], 'p50_ms': 1e3 * float(np.median(times)),
            'gflops': 2.0 * m * k * n / float(np.median(times)) / 1e9}


def records(backends: list[Backend], device: str) -> list[dict[str, Any]]:
    """One JSON record per (backend, N, K, device)."""
    out = []
    for b in backends:
        t = np.asarray(b.times_ms)
        p50 = float(np.percentile(t, 50))
        out.append({'backend': b.name, 'N': b.n, 'K': b.k, 'device': b.device or device,
                    'p50_ms': round(p50, 4), 'p99_ms': round(float(np.percentile(t, 99)), 4),
                    'max_ms': round(float(t.max()), 4), 'calls': int(len(t)),
                    'gflops_at_p50': round(b.flops / (p50 / 1e3) / 1e9, 2), **b.check})
    return out


def _row(recs: list[dict[str, Any]], backend: str, n: int, k: int) -> dict[str, Any] | None:
    return next((r for r in recs if (r['backend'], r['N'], r['K']) == (backend, n, k)), None)


def comparisons(recs: list[dict[str, Any]], args: argparse.Namespace) -> list[str]:
    """Same-run ratios: fused vs torch and vs the loop, warm vs cold, EBM vs DDIM."""
    lines = []
    ddim = _row(recs, 'ort-ddim', 1, args.ddim_steps)
    for r in (r for r in recs if r['backend'] == 'ort-fused'):
        t = _row(recs, 'torch-eager-autograd', r['N'], r['K'])
        loop = _row(recs, 'ort-gradient-loop', r['N'], r['K'])
        warm = _row(recs, 'ort-fused-warm', r['N'], r['warm_K'])
        lines.append(
            f"| {r['N']} | {r['K']} | {t['p99_ms'] / r['p99_ms']:.2f}x | "
            f"{t['p50_ms'] / r['p50_ms']:.2f}x | {loop['p99_ms'] / r['p99_ms']:.2f}x | "
            f"{warm['K']}: {r['p99_ms'] / warm['p99_ms']:.2f}x | "
            f"{warm['p99_ms'] / ddim['p99_ms']:.2f} | {r['p99_ms'] / ddim['p99_ms']:.2f} |")
    return lines


def torch_device_lines(recs: list[dict[str, Any]], args: argparse.Namespace) -> list[str]:
    """``--torch-device``: the fused computation in torch there, beside ORT's fused graph."""
    dev = args.torch_device
    if not dev:
        return []
    names = [f'torch-{dev}-handwritten'] + (['torch-cuda-graph'] if dev == 'cuda' else [])
    lines = ['', f'## The fused computation in torch on {dev}', '',
             '| N | K | ' + ' | '.join(f'{n} p50 / p99 ms' for n in names) +
             ' | ORT fused p50 / p99 ms (same run) |', '|' + '---|' * (3 + len(names))]
    for r in (r for r in recs if r['backend'] == 'ort-fused'):
        cells = []
        for name in names:
            t = _row(recs, name, r['N'], r['K'])
            cells.append(f"{t['p50_ms']:.3f} / {t['p99_ms']:.3f}")
        lines.append(f"| {r['N']} | {r['K']} | {' | '.join(cells)} | "
                     f"{r['p50_ms']:.3f} / {r['p99_ms']:.3f} |")
    target = _row(recs, names[-1], 256, 20)
    if dev == 'cuda' and target is not None:
        met = 'met' if target['p99_ms'] <= 1.0 else 'not met'
        lines += ['', f"Target p99 <= 1 ms at N=256, K=20 on the GPU ({names[-1]}, the torch "
                  f"path, not onnxruntime's CUDA provider): {target['p99_ms']:.3f} ms, {met}."]
    return lines


def _fmt(value: float | None) -> str:
    return '(reference)' if value is None else f'{value:.2g}'


def markdown(info: dict[str, Any], args: argparse.Namespace, recs: list[dict[str, Any]],
             peak: dict[str, float], notes: list[str]) -> str:
    """The human-readable results file."""
    lines = [f"# Sampling latency on {info['device']}: {info['cpu']}, {info['cores']} cores", '',
             f"torch {info['torch']}, onnxruntime {info['onnxruntime']} (providers that ran: "
             f"{', '.join(info['providers_ran'])}), {args.threads} threads, load average "
             f"{info['load_avg_start'][0]:.2f} at start / {info['load_avg_end'][0]:.2f} at end.",
             '', f"Model: EnergyFlow MLP energy, obs {args.obs_dim}, chunk {args.horizon}x"
             f"{args.action_dim}, hidden {args.hidden}, depth {args.depth} "
             f"({info['energy_params']} parameters, fitted {info.get('fit_steps', 0)} steps); "
             f"diffusion baseline MLP denoiser "
             f"({info['ddim_params']} parameters), DDIM-{args.ddim_steps}, one chunk.", '',
             f"ORT MatMul {peak['shape']} on the CPU provider: {peak['gflops']:.1f} GFLOP/s "
             '(same run).', '',
             '| backend | N | K | p50 ms | p99 ms | max ms | calls | GFLOP/s @p50 | '
             'max abs diff vs torch | same choice | matches torch |', '|' + '---|' * 11]
    for r in recs:
        lines.append(f"| {r['backend']} | {r['N']} | {r['K']} | {r['p50_ms']:.3f} | "
                     f"{r['p99_ms']:.3f} | {r['max_ms']:.3f} | {r['calls']} | "
                     f"{r['gflops_at_p50']:.1f} | {_fmt(r.get('max_abs_diff_vs_torch'))} | "
                     f"{r.get('same_choice_as_torch', '(reference)')} | "
                     f"{r.get('matches_torch', '(reference)')} |")
    lines += ['', '## Same-run ratios', '',
              '| N | K | torch / fused (p99) | torch / fused (p50) | loop / fused (p99) | '
              'warm K: cold / warm (p99) | warm / DDIM (p99) | cold / DDIM (p99) |',
              '|' + '---|' * 8] + comparisons(recs, args) + torch_device_lines(recs, args)
    return '\n'.join(lines + ['', '## Notes', ''] + [f'- {n}' for n in notes]) + '\n'


def _stem(args: argparse.Namespace, device: str) -> str:
    """The results files' name without extension, for onnxruntime rows run on ``device``."""
    return (f'latency-{device}' + (f'-torch-{args.torch_device}' if args.torch_device else '')
            + ('-quick' if args.quick else ''))


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print and write the results."""
    args = _parse(argv)
    compared = {k: v for k, v in vars(args).items() if k not in ('out', 'force')}
    if refuse_other_settings('latency', os.path.join(args.out, _stem(args, args.device)
                                                     + '.json'), compared, args.force):
        return 2                        # said before minutes of timing, not after
    torch.set_num_threads(args.threads)
    info = machine_info(args)
    print(json.dumps(info, indent=1))
    with tempfile.TemporaryDirectory() as folder:
        models = build_models(args, folder)
        backends = make_backends(args, models)
        device = models['ddim_model'].provider
        print(f'timing {len(backends)} backends x {args.repeats} rounds x {args.block} calls on '
              f'{device} ...', flush=True)
        peak_before = matmul_peak(args.threads)
        time_interleaved(backends, args.repeats, args.block, args.warmup)
        peak = matmul_peak(args.threads)
    peak['gflops_before_timing'] = peak_before['gflops']
    loaded = [*models['families'].values(), *models['loops'].values(), models['ddim_model']]
    ran = {m.provider for m in loaded}
    info.update(device=device, providers_ran=sorted(ran),
                fallbacks=sorted({m.fallback for m in loaded if m.fallback}),
                fit_steps=args.fit_steps,
                load_avg_end=list(os.getloadavg()),
                energy_params=count_parameters(models['energy']),
                ddim_params=count_parameters(models['ddim']))
    recs = records(backends, device)
    notes = [
        f'Rounds interleave the backends ({args.repeats} rounds x {args.block} timed calls '
        'each, after one untimed call), so background load on a shared machine hits every '
        'backend alike; compare backends by the ratios of this run, not across runs.',
        f'torch and every onnxruntime session use {args.threads} intra-op threads; ' +
        ('onnxruntime threads spin when idle (--spin).' if args.spin else
         'onnxruntime threads do not spin when idle, as in the policy node (with --spin, '
         "the idle threads of one backend's sessions stall the next backend's calls, and "
         'the p99 columns measure that).'),
        'GFLOP/s counts the nominal energy + action-gradient work per particle and step '
        '(2 x multiply-adds of the linear layers) divided by the p50 time.',
        'The EBM rows sample a whole chunk; with executed steps = horizon/2 a chunk serves '
        f'{max(1, args.horizon // 2)} control ticks. The energy is fitted for '
        f'{args.fit_steps} denoising score matching steps on a synthetic two-mode chunk set, so '
        'the sampler moves its particles (torch moved the chosen one by up to '
        f"{max((r.get('torch_moved') or 0.0 for r in recs), default=0.0):.2f}); task success "
        'is not measured here: "at equal success" needs the task evaluations.',
        '"matches torch": the same particle chosen, and the chunk within the export parity '
        f"gate's tolerance ({DEFAULT_ATOL:g} + {DEFAULT_RTOL:g} |torch|)."]
    mismatched = [f"{r['backend']} N={r['N']} K={r['K']}" for r in recs
                  if r.get('matches_torch') is False]
    if mismatched:
        notes.insert(0, f"MISMATCH against torch: {', '.join(mismatched)}.")
    if info['fallbacks']:
        notes.append(f"onnxruntime fell back: {'; '.join(info['fallbacks'])}.")
    if device != 'cpu':
        notes.append('The MatMul peak is measured on the CPU provider, not on ' + device + '.')
    if 'CUDAExecutionProvider' not in info['available_providers']:
        notes.append('No GPU provider in this onnxruntime build: the CUDA path (IO binding to '
                     'device buffers, CUDA graphs; target p99 <= 1 ms at N=256, K=20) was not '
                     'measured. Run `python benchmarks/latency.py --device cuda` on a GPU '
                     'machine with onnxruntime-gpu' + (
                         '; the torch rows above are the GPU path measured instead.'
                         if args.torch_device == 'cuda' else ', or add `--torch-device cuda` '
                         'to time the same computation in torch on the GPU.'))
    if args.torch_device == 'cuda':
        notes.append(f"The torch rows ran on {info['gpu'] or 'a CUDA device'} (torch "
                     f"{torch.__version__}, CUDA {torch.version.cuda}); the onnxruntime rows on "
                     f"{device}.")
    # a run that fell back to another device does not replace that device's own results
    stem = _stem(args, device) + ('' if device == args.device else f'-from-{args.device}')
    text = markdown(info, args, recs, peak, notes)
    write_files(args.out, {stem + '.json': json.dumps(
        {'machine': info, 'settings': dict(vars(args)), 'matmul_peak': peak, 'records': recs,
         'notes': notes}, indent=1) + '\n', stem + '.md': text})
    print(text)
    if mismatched:
        print(f'latency: {len(mismatched)} backend(s) do not match torch', file=sys.stderr)
    return 1 if mismatched else 0


if __name__ == '__main__':
    sys.exit(main())
