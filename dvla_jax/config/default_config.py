"""The full configuration tree with defaults; config files start from `get_config()`.

Every field is documented here, next to its default. `dvla_jax.config.config_check`
holds the allowed values and is run by `main` before anything is compiled.

Fields:
  seed: base PRNG seed; every random stream is `fold_in(seed, purpose)` (the purposes are
    named in `config/rng_streams.py`).
  mode: "rl" (PPO / GRPO fine-tuning) or "sft" (supervised warm-start: behaviour cloning of
    the task's scripted expert, `dvla_jax.training.sft`; an iteration is one gradient step).
  pipeline: "sync" (roll out one env group, then update, repeated, on one thread) or "async"
    (the four swimlanes: sampling, inference, gradient and distribution threads). Both run the
    same compiled functions.

  env.task: what the run trains on: a task name from the registry (`python -m dvla_jax.envs
    --list`), `suite:<suite>` (every task of a suite: spatial, object, goal, long) or suite
    task names separated by commas. Several tasks run in one env (one compiled scene), the
    tasks taking turns over its worlds; evaluations report each task's success too.
  env.import_tasks: task modules to import before the run, comma-separated .py files or
    module names ("" = none); each registers tasks of its own with `envs.register_task`
    (`dvla_jax/envs/custom.py`, `examples/custom_task.py`), which env.task can then name.
  env.num_envs: parallel environments in total (N), split evenly over the env groups; in a
    run of several processes, each process's (an update learns from every process's slot).
  env.episode_length: policy steps per episode (each step executes one action chunk); 0 takes
    the task's default (touch_cube 16, suite tasks 24-64: `python -m dvla_jax.envs --list`).
  env.image_size: square camera resolution in pixels (32..128).
  env.impl: MJX implementation, "warp" (fast, renders) or "jax".
  env.domain_randomization: per-world friction, mass, colours and lighting through brax's
    DomainRandomizationVmapWrapper (`dvla_jax/envs/randomization.py`).
  env.reward_shaping: 0 (default) = the sparse success reward: 1 on the step that succeeds
    (which ends the episode), else 0. k in (0, 1] adds potential-based shaping
    gamma * phi(s') - phi(s), phi = -k * the task's distance to its goal in metres (0 after
    success), with gamma = rl.gamma: it cannot change the optimal policy, and over an episode
    it adds less than the +1 of success (`dvla_jax/envs/mjx_env.py` EnvConfig).

  model.preset: size preset (`tiny`, `small`, ...); see `dvla_jax.models`.
  model.action_horizon: H, steps per action chunk (0 = the preset's).
  model.action_head: "bins" (free logits per bin plus an ordinal Gaussian prior) or "gaussian"
    (the prior alone: each action token is a discretised Gaussian over the 256 bins with a
    predicted mean and width, floored; see `VLAConfig.action_free_logits`). Either way the
    actions are 256-bin tokens with per-token log-probs.
  model.temperature: sampling temperature of the action tokens during rollouts (and of the
    sampled evaluation). Every log-prob PPO/GRPO uses (behaviour, proximal, learner) and the
    entropy are of softmax(logits / temperature).
  model.dtype: compute dtype, "float32" or "bfloat16"; parameters and optimizer state stay
    float32 (master weights), logits and values are computed in float32.
  model.remat: rematerialise the trunk blocks in the backward pass (less activation memory,
    one more forward pass of compute).

  rl.algo: "ppo" (GAE with the value head) or "grpo" (group-normalised episode returns, no
    critic; envs in blocks of `rl.group_size` share a layout).
  rl.rollout_length: T, policy steps per env per rollout slot (one learner update each).
  rl.lr: Adam learning rate (of everything but the value head when rl.value_lr is set).
  rl.value_lr: Adam learning rate of the value head (0 = rl.lr).
  rl.gamma, rl.gae_lambda: discount and GAE lambda.
  rl.clip_eps: PPO ratio clip below 1 (the ratio is clipped to [1 - clip_eps,
    1 + clip_eps_high]).
  rl.clip_eps_high: PPO ratio clip above 1 ("clip-higher": larger than clip_eps leaves more
    room to raise rare good actions).
  rl.ratio_level: what one importance ratio covers: "chunk" (the whole H x D action chunk the
    env executed; its log-ratio is the sum of its tokens'), "action" (each of the H steps) or
    "token" (each of the H x D tokens).
  rl.target_kl: stop an update early (skip its remaining minibatches) once a minibatch's
    approx-KL exceeds 1.5 x target_kl (0 = off).
  rl.critic_warmup_iterations: PPO's first updates train the value head only (policy loss
    weight 0, trunk frozen), so that policy updates start from a fitted critic.
  rl.episodic_slots: PPO: every rollout slot restarts all envs from fresh layouts and learns
    from each env's first episode only (GRPO always does), so that a layout solved in a few
    steps is not replayed and counted many times per slot; needs rl.rollout_length >= the
    episode length. False: episodes run on across slots and finished ones restart.
  rl.value_clip_eps: clip of the value update (0 disables value clipping).
  rl.vf_coef, rl.ent_coef: loss weights of the value loss and entropy bonus.
  rl.update_epochs, rl.num_minibatches: passes over the rollout and minibatches per pass.
  rl.max_grad_norm: global gradient-norm clip.
  rl.reward_scale: multiplies rewards before GAE.
  rl.decoupled: decoupled PPO, "on" (the update first scores the rollout under the learner's
    current weights, the proximal policy, and corrects for the behaviour policy with a
    truncated importance weight), "off" (ratio against the behaviour policy), or "auto" (on
    for the async pipeline, off for sync, where behaviour and proximal policy coincide).
  rl.behaviour_weight_cap: truncation of the proximal/behaviour weight (0 = no cap).
  rl.max_staleness: samples more than this many policy versions older than the learner are
    dropped from the loss (-1 = keep all).
  rl.group_size: G, GRPO group size (envs that share a layout).
  rl.grpo_refill_slots: GRPO dynamic sampling: an update that finds groups whose outcomes all
    agree (no signal) rolls out up to this many more slots and fills their positions with
    mixed groups from them, as SimpleVLA-RL does (0 = only mask those groups out). Positions
    still unfilled are masked. Not in runs of several processes, where groups are masked.
  rl.warmstart_steps: behaviour-cloning steps on the task's scripted expert at the start of a
    fresh run (no checkpoint, no `rl.init_from`), before the iteration-0 evaluation; uses the
    `sft.*` settings (see `dvla_jax/training/warmstart.py`). 0 = off.
  rl.task_sampling: which task each world runs in a multi-task run (env.task a suite or a
    list): "uniform" (the tasks take turns over the worlds) or "learnability" (each rollout
    slot gives more worlds to the tasks whose recent rollout success p is nearest 0.5, in
    proportion to p (1 - p): tasks always solved or always failed carry no signal under a
    sparse reward; `dvla_jax/rl/curriculum.py`). Evaluation stays uniform.
  rl.task_sampling_mix: with "learnability", the share of the worlds still spread evenly
    over the tasks (so each keeps being measured).
  rl.init_from: warm start, e.g. from an SFT run: a workdir (or its checkpoints directory)
    whose newest `params` item initialises the policy when this run's workdir has no
    checkpoint yet; the optimizer state and iteration count start fresh ("" = random init).

  sft.demos: demonstrations written by `tools/write_demos.py` for this task and env settings;
    "" records them in-process with the task's scripted expert before training.
  sft.episodes: demonstration episodes trained on (the first ones), per task when env.task
    names several. Recorded in-process, an "episode" is a row of env.episode_length expert
    steps of one env, which holds several episodes when the expert finishes early (the env
    resets itself).
  sft.holdout_episodes: episodes after those (per task), held out for `sft/holdout_loss`.
  sft.expert_noise: std of the noise added to the actions the expert executes while
    recording (the labels stay the clean expert actions), so the demonstrations show recoveries.
  sft.batch_size: demonstration steps per gradient step.
  sft.label_sigma: ordinal label smoothing: each demonstrated token's target is a discretised
    Gaussian this many bins wide around its bin (0 = the bin alone; see `sft.token_loss`).
  sft.lr: Adam learning rate (the gradient clip is `rl.max_grad_norm`).

  placement.mode: "colocated" (every plane on the same devices; automatic device ids start
    at 0 for each plane) or "disaggregated" (disjoint device sets; automatic ids are taken in
    the order sim, actor, learner).
  placement.sim.devices: devices of the sim mesh (axis "data"); env groups are spread over
    them, one device per group.
  placement.sim.device_ids: explicit comma-separated device ids ("" = automatic).
  placement.actor.{data,fsdp,tensor}: the actor mesh shape (axes data, fsdp, tensor).
  placement.actor.device_ids: explicit device ids ("" = automatic).
  placement.learner.{data,fsdp,tensor}, placement.learner.device_ids: the same for the
    learner mesh.
  In a run of several processes (jax.distributed) the placement is one process's share: ids
  index that process's devices, the sim and actor meshes are its own, and the learner mesh
  joins every process's learner devices along fsdp (fsdp x processes).

  swimlanes.env_groups: env groups (separate env instances of num_envs / env_groups worlds);
    async needs >= 2 so that one group simulates while another is in inference.
  swimlanes.num_slots: rollout slots [T, envs_per_group, ...] in the ring on the actor mesh
    (0 = env_groups + 1: one filling per group and one full slot waiting for the learner); an
    empty ring is backpressure on the inference lane, and fewer slots mean less policy lag.
  swimlanes.queue_size: capacity of each bounded data-plane channel.
  swimlanes.poll_s: how often every blocking wait wakes up to check the stop event.
  swimlanes.stall_timeout_s: a single wait longer than this fails its lane (a deadlock guard).
  swimlanes.trace: record lane spans, write `<workdir>/trace.json` and `lanes/` metrics.
  swimlanes.trace_max_spans: spans kept in the trace (later ones still count in metrics).

  train.iterations: learner updates in total, one per rollout slot (resume continues to this).
  train.log_every: iterations between metric writes.
  train.eval_every: iterations between evaluations (also evaluated at 0 and at the end).
  train.eval_episodes: fresh episodes per evaluation (a multiple of the envs per group is
    fastest). Each is played twice, sampling at `model.temperature` (`eval/success_rate`)
    and taking the argmax token (`eval/greedy_success_rate`).
  train.checkpoint_every: iterations between checkpoints (also saved at the end).
  train.keep_checkpoints: how many checkpoints to keep.
  train.max_bad_updates: this many skipped (non-finite) updates in a row halt the run.
  train.wandb_project: also log every metric to this Weights & Biases project ("" = off);
    needs the optional `wandb` package (`pip install wandb`); WANDB_MODE=offline logs to
    `<workdir>/wandb` without an account. The W&B run is named after the workdir.

  testing.fault_lane: test hook; "" (off) or a lane name whose loop raises an error after
    `testing.fault_after` steps.
  testing.fault_after: steps of that lane before the injected error.
  testing.nan_from: test hook; from this iteration on (-1 = off), `testing.nan_count`
    updates get a NaN reward.
  testing.nan_count: how many updates in a row are poisoned.
"""

import ml_collections


def _mesh(data: int = 1, fsdp: int = 1, tensor: int = 1) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(
      {"data": data, "fsdp": fsdp, "tensor": tensor, "device_ids": ""})


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.mode = "rl"
  config.pipeline = "sync"

  config.env = ml_collections.ConfigDict()
  config.env.task = "touch_cube"
  config.env.import_tasks = ""
  config.env.num_envs = 128
  config.env.episode_length = 0
  config.env.image_size = 32
  config.env.impl = "warp"
  config.env.domain_randomization = False
  config.env.reward_shaping = 0.0

  config.model = ml_collections.ConfigDict()
  config.model.preset = "small"
  config.model.action_horizon = 0
  config.model.action_head = "bins"
  config.model.temperature = 1.0
  config.model.dtype = "float32"
  config.model.remat = False

  config.rl = ml_collections.ConfigDict()
  config.rl.algo = "ppo"
  config.rl.rollout_length = 16
  config.rl.lr = 3e-4
  config.rl.value_lr = 3e-3
  config.rl.gamma = 0.99
  config.rl.gae_lambda = 0.95
  config.rl.clip_eps = 0.2
  config.rl.clip_eps_high = 0.28
  config.rl.ratio_level = "chunk"
  config.rl.target_kl = 0.0
  config.rl.critic_warmup_iterations = 0
  config.rl.episodic_slots = False
  config.rl.value_clip_eps = 0.0
  config.rl.vf_coef = 0.5
  config.rl.ent_coef = 0.0
  config.rl.update_epochs = 2
  config.rl.num_minibatches = 4
  config.rl.max_grad_norm = 1.0
  config.rl.reward_scale = 1.0
  config.rl.decoupled = "auto"
  config.rl.behaviour_weight_cap = 2.0
  config.rl.max_staleness = 2
  config.rl.group_size = 4
  config.rl.grpo_refill_slots = 2
  config.rl.task_sampling = "uniform"
  config.rl.task_sampling_mix = 0.25
  config.rl.init_from = ""
  config.rl.warmstart_steps = 0

  config.sft = ml_collections.ConfigDict()
  config.sft.demos = ""
  config.sft.episodes = 256
  config.sft.holdout_episodes = 32
  config.sft.expert_noise = 0.3
  config.sft.batch_size = 64
  config.sft.lr = 1e-3
  config.sft.label_sigma = 0.0

  config.placement = ml_collections.ConfigDict()
  config.placement.mode = "colocated"
  config.placement.sim = ml_collections.ConfigDict({"devices": 1, "device_ids": ""})
  config.placement.actor = _mesh()
  config.placement.learner = _mesh()

  config.swimlanes = ml_collections.ConfigDict()
  config.swimlanes.env_groups = 1
  config.swimlanes.num_slots = 0
  config.swimlanes.queue_size = 2
  config.swimlanes.poll_s = 0.05
  config.swimlanes.stall_timeout_s = 600.0
  config.swimlanes.trace = True
  config.swimlanes.trace_max_spans = 200_000

  config.train = ml_collections.ConfigDict()
  config.train.iterations = 200
  config.train.log_every = 5
  config.train.eval_every = 25
  config.train.eval_episodes = 64
  config.train.checkpoint_every = 25
  config.train.keep_checkpoints = 2
  config.train.max_bad_updates = 3
  config.train.wandb_project = ""

  config.testing = ml_collections.ConfigDict()
  config.testing.fault_lane = ""
  config.testing.fault_after = 1
  config.testing.nan_from = -1
  config.testing.nan_count = 1
  return config
