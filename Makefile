# energyflow_ros — the two commands a newcomer needs:
#   make demo   set up the environment, then run the main job: the simulated closed loop
#               (sim_node + policy_node + reward_node over real DDS, the shipped model)
#   make test   set up the environment, then run the test suite
# Both create/update .venv from the pinned requirements.txt (idempotent, a few minutes the
# first time, seconds afterwards). Pass options through ARGS, e.g. make demo ARGS='--episodes 5'.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.requirements.stamp

.PHONY: venv demo test density-demo model eval eval-smoke reward-eval reward-eval-smoke \
	reward-model-pusht reward-model-joint reward-model-joint-obstacles2d reward-model-joint-pusht \
	bench-latency bench-ros-loop bench-sampler-cost bench-sampler-cost-pusht colcon-build clean

venv: $(STAMP)

$(STAMP): requirements.txt requirements-nodeps.txt setup.py setup.cfg
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -r requirements-nodeps.txt
	# the package itself, editable: its commands (trainer, energyflow-eval, ...) in .venv/bin
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

demo: venv
	$(PY) -m energyflow_ros.cli.closed_loop $(ARGS)

test: venv
	$(PY) -m pytest test -q -rs -p no:cacheprovider $(ARGS)

# Compare the energy objectives on a known 2-D multimodal density (a minute on a CPU).
density-demo: venv
	$(PY) -m energyflow_ros.cli.demo $(ARGS)

# Reproduce the shipped model models/obstacles2d_energyflow.onnx (train, then export).
model: venv
	$(PY) -m energyflow_ros.cli.trainer --config config/train_obstacles2d.yaml \
		method=energyflow optim.steps=15000 optim.batch_size=256 eval.every=0 \
		out_dir=outputs/ship_obstacles2d_energyflow --no-export $(ARGS)
	$(PY) -m energyflow_ros.cli.export --checkpoint outputs/ship_obstacles2d_energyflow/final.pt \
		--out models/obstacles2d_energyflow.onnx

# The quality table (benchmarks/results/quality.md/json): every method x task x 3 seeds.
# Hours on a CPU; use a GPU machine. eval-smoke is the seconds-long pipeline check; it writes
# under outputs/, not over the committed table.
eval: venv
	$(PY) -m energyflow_ros.cli.evaluate $(ARGS)

eval-smoke: venv
	$(PY) -m energyflow_ros.cli.evaluate --smoke --out outputs/eval_smoke \
		--runs-dir outputs/eval_smoke_runs $(ARGS)

# The reward checks and downstream RL (benchmarks/results/reward.md/json); hours on a CPU.
reward-eval: venv
	$(PY) -m energyflow_ros.cli.reward_eval $(ARGS)

# The CPU-sized Push-T EnergyFlow model the reward checks use by default (MLP, 12k steps,
# about 20 minutes on 2 cores); writes outputs/reward_models/pusht_energyflow/model.onnx.
reward-model-pusht: venv
	$(PY) -m energyflow_ros.cli.trainer --config config/train_pusht.yaml method=energyflow \
		backbone.kind=mlp optim.steps=12000 optim.lr=1e-3 ema_decay=0.999 eval.every=0 \
		eval.episodes=20 out_dir=outputs/reward_models/pusht_energyflow progress=false $(ARGS)

# Joint-density reward models for the `occupancy` reward (observations noised too, demos of
# the RL episode length with the expert holding at its goal), 45k steps each: obstacles2d ~6 min
# (the 15k of the first reward.md rows left too thin a margin around the discs), Push-T ~20 min
# on 2 idle cores (the 12k of the first rows: ARGS='optim.steps=12000
# out_dir=outputs/reward_models/pusht_joint', ~5 min). Use with:
# make reward-eval ARGS='--rl-variant occupancy --model ...'.
reward-model-joint: reward-model-joint-obstacles2d reward-model-joint-pusht

reward-model-joint-obstacles2d: venv
	$(PY) -m energyflow_ros.cli.trainer --config config/train_obstacles2d.yaml \
		method=energyflow optim.steps=45000 optim.batch_size=256 eval.every=0 \
		eval.episodes=30 method_config.energyflow.obs_noise_max=1.0 data.episode_ticks=60 \
		out_dir=outputs/reward_models/obstacles2d_joint45k progress=false $(ARGS)

reward-model-joint-pusht: venv
	$(PY) -m energyflow_ros.cli.trainer --config config/train_pusht.yaml method=energyflow \
		backbone.kind=mlp optim.steps=45000 optim.lr=1e-3 ema_decay=0.999 eval.every=0 \
		eval.episodes=20 method_config.energyflow.obs_noise_max=1.0 data.episode_ticks=300 \
		out_dir=outputs/reward_models/pusht_joint45k progress=false $(ARGS)

reward-eval-smoke: venv
	$(PY) -m energyflow_ros.cli.reward_eval --smoke --out outputs/reward_smoke $(ARGS)

bench-latency: venv
	$(PY) benchmarks/latency.py $(ARGS)

bench-ros-loop: venv
	$(PY) benchmarks/ros_loop.py $(ARGS)

# Per-chunk cost at equal quality (EnergyFlow cold / warm, R-NCE vs DDIM) on the quality runs'
# obstacles2d checkpoints; ~4 min on 2 cores. Train them first (~25 min) with
# make eval ARGS="--tasks obstacles2d --methods energyflow,rnce,diffusion --seeds 1
#   --runs-dir outputs/eval_runs/cpu10k --out outputs/quality_cpu10k device=cpu".
bench-sampler-cost: venv
	$(PY) benchmarks/sampler_cost.py $(ARGS)

# The same on the Push-T runs (README: the CPU-sized 60k-step quality runs), 100 episodes (its
# coverage varies more) and two more warm-start times; ~30 min on 2 cores.
PUSHT_RUNS ?= outputs/eval_runs/pusht_cpu60k/full/pusht
bench-sampler-cost-pusht: venv
	$(PY) benchmarks/sampler_cost.py --energy $(PUSHT_RUNS)/energyflow/seed0/final.pt \
		--diffusion $(PUSHT_RUNS)/diffusion/seed0/final.pt --episodes 100 \
		--warm-start-times 0.5,0.7 --rnce-settings '' $(ARGS)

colcon-build: venv
	$(VENV)/bin/colcon build --base-paths . --build-base build --install-base install

clean:
	rm -rf build install log outputs
