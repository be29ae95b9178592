"""Every config field, declared once: its dotted path, default, allowed values and doc.

`default_config.get_config()` builds the tree from `FIELDS`, `config_check.validate` checks
each value against the field's `Rule`, and the field reference (`default_config`'s docstring,
`docs/config.md`, `python -m dvla_jax.config`) is generated from the docs here. Checks that
relate several fields are the named validators of `config_check`.

Pure Python: nothing heavy is imported, so that `main` can check a config in a second.
"""

import dataclasses
import math
import textwrap
from typing import Any, Optional

import ml_collections


@dataclasses.dataclass(frozen=True)
class Rule:
  """Type and range (or choices) allowed for one config field."""

  kind: type
  gt: Optional[float] = None
  ge: Optional[float] = None
  le: Optional[float] = None
  choices: Optional[tuple[Any, ...]] = None

  def describe(self) -> str:
    """What the rule allows, e.g. "float > 0" or "'warp', 'jax'"."""
    if self.choices is not None:
      return ", ".join(repr(c) for c in self.choices)
    bounds = []
    if self.gt is not None:
      bounds.append(f"> {self.gt:g}")
    if self.ge is not None:
      bounds.append(f">= {self.ge:g}")
    if self.le is not None:
      bounds.append(f"<= {self.le:g}")
    return " ".join([self.kind.__name__, " and ".join(bounds)]) if bounds else self.kind.__name__

  def type_ok(self, value: Any) -> bool:
    # bool is an int subclass, and a float field may hold an int written without a dot.
    if isinstance(value, bool):
      return self.kind is bool
    if self.kind is float:
      return isinstance(value, (int, float))
    return isinstance(value, self.kind)

  def range_ok(self, value: Any) -> bool:
    if self.choices is not None:
      return value in self.choices
    if isinstance(value, float) and not math.isfinite(value):
      return False
    return not ((self.gt is not None and not value > self.gt)
                or (self.ge is not None and not value >= self.ge)
                or (self.le is not None and not value <= self.le))


def integer(**bounds) -> Rule:
  return Rule(int, **bounds)


def real(**bounds) -> Rule:
  return Rule(float, **bounds)


def choice(*choices: str) -> Rule:
  return Rule(str, choices=choices)


def text() -> Rule:
  return Rule(str)


def flag() -> Rule:
  return Rule(bool)


@dataclasses.dataclass(frozen=True)
class Field:
  """One config field: `path` (dotted), `default`, `rule` (allowed values), `doc`."""

  path: str
  default: Any
  rule: Rule
  doc: str

  def __post_init__(self):
    if not (self.rule.type_ok(self.default) and self.rule.range_ok(self.default)):
      raise ValueError(f"{self.path}: default {self.default!r} breaks its own rule "
                       f"({self.rule.describe()})")


# What each group of fields is for (the reference's section heads).
GROUPS: dict[str, str] = {
    "": "The run.",
    "env": "The task and its simulation.",
    "model": "The VLA policy.",
    "rl": "The RL algorithm (PPO or GRPO) and its warm start.",
    "sft": "Behaviour cloning of scripted experts (mode='sft' and rl.warmstart_steps).",
    "placement": (
        "Which devices each plane uses. In a run of several processes (jax.distributed) the "
        "placement is one process's share: ids index that process's devices, the sim and actor "
        "meshes are its own, and the learner mesh joins every process's learner devices along "
        "fsdp (fsdp x processes)."),
    "swimlanes": "The pipelines: env groups, rollout slots and channels.",
    "train": "The run's length, evaluation, checkpoints and logging.",
    "testing": "Test hooks (fault injection); off by default.",
}

FIELDS: tuple[Field, ...] = (
    Field("seed", 0, integer(ge=0),
        'base PRNG seed; every random stream is `fold_in(seed, purpose)` (the purposes are '
        'named in `config/rng_streams.py`).'),
    Field("mode", 'rl', choice('rl', 'sft'),
        '"rl" (PPO / GRPO fine-tuning) or "sft" (supervised warm-start: behaviour cloning of '
        "the task's scripted expert, `dvla_jax.training.sft`; an iteration is one gradient "
        'step).'),
    Field("pipeline", 'sync', choice('sync', 'async'),
        '"sync" (roll out one env group, then update, repeated, on one thread) or "async" (the '
        'four swimlanes: sampling, inference, gradient and distribution threads). Both run the '
        'same compiled functions.'),
    Field("env.task", 'touch_cube', text(),
        'what the run trains on: a task name from the registry (`python -m dvla_jax.envs '
        '--list`), `suite:<suite>` (every task of a suite: spatial, object, goal, long) or '
        'suite task names separated by commas. Several tasks run in one env (one compiled '
        "scene), the tasks taking turns over its worlds; evaluations report each task's success "
        'too.'),
    Field("env.import_tasks", '', text(),
        'task modules to import before the run, comma-separated .py files or module names ("" = '
        'none); each registers tasks of its own with `envs.register_task` '
        '(`dvla_jax/envs/custom.py`, `examples/custom_task.py`), which env.task can then name.'),
    Field("env.num_envs", 128, integer(ge=1),
        'parallel environments in total (N), split evenly over the env groups; in a run of '
        "several processes, each process's (an update learns from every process's slot)."),
    Field("env.episode_length", 0, integer(ge=0),
        "policy steps per episode (each step executes one action chunk); 0 takes the task's "
        'default (touch_cube 16, suite tasks 24-64: `python -m dvla_jax.envs --list`).'),
    Field("env.image_size", 32, integer(ge=32, le=128),
        'square camera resolution in pixels (32..128).'),
    Field("env.impl", 'warp', choice('warp', 'jax'),
        'MJX implementation, "warp" (fast, renders) or "jax".'),
    Field("env.domain_randomization", False, flag(),
        "per-world friction, mass, colours and lighting through brax's "
        'DomainRandomizationVmapWrapper (`dvla_jax/envs/randomization.py`).'),
    Field("env.reward_shaping", 0.0, real(ge=0, le=1),
        '0 (default) = the sparse success reward: 1 on the step that succeeds (which ends the '
        "episode), else 0. k in (0, 1] adds potential-based shaping gamma * phi(s') - phi(s), "
        "phi = -k * the task's distance to its goal in metres (0 after success), with gamma = "
        'rl.gamma: it cannot change the optimal policy, and over an episode it adds less than '
        'the +1 of success (`dvla_jax/envs/mjx_env.py` EnvConfig).'),
    Field("model.preset", 'small', text(),
        'size preset (`tiny`, `small`, ...); see `dvla_jax.models`.'),
    Field("model.action_horizon", 0, integer(ge=0),
        "H, steps per action chunk (0 = the preset's)."),
    Field("model.action_head", 'bins', choice('bins', 'gaussian'),
        '"bins" (free logits per bin plus an ordinal Gaussian prior) or "gaussian" (the prior '
        'alone: each action token is a discretised Gaussian over the 256 bins with a predicted '
        'mean and width, floored; see `VLAConfig.action_free_logits`). Either way the actions '
        'are 256-bin tokens with per-token log-probs.'),
    Field("model.temperature", 1.0, real(gt=0),
        'sampling temperature of the action tokens during rollouts (and of the sampled '
        'evaluation). Every log-prob PPO/GRPO uses (behaviour, proximal, learner) and the '
        'entropy are of softmax(logits / temperature).'),
    Field("model.dtype", 'float32', choice('float32', 'bfloat16'),
        'compute dtype, "float32" or "bfloat16"; parameters and optimizer state stay float32 '
        '(master weights), logits and values are computed in float32.'),
    Field("model.remat", False, flag(),
        'rematerialise the trunk blocks in the backward pass (less activation memory, one more '
        'forward pass of compute).'),
    Field("model.lora_rank", 0, integer(ge=0),
        'rank r of LoRA adapters beside the trunk\'s attention (qkv, output) and MLP '
        'projections, W x + B (A x) with B zero at the start, so the adapted policy starts as '
        'the base one; 0 = none.'),
    Field("model.trainable", 'auto', text(),
        'which parameter groups learn: "all", or groups separated by commas among lora, '
        'trunk, embeddings, encoder, action_head, value_head; "auto" = all without adapters, '
        '"lora,action_head,value_head" with them. Only those get optimizer state; the rest '
        'keep their values (`dvla_jax/models/trainable.py`).'),
    Field("rl.algo", 'ppo', choice('ppo', 'grpo'),
        '"ppo" (GAE with the value head) or "grpo" (group-normalised episode returns, no '
        'critic; envs in blocks of `rl.group_size` share a layout).'),
    Field("rl.rollout_length", 16, integer(ge=1),
        'T, policy steps per env per rollout slot (one learner update each).'),
    Field("rl.lr", 0.0003, real(gt=0),
        'Adam learning rate (of everything but the value head when rl.value_lr is set).'),
    Field("rl.value_lr", 0.003, real(ge=0),
        'Adam learning rate of the value head (0 = rl.lr).'),
    Field("rl.gamma", 0.99, real(ge=0, le=1),
        'discount factor.'),
    Field("rl.gae_lambda", 0.95, real(ge=0, le=1),
        "GAE lambda (PPO's advantage estimate)."),
    Field("rl.clip_eps", 0.2, real(gt=0, le=1),
        'PPO ratio clip below 1 (the ratio is clipped to [1 - clip_eps, 1 + clip_eps_high]).'),
    Field("rl.clip_eps_high", 0.28, real(gt=0),
        'PPO ratio clip above 1 ("clip-higher": larger than clip_eps leaves more room to raise '
        'rare good actions).'),
    Field("rl.ratio_level", 'chunk', choice('chunk', 'action', 'token'),
        'what one importance ratio covers: "chunk" (the whole H x D action chunk the env '
        'executed; its log-ratio is the sum of its tokens\'), "action" (each of the H steps) or '
        '"token" (each of the H x D tokens).'),
    Field("rl.target_kl", 0.0, real(ge=0),
        "stop an update early (skip its remaining minibatches) once a minibatch's approx-KL "
        'exceeds 1.5 x target_kl (0 = off).'),
    Field("rl.critic_warmup_iterations", 0, integer(ge=0),
        "PPO's first updates train the value head only (policy loss weight 0, trunk frozen), so "
        'that policy updates start from a fitted critic.'),
    Field("rl.episodic_slots", False, flag(),
        'PPO: every rollout slot restarts all envs from fresh layouts and learns from each '
        "env's first episode only (GRPO always does), so that a layout solved in a few steps is "
        'not replayed and counted many times per slot; needs rl.rollout_length >= the episode '
        'length. False: episodes run on across slots and finished ones restart.'),
    Field("rl.value_clip_eps", 0.0, real(ge=0),
        'clip of the value update (0 disables value clipping).'),
    Field("rl.vf_coef", 0.5, real(ge=0),
        'loss weight of the value loss.'),
    Field("rl.ent_coef", 0.0, real(ge=0),
        'loss weight of the entropy bonus.'),
    Field("rl.update_epochs", 2, integer(ge=1),
        'passes over the rollout per update.'),
    Field("rl.num_minibatches", 4, integer(ge=1),
        'minibatches per pass (each one gradient step).'),
    Field("rl.max_grad_norm", 1.0, real(gt=0),
        'global gradient-norm clip.'),
    Field("rl.reward_scale", 1.0, real(gt=0),
        'multiplies rewards before GAE.'),
    Field("rl.decoupled", 'auto', choice('auto', 'on', 'off'),
        'decoupled PPO, "on" (the update first scores the rollout under the learner\'s current '
        'weights, the proximal policy, and corrects for the behaviour policy with a truncated '
        'importance weight), "off" (ratio against the behaviour policy), or "auto" (on for the '
        'async pipeline, off for sync, where behaviour and proximal policy coincide).'),
    Field("rl.behaviour_weight_cap", 2.0, real(ge=0),
        'truncation of the proximal/behaviour weight (0 = no cap).'),
    Field("rl.max_staleness", 2, integer(ge=-1),
        'samples more than this many policy versions older than the learner are dropped from '
        'the loss (-1 = keep all).'),
    Field("rl.grpo_refill_slots", 2, integer(ge=0),
        'GRPO dynamic sampling: an update that finds groups whose outcomes all agree (no '
        'signal) rolls out up to this many more slots and fills their positions with mixed '
        'groups from them, as SimpleVLA-RL does (0 = only mask those groups out). Positions '
        'still unfilled are masked. Not in runs of several processes, where groups are masked.'),
    Field("rl.group_size", 4, integer(ge=2),
        'G, GRPO group size (envs that share a layout).'),
    Field("rl.task_sampling", 'uniform', choice('uniform', 'learnability'),
        'which task each world runs in a multi-task run (env.task a suite or a list): "uniform" '
        '(the tasks take turns over the worlds) or "learnability" (each rollout slot gives more '
        'worlds to the tasks whose recent rollout success p is nearest 0.5, in proportion to p '
        '(1 - p): tasks always solved or always failed carry no signal under a sparse reward; '
        '`dvla_jax/rl/curriculum.py`). Evaluation stays uniform.'),
    Field("rl.task_sampling_mix", 0.25, real(ge=0, le=1),
        'with "learnability", the share of the worlds still spread evenly over the tasks (so '
        'each keeps being measured).'),
    Field("rl.init_from", '', text(),
        'warm start, e.g. from an SFT run: a workdir (or its checkpoints directory) whose '
        "newest `params` item initialises the policy when this run's workdir has no checkpoint "
        'yet; the optimizer state and iteration count start fresh ("" = random init).'),
    Field("rl.warmstart_steps", 0, integer(ge=0),
        "behaviour-cloning steps on the task's scripted expert at the start of a fresh run (no "
        'checkpoint, no `rl.init_from`), before the iteration-0 evaluation; uses the `sft.*` '
        'settings (see `dvla_jax/training/warmstart.py`). 0 = off.'),
    Field("sft.demos", '', text(),
        'demonstrations written by `tools/write_demos.py` for this task and env settings; "" '
        "records them in-process with the task's scripted expert before training."),
    Field("sft.episodes", 256, integer(ge=1),
        'demonstration episodes trained on (the first ones), per task when env.task names '
        'several. Recorded in-process, an "episode" is a row of env.episode_length expert steps '
        'of one env, which holds several episodes when the expert finishes early (the env '
        'resets itself).'),
    Field("sft.holdout_episodes", 32, integer(ge=1),
        'episodes after those (per task), held out for `sft/holdout_loss`.'),
    Field("sft.expert_noise", 0.3, real(ge=0, le=1),
        'std of the noise added to the actions the expert executes while recording (the labels '
        'stay the clean expert actions), so the demonstrations show recoveries.'),
    Field("sft.batch_size", 64, integer(ge=1),
        'demonstration steps per gradient step.'),
    Field("sft.lr", 0.001, real(gt=0),
        'Adam learning rate (the gradient clip is `rl.max_grad_norm`).'),
    Field("sft.label_sigma", 0.0, real(ge=0),
        "ordinal label smoothing: each demonstrated token's target is a discretised Gaussian "
        'this many bins wide around its bin (0 = the bin alone; see `sft.token_loss`).'),
    Field("placement.mode", 'colocated', choice('colocated', 'disaggregated'),
        '"colocated" (every plane on the same devices; automatic device ids start at 0 for each '
        'plane) or "disaggregated" (disjoint device sets; automatic ids are taken in the order '
        'sim, actor, learner).'),
    Field("placement.sim.devices", 1, integer(ge=1),
        'devices of the sim mesh (axis "data"); env groups are spread over them, one device per '
        'group.'),
    Field("placement.sim.device_ids", '', text(),
        'explicit comma-separated device ids of the sim mesh ("" = automatic).'),
    Field("placement.actor.data", 1, integer(ge=1),
        "the actor mesh's data axis (the batch is split over it; parameters replicated)."),
    Field("placement.actor.fsdp", 1, integer(ge=1),
        "the actor mesh's fsdp axis (the batch and the parameters are split over it)."),
    Field("placement.actor.tensor", 1, integer(ge=1),
        "the actor mesh's tensor axis (the model's heads and MLP are split over it)."),
    Field("placement.actor.device_ids", '', text(),
        'explicit comma-separated device ids of the actor mesh ("" = automatic).'),
    Field("placement.learner.data", 1, integer(ge=1),
        "the learner mesh's data axis (the batch is split over it; parameters replicated)."),
    Field("placement.learner.fsdp", 1, integer(ge=1),
        "the learner mesh's fsdp axis (the batch and the parameters are split over it)."),
    Field("placement.learner.tensor", 1, integer(ge=1),
        "the learner mesh's tensor axis (the model's heads and MLP are split over it)."),
    Field("placement.learner.device_ids", '', text(),
        'explicit comma-separated device ids of the learner mesh ("" = automatic).'),
    Field("swimlanes.env_groups", 1, integer(ge=1),
        'env groups (separate env instances of num_envs / env_groups worlds); async needs >= 2 '
        'so that one group simulates while another is in inference.'),
    Field("swimlanes.num_slots", 0, integer(ge=0),
        'rollout slots [T, envs_per_group, ...] in the ring on the actor mesh (0 = env_groups + '
        '1: one filling per group and one full slot waiting for the learner); an empty ring is '
        'backpressure on the inference lane, and fewer slots mean less policy lag.'),
    Field("swimlanes.queue_size", 2, integer(ge=1),
        'capacity of each bounded data-plane channel.'),
    Field("swimlanes.poll_s", 0.05, real(gt=0, le=1),
        'how often every blocking wait wakes up to check the stop event.'),
    Field("swimlanes.stall_timeout_s", 600.0, real(gt=0),
        'a single wait longer than this fails its lane (a deadlock guard).'),
    Field("swimlanes.trace", True, flag(),
        'record lane spans, write `<workdir>/trace.json` and `lanes/` metrics.'),
    Field("swimlanes.trace_max_spans", 200000, integer(ge=0),
        'spans kept in the trace (later ones still count in metrics).'),
    Field("train.iterations", 200, integer(ge=1),
        'learner updates in total, one per rollout slot (resume continues to this).'),
    Field("train.log_every", 5, integer(ge=1),
        'iterations between metric writes.'),
    Field("train.eval_every", 25, integer(ge=1),
        'iterations between evaluations (also evaluated at 0 and at the end).'),
    Field("train.eval_episodes", 64, integer(ge=1),
        'fresh episodes per evaluation (a multiple of the envs per group is fastest). Each is '
        'played twice, sampling at `model.temperature` (`eval/success_rate`) and taking the '
        'argmax token (`eval/greedy_success_rate`).'),
    Field("train.checkpoint_every", 25, integer(ge=1),
        'iterations between checkpoints (also saved at the end).'),
    Field("train.keep_checkpoints", 2, integer(ge=1),
        'how many checkpoints to keep.'),
    Field("train.max_bad_updates", 3, integer(ge=1),
        'this many skipped (non-finite) updates in a row halt the run.'),
    Field("train.wandb_project", '', text(),
        'also log every metric to this Weights & Biases project ("" = off); needs the optional '
        '`wandb` package (`pip install wandb`); WANDB_MODE=offline logs to `<workdir>/wandb` '
        'without an account. The W&B run is named after the workdir.'),
    Field("testing.fault_lane", '', choice('', 'sampling', 'inference', 'gradient', 'distribution'),
        'test hook; "" (off) or a lane name whose loop raises an error after '
        '`testing.fault_after` steps.'),
    Field("testing.fault_after", 1, integer(ge=0),
        'steps of that lane before the injected error.'),
    Field("testing.nan_from", -1, integer(ge=-1),
        'test hook; from this iteration on (-1 = off), `testing.nan_count` updates get a NaN '
        'reward.'),
    Field("testing.nan_count", 1, integer(ge=1),
        'how many updates in a row are poisoned.'),
)

_BY_PATH = {f.path: f for f in FIELDS}


def paths() -> tuple[str, ...]:
  """Dotted paths of every field, in declaration order."""
  return tuple(_BY_PATH)


def get(path: str) -> Optional[Field]:
  """The field at dotted `path`, or None."""
  return _BY_PATH.get(path)


def defaults() -> ml_collections.ConfigDict:
  """The config tree with every field at its default."""
  config = ml_collections.ConfigDict()
  for f in FIELDS:
    *parents, name = f.path.split(".")
    node = config
    for parent in parents:
      if parent not in node:
        node[parent] = ml_collections.ConfigDict()
      node = node[parent]
    node[name] = f.default
  return config


def _group(path: str) -> str:
  return path.split(".")[0] if "." in path else ""


def reference(width: int = 92) -> str:
  """The field reference as plain text: per group, each field with its default, what it
  allows and its doc (for docstrings and the console)."""
  out = []
  for group, about in GROUPS.items():
    out.append(f"{group}: {about}" if group else f"Top level: {about}")
    for f in FIELDS:
      if _group(f.path) != group:
        continue
      head = f"  {f.path} = {f.default!r} ({f.rule.describe()}): "
      out.append(textwrap.fill(head + f.doc, width, subsequent_indent="      "))
    out.append("")
  return "\n".join(out)


def markdown() -> str:
  """The field reference as Markdown (`docs/config.md`)."""
  out = ["# Config fields", "",
         "Generated from `dvla_jax/config/fields.py` by `python -m dvla_jax.config "
         "--markdown`; do not edit by hand.", ""]
  for group, about in GROUPS.items():
    out += [f"## {group or 'top level'}", "", about, "",
            "| field | default | allowed | what it does |", "|---|---|---|---|"]
    for f in FIELDS:
      if _group(f.path) == group:
        doc = f.doc.replace("|", "\\|")
        out.append(f"| `{f.path}` | `{f.default!r}` | {f.rule.describe()} | {doc} |")
    out.append("")
  return "\n".join(out)
