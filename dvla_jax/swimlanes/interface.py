"""What the lanes need from the programs layer: a few compiled callables and the run config.

The lanes are written against `LanePrograms`, not the whole components bundle
(`dvla_jax.programs.builders.Components`, which satisfies it and also carries what only the
trainer, evaluation and cloning use: the model graph, the optimizer, the greedy policy).
A pipeline can be driven by any object with these members, e.g. a test double.
"""

from typing import Any, Callable, Optional, Protocol, Sequence

import jax

from dvla_jax.programs import steps


class EnvGroupPrograms(Protocol):
  """One env group's compiled functions (`builders.EnvGroup`)."""

  def reset(self, rng: jax.Array, tasks: Any = None, shared: bool = True) -> Any:
    """Fresh episodes for every world of the group (tasks per world, or turns)."""

  def env_step(self, state: Any, actions: jax.Array) -> Any:
    """One policy step of every world."""

  def start_rollout(self, state: Any, rng: jax.Array, first_episodes: bool,
                    tasks: Any = None) -> Any:
    """The env state the next rollout slot starts from."""


class LanePrograms(Protocol):
  """The members the sampling, inference, gradient and distribution lanes use.

  Attributes:
    config: the run config (the lanes read `rl.*` slot and algorithm settings, `env.task`,
      and `swimlanes.*`).
    groups: the env groups, one per sampling unit.
    envs_per_group: worlds per group (B).
    act: `(params, obs, rng) -> steps.ActOutput`, the sampled policy.
    value: `(params, obs) -> [B]`, the critic (bootstrap values).
    update: `(TrainState, rollout, bootstrap, rng, group_valid) -> (TrainState, metrics)`.
    write_step: `steps.write_step`, donating the slot.
    slot_metrics: `rollout_metrics.slot_metrics` of a full slot.
    copy_params: a copy of a params tree.
    poison: NaN rewards (test hook).
    grpo_compact, grpo_merge: the refilled GRPO batch's first slot and each slot after it.
  """

  config: Any
  groups: Sequence[EnvGroupPrograms]
  envs_per_group: int
  act: Callable
  value: Callable
  update: Callable
  write_step: Optional[Callable]
  slot_metrics: Optional[Callable]
  copy_params: Optional[Callable]
  poison: Optional[Callable]
  grpo_compact: Optional[Callable]
  grpo_merge: Optional[Callable]

  def empty_slot(self) -> steps.RolloutSlot:
    """A zero rollout slot `[T, B, ...]`."""
