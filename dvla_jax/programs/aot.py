"""The learner update compiled ahead of time on a mesh, for the memory planner.

`compile_update` lowers and compiles `steps.update`, the very program a run's gradient lane
executes, for abstract sharded inputs (nothing is allocated), so that
`tools/plan_memory.py --compile` can set XLA's own memory figures beside the plan's. It
compiles one epoch of one minibatch of `batch` samples (a rollout slot of one step of `batch`
envs), which is what one gradient step of any update holds at a time.
"""

from flax import nnx
import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec
import optax

from dvla_jax import models
from dvla_jax import rl
from dvla_jax.config import default_config
from dvla_jax.parallel import sharding as sharding_lib
from dvla_jax.programs import builders
from dvla_jax.programs import steps


def compile_update(config: models.VLAConfig, mesh: Mesh, batch: int,
                   rules: sharding_lib.Rules = sharding_lib.DEFAULT_RULES):
  """Lowers and compiles one PPO update (`steps.update`) of `batch` samples on `mesh`.

  The train state is sharded by the logical rules and donated, as in a run; the rollout is
  split along its env axis.

  Args:
    config: the model config.
    mesh: a real mesh (its devices must exist).
    batch: samples in the update (its one minibatch).
    rules: logical name -> mesh axes.

  Returns:
    The `jax.stages.Compiled` update.
  """
  rl_config = default_config.get_config().rl
  rl_config.update_epochs, rl_config.num_minibatches = 1, 1
  optimizer = builders.make_optimizer(rl_config)
  graphdef, params = nnx.split(nnx.eval_shape(lambda: models.VLA(config, rngs=nnx.Rngs(0))))
  param_sh = sharding_lib.logical_to_mesh_sharding(params, mesh, rules)
  replicated = NamedSharding(mesh, PartitionSpec())
  abstract_opt = jax.eval_shape(optimizer.init, params)
  opt_sh = optax.tree_map_params(optimizer, lambda _, s: s, abstract_opt, param_sh,
                                 transform_non_params=lambda _: replicated)
  state_sh = steps.TrainState(step=replicated, params=param_sh, opt_state=opt_sh)
  state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                       steps.TrainState(step=jax.ShapeDtypeStruct((), jnp.int32),
                                        params=params, opt_state=abstract_opt), state_sh)
  env_spec = sharding_lib.logical_to_pspec(("batch",), mesh, rules, (batch,))

  def along_envs(shape, dtype, time_major=True):
    """[1, batch, ...] (or [batch, ...]) split along the env axis."""
    lead = (1, batch) if time_major else (batch,)
    spec = PartitionSpec(None, *env_spec) if time_major else env_spec
    return jax.ShapeDtypeStruct(lead + tuple(shape), dtype, sharding=NamedSharding(mesh, spec))

  chunk = (config.action_horizon, config.action_dim)
  rollout = rl.Transition(
      obs={k: along_envs(v.shape[1:], v.dtype) for k, v in config.fake_obs(1).items()},
      tokens=along_envs(chunk, jnp.int32), log_probs=along_envs(chunk, jnp.float32),
      value=along_envs((), jnp.float32), reward=along_envs((), jnp.float32),
      done=along_envs((), jnp.bool_), truncated=along_envs((), jnp.bool_),
      version=along_envs((), jnp.int32))
  bootstrap = along_envs((), jnp.float32, time_major=False)
  rng = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=replicated)

  def update(state, rollout, bootstrap, rng):
    return steps.update(graphdef, optimizer, state, rollout, bootstrap, rng,
                        rl_config=rl_config)

  jitted = jax.jit(update, donate_argnums=0, out_shardings=(state_sh, replicated))
  return jitted.lower(state, rollout, bootstrap, rng).compile()
