"""Downstream RL on a chunk environment with four reward sources, at equal environment steps.

- ``true``: SAC (stable-baselines3) on the task's hand-written reward.
- ``energyflow``: SAC on the reward extracted from an exported EnergyFlow model
  (:class:`~energyflow_ros.runtime.reward.EnergyReward`), divided by its spread on the
  demonstrations so SAC sees rewards of order one.
- ``gail`` / ``airl``: the ``imitation`` package's GAIL and AIRL on the same demonstrations,
  with SAC as the generator, so only the reward differs between the four.

Every agent is scored on the task's own success, with deterministic actions, on evaluation
episodes whose seeds never overlap the demonstrations'.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from energyflow_ros.rl.chunk_env import ChunkEnv, ChunkEnvConfig, ChunkReward, decode_chunk
from energyflow_ros.rl.rollouts import chunk_pairs, expert_policy, tick_rollout
from energyflow_ros.runtime.onnx_model import OnnxModel
from energyflow_ros.runtime.reward import EnergyReward
from energyflow_ros.sim.registry import make_task

__all__ = ['REWARD_SOURCES', 'SACConfig', 'scaled_energy_reward', 'train_agent',
           'evaluate_agent']

REWARD_SOURCES = ('true', 'energyflow', 'gail', 'airl')
EVAL_SEED = 900_000      # evaluation episodes
TRAIN_SEED = 700_000     # training episodes (demonstrations use seeds from 0)


@dataclass(frozen=True)
class SACConfig:
    """SAC settings shared by every reward source.

    Attributes:
        net: hidden layer sizes of actor and critics.
        batch_size: minibatch size.
        learning_starts: random-action steps before learning.
        train_freq: environment steps between updates. One update per step (SB3's default):
            at one per two steps, on the extracted occupancy reward, one seed's critic smoothed
            away the narrow ridge of good moves near the goal and valued holding above them,
            so the agent parked 17 cm short (obstacles2d, 40k steps; every seed succeeded
            without collision at one per step).
        gradient_steps: updates per ``train_freq`` steps.
        lr: Adam learning rate.
        ent_coef: SAC's entropy coefficient (``auto_<initial>``: tuned from that value). The
            default 1.0 start swamps per-chunk rewards of order 0.1 for thousands of updates.
        gamma: discount per chunk step. SB3's default 0.99 (a horizon of ~100 chunks, beyond
            the 15-chunk episodes) suits the true reward; on the extracted occupancy reward it
            leaves the critic to resolve a 0.13-spread action preference against values of
            about -14, and SAC stops halfway (obstacles2d, 1 seed: 0.00 success at 0.99 and
            0.9, 0.65 at 0.5).
    """

    net: tuple[int, ...] = (128, 128)
    batch_size: int = 256
    learning_starts: int = 500
    train_freq: int = 1
    gradient_steps: int = 1
    lr: float = 3e-4
    ent_coef: str = 'auto_0.01'
    gamma: float = 0.99

    def __post_init__(self) -> None:
        if not 0.0 <= self.gamma < 1.0:
            raise ValueError(f'SACConfig.gamma = {self.gamma} is invalid: expected 0 <= gamma < 1')
        for name in ('batch_size', 'train_freq', 'gradient_steps'):
            if getattr(self, name) < 1:
                raise ValueError(f'SACConfig.{name} = {getattr(self, name)} is invalid: '
                                 'expected a positive integer')


def scaled_energy_reward(model: OnnxModel, config: ChunkEnvConfig, variant: str,
                         sigma: float | None = None, n_demo_episodes: int = 10) -> ChunkReward:
    """The extracted reward of one (history, chunk), centred and scaled over what SAC sees.

    In the states of ``n_demo_episodes`` expert rollouts the reward is centred on its mean over
    the expert's chunks and divided by its spread (standard deviation) over those and chunks of
    uniformly random agent actions, so an expert-like chunk scores about 0 and a random one
    about -1 whatever the model's energy scale and offset, and the clip at +-10 spreads is
    symmetric about the expert. (Scaling by the expert chunks' spread alone put every
    non-expert chunk two orders of magnitude below, where clipping flattened the reward and
    SAC learned nothing; without centring, the offset of ``occupancy`` put the expert itself
    near the clip.)
    ``sigma`` is the energy's noise scale (default: the model's ``reward_sigma``).
    """
    reward = EnergyReward(model, variant=variant, sigma=sigma)
    task = make_task(config.task, **config.task_kwargs)
    n_ticks = config.n_chunks * config.executed_steps
    rng = np.random.default_rng(0)
    expert: list[np.ndarray] = []
    scores = []
    try:
        for seed in range(TRAIN_SEED - n_demo_episodes, TRAIN_SEED):
            run = tick_rollout(task, expert_policy(task, seed), seed, n_ticks)
            hist, chunks, _ = chunk_pairs(run, config.n_obs, config.horizon,
                                          config.executed_steps)
            frame = run.obs.shape[1]
            random = np.stack([decode_chunk(rng.uniform(-1, 1, config.knots * len(
                config.scale)), h[-frame:], config.scale, config.horizon) for h in hist])
            expert.append(reward(hist, chunks))
            scores += [expert[-1], reward(hist, random)]
    finally:
        task.close()
    centre = float(np.mean(np.concatenate(expert)))
    spread = max(float(np.std(np.concatenate(scores))), 1e-6)

    def scaled(history: np.ndarray, chunk: np.ndarray) -> float:
        return float(np.clip((reward(history, chunk) - centre) / spread, -10.0, 10.0))

    return scaled


def train_episode_seed(seed: int) -> int:
    """Seed of the first training episode of RL seed ``seed`` (episodes count up from it;
    10,000 apart, so seeds 0-19 stay clear of each other and of the evaluation episodes).

    Raises:
        ValueError: a seed whose training episodes would reach the evaluation episodes.
    """
    limit = (EVAL_SEED - TRAIN_SEED) // 10_000
    if not 0 <= seed < limit:
        raise ValueError(f'RL seed {seed}: expected 0 .. {limit - 1} (training episodes must '
                         'stay below the evaluation seeds)')
    return TRAIN_SEED + 10_000 * seed


def _sac(env: Any, sac: SACConfig, seed: int) -> Any:
    from stable_baselines3 import SAC
    from stable_baselines3.common.logger import Logger

    model = SAC('MlpPolicy', env, seed=seed, verbose=0, learning_rate=sac.lr,
                batch_size=sac.batch_size, learning_starts=sac.learning_starts,
                train_freq=sac.train_freq, gradient_steps=sac.gradient_steps,
                ent_coef=sac.ent_coef, gamma=sac.gamma,
                policy_kwargs={'net_arch': list(sac.net)})
    # SAC(seed=...) seeds the environment's next reset with ``seed`` itself (0, 1, 2: the
    # demonstrations' episodes, and each RL seed one episode after the last): start it at this
    # seed's own training episodes instead.
    model.get_env().seed(train_episode_seed(seed))
    # Without a logger of its own, every learn() makes an empty /tmp/SB3-<time> folder.
    model.set_logger(Logger(folder=None, output_formats=[]))
    return model


def _adversarial(kind: str, config: ChunkEnvConfig, demos: list[dict[str, np.ndarray]],
                 steps: int, sac: SACConfig, seed: int) -> Any:
    """GAIL or AIRL (imitation) with a SAC generator; returns the generator."""
    from imitation.algorithms.adversarial.airl import AIRL
    from imitation.algorithms.adversarial.gail import GAIL
    from imitation.data.types import Trajectory
    from imitation.rewards.reward_nets import BasicRewardNet, BasicShapedRewardNet
    from imitation.util import logger as imitation_logger
    from imitation.util.networks import RunningNorm
    from stable_baselines3.common.vec_env import DummyVecEnv

    venv = DummyVecEnv([lambda: ChunkEnv(config, seed=train_episode_seed(seed))])
    trajectories = [Trajectory(obs=d['obs'], acts=d['acts'], infos=None, terminal=True)
                    for d in demos]
    learner = _sac(venv, sac, seed)
    if kind == 'gail':
        net = BasicRewardNet(venv.observation_space, venv.action_space,
                             normalize_input_layer=RunningNorm)
        algo = GAIL
    else:
        net = BasicShapedRewardNet(venv.observation_space, venv.action_space,
                                   normalize_input_layer=RunningNorm)
        algo = AIRL
    # imitation trains whole rounds of generator steps; the generator learns the remainder on
    # the last discriminator, so every source gets exactly ``steps`` environment steps.
    round_steps = min(max(config.n_chunks * 4, 16), steps)
    trainer = algo(demonstrations=trajectories, demo_batch_size=min(256, sum(
        len(t.acts) for t in trajectories)), gen_replay_buffer_capacity=4 * round_steps,
        n_disc_updates_per_round=4, venv=venv, gen_algo=learner, reward_net=net,
        gen_train_timesteps=round_steps, allow_variable_horizon=False,
        init_tensorboard=False, custom_logger=imitation_logger.configure(format_strs=[]))
    venv.seed(train_episode_seed(seed))  # the generator's first reset (see _sac)
    trainer.train(steps)
    if steps % round_steps:
        trainer.train_gen(steps % round_steps)
    return learner


def train_agent(source: str, config: ChunkEnvConfig, steps: int, seed: int,
                sac: SACConfig | None = None, reward: ChunkReward | None = None,
                demos: list[dict[str, np.ndarray]] | None = None) -> tuple[Any, float]:
    """Train one agent; returns the SB3 model and the training wall time.

    Args:
        source: one of :data:`REWARD_SOURCES`.
        config: the chunk environment.
        steps: environment steps.
        seed: training seed (network initialisation, exploration, episode seeds).
        sac: SAC settings.
        reward: the extracted reward (``energyflow``).
        demos: expert trajectories in the environment's spaces (``gail``, ``airl``).
    """
    sac = sac or SACConfig()
    torch.manual_seed(seed)
    logging.getLogger('imitation').setLevel(logging.WARNING)
    start = time.perf_counter()
    if source in ('true', 'energyflow'):
        if source == 'energyflow' and reward is None:
            raise ValueError('the energyflow source needs the extracted reward')
        env = ChunkEnv(config, reward=reward if source == 'energyflow' else None,
                       seed=train_episode_seed(seed))
        model = _sac(env, sac, seed)
        model.learn(steps)
    elif source in ('gail', 'airl'):
        if not demos:
            raise ValueError(f'the {source} source needs demonstrations')
        model = _adversarial(source, config, demos, steps, sac, seed)
    else:
        raise ValueError(f'reward source {source!r} is unknown; expected one of '
                         f'{list(REWARD_SOURCES)}')
    return model, time.perf_counter() - start


def evaluate_agent(model: Any, config: ChunkEnvConfig, episodes: int) -> dict[str, float]:
    """Deterministic rollouts on evaluation seeds: success, final progress, collision, and
    safe success (the goal reached in an episode that never touched an obstacle)."""
    env = ChunkEnv(config, seed=EVAL_SEED)
    success, progress, collision = [], [], []
    try:
        for _ in range(episodes):
            obs, _ = env.reset()
            info: dict[str, Any] = {}
            for _ in range(config.n_chunks):
                action, _ = model.predict(obs, deterministic=True)
                obs, _, _, _, info = env.step(action)
            success.append(info['success'])
            progress.append(info['progress'])
            collision.append(info['collision'])
    finally:
        env.close()
    safe = [s and not c for s, c in zip(success, collision)]
    return {'success': float(np.mean(success)), 'progress': float(np.mean(progress)),
            'collision': float(np.mean(collision)), 'safe_success': float(np.mean(safe))}
