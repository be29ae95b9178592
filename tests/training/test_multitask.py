"""A run of several suite tasks: one env, tasks per world, demonstrations and evaluation per task.

One tiny run (2 goal tasks, 8 envs, `tiny` model) is built once for the module; the GRPO test
builds one more env group.
"""

import dataclasses
import os
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "configs"))
import demo  # noqa: E402  (a config file, imported by path)

from dvla_jax.config import config_check  # noqa: E402
from dvla_jax.programs import builders  # noqa: E402
from dvla_jax.programs import evaluation  # noqa: E402
from dvla_jax.rl import curriculum as rl_curriculum  # noqa: E402
from dvla_jax.swimlanes import stages as stages_lib  # noqa: E402
from dvla_jax.training import demo_rows  # noqa: E402

NAMES = ["goal_touch_ball", "goal_push_cube"]
B = 8


def _config(**rl):
  config = demo.get_config("tiny")
  config.env.task = ",".join(NAMES)
  config.env.num_envs = B
  config.env.episode_length = 0  # The longest task's.
  config.train.eval_episodes = B
  for key, value in rl.items():
    config.rl[key] = value
  config_check.validate(config, known_tasks=config_check.registered_tasks)
  return config


@pytest.fixture(scope="module")
def components():
  return builders.build(_config())


def _tasks(state) -> np.ndarray:
  return np.asarray(state.info["task"]["task"])


def test_worlds_take_turns_over_the_tasks(components):
  assert components.env.task_names == NAMES
  seen = set()
  for seed in range(4):
    tasks = _tasks(components.reset(jax.random.key(seed)))
    assert np.bincount(tasks, minlength=2).tolist() == [B // 2, B // 2]
    seen.add(int(tasks[0]))
  assert seen == {0, 1}  # The offset is drawn per reset: world 0 does not keep one task.
  chosen = np.array([1, 1, 1, 0, 0, 1, 0, 1])
  np.testing.assert_array_equal(_tasks(components.reset(jax.random.key(0), chosen)), chosen)


def test_grpo_groups_share_layout_and_task():
  config = _config(algo="grpo", group_size=2, rollout_length=64)
  group = builders._make_group(config, B)  # pylint: disable=protected-access
  state = group.reset(jax.random.key(1))
  tasks, qpos = _tasks(state), np.asarray(state.pipeline_state.qpos)
  np.testing.assert_array_equal(tasks[0::2], tasks[1::2])
  np.testing.assert_array_equal(qpos[0::2], qpos[1::2])
  assert not np.allclose(qpos[0], qpos[2])
  assert np.bincount(tasks, minlength=2).tolist() == [B // 2, B // 2]


def test_record_demos_gives_each_task_its_rows(components):
  rows = 6  # Not a multiple of the batch per task: the last round is cut.
  demos = demo_rows.record_demos(components, jax.random.key(1), rows)
  for task in range(len(NAMES)):
    mine = demos["task"] == task
    assert sorted(set(demos["row"][mine].tolist())) == list(range(rows)), task
    # A row is one world's whole episode limit of expert steps.
    assert mine.sum() == rows * components.env.config.episode_length
  # The instruction tells the tasks apart: no instruction is shared between them.
  texts = [{bytes(t) for t in demos["text"][demos["task"] == i]} for i in range(2)]
  assert not texts[0] & texts[1]


def test_evaluation_reports_each_task_sampled_and_greedy(components):
  """Greedy acts by the scripted expert here, so its success must be 1 on every task."""
  expert = jax.jit(jax.vmap(components.env.expert_action))
  latest = {}

  def keep(state):
    latest["state"] = state
    return state

  calls = {"greedy": 0, "sampled": 0}

  def act(params, obs, rng):
    calls["sampled"] += 1
    return components.act(params, obs, rng)

  def act_greedy(params, obs):
    del params, obs
    calls["greedy"] += 1
    return types.SimpleNamespace(actions=jnp.clip(expert(latest["state"]), -1.0, 1.0))

  scripted = dataclasses.replace(
      components, act=act, act_greedy=act_greedy,
      reset=lambda rng, tasks=None, shared=True: keep(components.reset(rng, tasks, shared)),
      env_step=lambda state, actions: keep(components.env_step(state, actions)))
  params = components.init_train_state(jax.random.key(0)).params
  result = evaluation.evaluate(scripted, params, jax.random.key(2), B)
  for name in NAMES:
    assert result[f"eval/{name}/greedy_success_rate"] == 1.0
    assert 0.0 <= result[f"eval/{name}/success_rate"] <= 1.0
  assert result["eval/greedy_success_rate"] == 1.0
  assert result["eval/success_rate"] == pytest.approx(
      np.mean([result[f"eval/{n}/success_rate"] for n in NAMES]))
  assert result["eval/episodes"] == B
  # The expert finishes early and the loop stops soon after; the sampled policy does not.
  assert calls["greedy"] < components.env.config.episode_length
  assert calls["sampled"] == components.env.config.episode_length


def test_slots_report_success_per_task(components):
  metrics = components.slot_metrics(components.empty_slot())
  for name in NAMES:
    assert f"rollout/{name}/episodes" in metrics and f"rollout/{name}/success_rate" in metrics


def test_learnability_sampling_gives_the_uncertain_task_more_worlds(components):
  """After updates that saw task 0 always solved and task 1 half the time, the next rollout
  slot's worlds get mostly task 1 (the sampler assigns them as it starts the slot)."""
  curriculum = stages_lib.task_curriculum(components)
  assert not curriculum.active  # rl.task_sampling defaults to "uniform".
  curriculum = rl_curriculum.TaskCurriculum(NAMES, "learnability", mix=0.0)
  curriculum.observe({f"rollout/{NAMES[0]}/episodes": 40.0,
                      f"rollout/{NAMES[0]}/success_rate": 1.0,
                      f"rollout/{NAMES[1]}/episodes": 40.0,
                      f"rollout/{NAMES[1]}/success_rate": 0.5})
  sampler = stages_lib.Sampler(components, builders.make_placement(components.config),
                               jax.random.key(0), curriculum)
  result = sampler.reset(0)
  assert np.bincount(_tasks(sampler.states[0]), minlength=2).tolist() == [B // 2, B // 2]
  model_config = components.model_config
  actions = jnp.zeros((B, model_config.action_horizon * model_config.action_dim))
  for _ in range(components.config.rl.rollout_length):
    result = sampler.step(0, actions)
  assert result.obs["instruction"].shape == (B,)
  # Slots are not episodic here: the episodes that finish from now on restart with these.
  assert not components.config.rl.episodic_slots
  restarts = np.asarray(sampler.states[0].info["first_task"]["task"])
  assert np.bincount(restarts, minlength=2).tolist() == [1, B - 1]
