"""From what an env emits to what the model reads: the instruction index becomes its tokens.

Envs say which instruction they issued (`obs["instruction"]`, an index into their
`instruction_table()`); the model reads byte tokens (`obs["text"]`). The table is tokenised
once (`models.tokenizer.table_tokens`) and each observation looks its row up, inside the
compiled reset and step, so rollout slots, the learner and evaluation see `text` as before.
"""

from typing import Any

from brax.envs import base as brax_base
import jax
import jax.numpy as jnp
import numpy as np

from dvla_jax.models import tokenizer


def instruction_tokens(env: Any, length: int) -> np.ndarray:
  """int32 [len(env.instruction_table()), length]: the env's instructions as model tokens."""
  return tokenizer.table_tokens(env.instruction_table(), length)


def model_obs(obs: dict[str, jax.Array], tokens: jax.Array) -> dict[str, jax.Array]:
  """`obs` plus `text`: the tokens (int32 [..., L]) of its `instruction` (int [...])."""
  return dict(obs, text=jnp.asarray(tokens)[obs["instruction"]])


class InstructionTokens(brax_base.Wrapper):
  """Wraps a (batched) env so that its observations also carry `text` tokens for the model.

  The env below sees its own observations only (`text` is dropped on the way down), so its
  wrappers' loops carry the same structure in and out.
  """

  def __init__(self, env: Any, length: int):
    super().__init__(env)
    self.text_len = length
    self._tokens = instruction_tokens(env, length)

  def reset(self, rng: jax.Array) -> brax_base.State:
    state = self.env.reset(rng)
    return state.replace(obs=model_obs(state.obs, self._tokens))

  def step(self, state: brax_base.State, action: jax.Array) -> brax_base.State:
    inner = {k: v for k, v in state.obs.items() if k != "text"}
    state = self.env.step(state.replace(obs=inner), action)
    return state.replace(obs=model_obs(state.obs, self._tokens))

  @property
  def observation_size(self) -> dict[str, tuple[int, ...]]:
    return dict(self.env.observation_size, text=(self.text_len,))
