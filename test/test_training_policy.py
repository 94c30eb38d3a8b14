"""ChunkPolicy: observation history, receding-horizon execution, warm start, units and bounds."""

import numpy as np
import pytest
import torch

from energyflow_ros.core.config import ChunkSpec
from energyflow_ros.core.methods import build_method, METHODS
from energyflow_ros.core.samplers import SampleResult, shift_chunk
from energyflow_ros.data.dataset import Normalizer
from energyflow_ros.sim.rollout import evaluate_policy
from energyflow_ros.training.checkpoint import load_checkpoint, save_checkpoint
from energyflow_ros.training.policy import ChunkPolicy, evaluate_chunk_policy

SPEC = ChunkSpec(obs_dim=4, action_dim=2, horizon=4)   # 2 frames of 2 values
ACT_NORM = Normalizer(mean=np.array([10.0, 20.0]), std=np.array([2.0, 2.0]))
TINY = {'kind': 'mlp', 'mlp': {'hidden': 16, 'depth': 1}}
FAST = {'rnce': {'proposal': {'n_components': 2, 'hidden': 16, 'depth': 1},
                 'langevin': {'n_particles': 4, 'n_scales': 1, 'steps_per_scale': 1}},
        'irnce': {'proposal': {'n_components': 2, 'hidden': 16, 'depth': 1},
                  'langevin': {'n_particles': 4, 'n_scales': 2, 'steps_per_scale': 1}},
        'energyflow': {'flow': {'n_particles': 4, 'n_steps': 2}},
        'ibc': {'dfo': {'n_samples': 8, 'iterations': 1}},
        'diffusion': {'ddim': {'train_steps': 10, 'sample_steps': 2}}, 'mse': {}}


class RecordingSampler:
    """Returns chunk k (every entry = k, normalised units) on its k-th call; records inputs."""

    def __init__(self, n_particles=3):
        self.calls, self.n_particles = [], n_particles

    def sample(self, obs, generator=None, init=None):
        self.calls.append((obs.clone(), None if init is None else init.clone()))
        k = float(len(self.calls))
        chunk = torch.full((1, 4, 2), k) + torch.arange(4.0).view(1, 4, 1) * 0.1
        particles = chunk.unsqueeze(1).expand(1, self.n_particles, 4, 2)
        return SampleResult(chunk, torch.zeros(1), particles)


def _policy(executed=2, **kwargs):
    method = build_method('mse', SPEC, TINY)
    policy = ChunkPolicy(method, Normalizer.identity(4), ACT_NORM, n_obs=2,
                         executed_steps=executed, **kwargs)
    policy.sampler = RecordingSampler()
    return policy


def test_history_repeats_the_first_frame_and_stacks_oldest_first():
    policy = _policy(executed=1)
    policy(np.array([1.0, 2.0]))
    policy(np.array([3.0, 4.0]))
    policy(np.array([5.0, 6.0]))
    stacked = [obs[0].tolist() for obs, _ in policy.sampler.calls]
    assert stacked == [[1, 2, 1, 2], [1, 2, 3, 4], [3, 4, 5, 6]]


def test_executes_the_chunk_in_raw_units_then_replans():
    policy = _policy(executed=3)
    actions = np.array([policy(np.zeros(2)) for _ in range(4)])
    # chunk 1 is 1.0, 1.1, 1.2 (normalised) -> raw mean + 2 * z
    np.testing.assert_allclose(actions[:3], [[12.0, 22.0], [12.2, 22.2], [12.4, 22.4]])
    np.testing.assert_allclose(actions[3], [14.0, 24.0])   # chunk 2, first step
    assert policy.n_plans == 2


def test_actions_are_clipped_to_the_bounds():
    policy = _policy(action_low=[0.0, 22.1], action_high=[11.5, 30.0])
    assert policy(np.zeros(2)).tolist() == [11.5, 22.1]   # unclipped: [12.0, 22.0]


def test_reset_clears_history_queue_and_warm_start():
    policy = _policy(executed=2, warm_start=True)
    policy(np.array([1.0, 1.0]))
    policy.reset()
    policy(np.array([7.0, 8.0]))
    obs, init = policy.sampler.calls[-1]
    assert obs[0].tolist() == [7, 8, 7, 8] and init is None
    assert policy.n_plans == 2, 'the queued second action was dropped'


def test_warm_start_passes_the_shifted_previous_chunk_as_particles():
    policy = _policy(executed=2, warm_start=True)
    for _ in range(3):
        policy(np.zeros(2))
    (_, cold), (_, warm) = policy.sampler.calls
    assert cold is None
    first = RecordingSampler().sample(torch.zeros(1, 4)).actions
    assert warm.shape == (1, 3, 4, 2), 'as many copies as cold-start particles'
    assert torch.equal(warm[:, 0], shift_chunk(first, 2, policy.warm_extrapolation))
    cold_policy = _policy(executed=2)
    for _ in range(3):
        cold_policy(np.zeros(2))
    assert cold_policy.sampler.calls[1][1] is None


def test_inconsistent_sizes_are_refused():
    method = build_method('mse', SPEC, TINY)
    with pytest.raises(ValueError, match='executed_steps'):
        ChunkPolicy(method, Normalizer.identity(4), ACT_NORM, 2, executed_steps=5)
    with pytest.raises(ValueError, match='n_obs'):
        ChunkPolicy(method, Normalizer.identity(6), ACT_NORM, 2, executed_steps=2)
    with pytest.raises(ValueError, match='action normaliser'):
        ChunkPolicy(method, Normalizer.identity(4), Normalizer.identity(3), 2, 2)
    with pytest.raises(ValueError, match='expects 2 per frame'):
        _policy()(np.zeros(3))


@pytest.mark.parametrize('warm', [False, True])
@pytest.mark.parametrize('name', sorted(METHODS))
def test_every_method_drives_a_seeded_rollout(name, warm):
    torch.manual_seed(0)
    spec = ChunkSpec(obs_dim=8, action_dim=2, horizon=4)
    method = build_method(name, spec, TINY, FAST[name])

    def make(task):
        return ChunkPolicy(method, Normalizer.identity(8), Normalizer(
            np.full(2, 0.5), np.full(2, 0.2)), 2, 2, [0.0, 0.0], [1.0, 1.0],
            warm_start=warm, seed=4)

    runs = [evaluate_policy('obstacles2d', make, 1, seed=3, max_steps=6) for _ in range(2)]
    assert runs[0]['episodes'] == runs[1]['episodes'], 'same seed, same episode'
    assert runs[0]['n_steps_mean'] == 6


def test_from_checkpoint_loads_the_ema_weights(tmp_path):
    torch.manual_seed(0)
    method = build_method('mse', SPEC, TINY)
    ema = {k: v + 1.0 for k, v in method.state_dict().items()}
    meta = {'n_obs': 2, 'executed_steps': 2, 'action_low': [0.0, 0.0],
            'action_high': [1.0, 1.0]}
    path = str(tmp_path / 'c.pt')
    save_checkpoint(path, method, Normalizer.identity(4), ACT_NORM,
                    {'ema_state_dict': ema, 'train_meta': meta})
    policy = ChunkPolicy.from_checkpoint(load_checkpoint(path))
    assert all(torch.equal(policy.method.state_dict()[k], ema[k]) for k in ema)
    assert policy.high.tolist() == [1.0, 1.0] and policy.executed_steps == 2
    raw = ChunkPolicy.from_checkpoint(load_checkpoint(path), use_ema=False)
    weight = next(iter(ema))
    assert torch.equal(raw.method.state_dict()[weight], method.state_dict()[weight])
    # final.pt: the EMA weights are its state_dict, the trained ones its raw_state_dict
    trained = {k: v - 1.0 for k, v in method.state_dict().items()}
    save_checkpoint(path, method, Normalizer.identity(4), ACT_NORM,
                    {'raw_state_dict': trained, 'weights': 'ema', 'train_meta': meta})
    for use_ema, want in ((True, method.state_dict()), (False, trained)):
        got = ChunkPolicy.from_checkpoint(load_checkpoint(path), use_ema=use_ema)
        assert all(torch.equal(got.method.state_dict()[k], want[k]) for k in want), use_ema


def test_evaluation_leaves_the_global_random_streams_alone():
    torch.manual_seed(1)
    np.random.seed(1)
    expected = torch.rand(3), np.random.rand(3)
    torch.manual_seed(1)
    np.random.seed(1)

    def make(task):
        torch.rand(5)       # a policy that draws from the global streams
        np.random.rand(5)
        return lambda obs: obs[2:4]

    row = evaluate_chunk_policy('obstacles2d', make, 2, seed=0, max_steps=5)
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1])
    assert row['eval_n_steps'] == 5 and 'eval_success' in row and row['eval_wall_s'] >= 0
