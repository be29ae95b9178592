"""The env names its instruction by index; the model side's tokens match the named text."""

from brax.envs.wrappers import training as brax_wrappers
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dvla_jax import envs
from dvla_jax.models import tokenizer
from dvla_jax.programs import observations

B = 4


def test_tokens_follow_the_instruction_index_through_reset_and_step():
  env = envs.make("touch_cube", envs.default_config("touch_cube", num_worlds=B, image_size=16))
  table = env.instruction_table()
  length = tokenizer.text_len(table)
  venv = observations.InstructionTokens(brax_wrappers.VmapWrapper(env), length)
  assert venv.observation_size["text"] == (length,)
  assert venv.observation_size["instruction"] == ()
  state = jax.jit(venv.reset)(jax.random.split(jax.random.key(0), B))
  nxt = jax.jit(venv.step)(state, jnp.zeros((B, env.action_size)))
  for s in (state, nxt):
    ids, text = np.asarray(s.obs["instruction"]), np.asarray(s.obs["text"])
    assert text.shape == (B, length) and text.dtype == np.int32
    assert [tokenizer.decode(t) for t in text] == [table[i] for i in ids]
  assert len({table[i] for i in np.asarray(state.obs["instruction"])}) > 1


def test_table_tokens_never_truncate():
  table = ["touch the red cube", "touch the red cube now"]
  assert tokenizer.tokens_needed(table) == len(table[1]) + 2
  assert tokenizer.text_len(table) == tokenizer.MIN_TEXT_LEN  # Short: the floor.
  tokens = tokenizer.table_tokens(table, 30)
  assert [tokenizer.decode(t) for t in tokens] == table
  with pytest.raises(ValueError, match="need 24 tokens > the model's max_text_len 20"):
    tokenizer.table_tokens(table, 20)


def test_running_episodes_restart_from_fresh_layouts_with_tokens():
  """Slots that keep episodes running refresh the auto-reset state from a new (tokenised)
  reset; the env below keeps only its own observation keys."""
  from dvla_jax.config import default_config  # pylint: disable=g-import-not-at-top
  from dvla_jax.programs import builders  # pylint: disable=g-import-not-at-top
  config = default_config.get_config()
  config.env.num_envs, config.env.image_size, config.model.preset = B, 16, "tiny"
  group = builders._make_group(config, B)  # pylint: disable=protected-access
  state = group.reset(jax.random.key(0))
  state = group.start_rollout(state, jax.random.key(1), first_episodes=False)
  assert set(state.info["first_obs"]) == {"image", "instruction", "proprio"}
  nxt = group.env_step(state, jnp.zeros((B, group.env.action_size)))
  assert set(nxt.obs) == {"image", "instruction", "proprio", "text"}
