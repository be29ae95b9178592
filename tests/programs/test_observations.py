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
