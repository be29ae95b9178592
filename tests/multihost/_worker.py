"""One process of the 2-process test: `python _worker.py PROCESS_ID NUM_PROCESSES PORT WORKDIR`
(run from the repository root).

Every process runs this same program. Devices: 3 fake CPU devices per process. The learner
mesh is process 0's first two devices; the actor mesh is one device of each process, so
the weights cross the process boundary by `broadcast_via_collective` and are copied in place
into the actors' weight double buffer (`memory.WeightBuffer`, whose buffers never move).
Process 0 runs the learner updates; both processes act with the weights they received. Each
process records one JSON line per event for the test to compare (`_common.emit`).
"""

import sys

from _common import checksum as _checksum  # Beside this script, which is on sys.path.
from _common import emit as _emit
from absl import flags
import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np
import optax

from dvla_jax import main as main_lib
from dvla_jax import memory
from dvla_jax import parallel
from dvla_jax.training import checkpoints
from dvla_jax.training import metrics as metrics_lib

ITERATIONS = 3
_OPT = optax.adam(1e-2)


def _local(tree):
  """The copy this process's actor device holds of a replicated tree."""
  return jax.tree.map(lambda x: x.addressable_shards[0].data, tree)


def _pointers(trees) -> set[int]:
  return {s.data.unsafe_buffer_pointer() for tree in trees for x in jax.tree.leaves(tree)
          for s in x.addressable_shards}


def _abstract(tree, shardings):
  return jax.tree.map(lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh),
                      tree, shardings)


def main(process_id: int, num_processes: int, port: int, workdir: str) -> None:
  jax.config.update("jax_num_cpu_devices", 3)  # Before anything starts the backend.
  # Joined through the entry point's own flags, as `python -m dvla_jax.main` would.
  flags.FLAGS([sys.argv[0], "--config=configs/demo.py:tiny", f"--workdir={workdir}",
               f"--coordinator_address=localhost:{port}", f"--num_processes={num_processes}",
               f"--process_id={process_id}"])
  main_lib._init_distributed(main_lib._distributed_settings())  # pylint: disable=protected-access
  _emit(kind="init", process_index=jax.process_index(), process_count=jax.process_count(),
        collectives=jax.config.jax_cpu_collectives_implementation)
  devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
  by_process = [[d for d in devices if d.process_index == p] for p in range(num_processes)]
  learner_mesh = Mesh(np.array(by_process[0][:2]), ("fsdp",))
  actor_mesh = Mesh(np.array([by_process[0][2], by_process[1][0]]), ("fsdp",))
  learner_spec = {"w": P("fsdp", None), "b": P(), "version": P()}
  learner_sh = {k: NamedSharding(learner_mesh, s) for k, s in learner_spec.items()}
  actor_sh = {k: NamedSharding(actor_mesh, P()) for k in learner_spec}

  def init():
    params = {"w": jnp.linspace(-1.0, 1.0, 4 * 3).reshape(4, 3), "b": jnp.zeros((3,)),
              "version": jnp.zeros((), jnp.int32)}
    return {"params": params, "opt": _OPT.init(params)}

  abstract_state = jax.eval_shape(init)
  state_sh = jax.tree.map(lambda _: NamedSharding(learner_mesh, P()), abstract_state)
  state_sh["params"] = learner_sh
  mine = jax.process_index() == 0  # Process 0 holds the learner plane.

  def loss(p):
    return jnp.sum((p["w"] @ jnp.ones((3,)) + jnp.sum(p["b"]) - 1.0) ** 2)

  def learn(state):
    params = state["params"]
    trainable = {k: v for k, v in params.items() if k != "version"}
    grads = jax.grad(loss)(trainable)
    grads["version"] = jnp.zeros((), jnp.int32)
    updates, opt = _OPT.update(grads, state["opt"], params)
    new = optax.apply_updates(params, updates)
    new["version"] = params["version"] + 1
    return {"params": new, "opt": opt}

  learn = jax.jit(learn, out_shardings=state_sh, donate_argnums=0)
  act = jax.jit(lambda p, obs: jnp.tanh(obs @ p["w"].T).sum() + p["b"].sum())
  state = jax.jit(init, out_shardings=state_sh)() if mine else None
  writer = metrics_lib.MetricsWriter(workdir, ITERATIONS, console=False)
  obs = jnp.arange(3.0)
  # The actors' weights live in a double buffer across both processes (the static pool):
  # each received version is copied into the incoming copy in place, and the actor swaps.
  source = state["params"] if mine else _abstract(abstract_state["params"], learner_sh)
  weights = memory.WeightBuffer(
      parallel.broadcast_via_collective(source, learner_mesh, actor_mesh, actor_sh), 0)
  buffers = _pointers(weights.trees())
  for it in range(1, ITERATIONS + 1):
    if mine:
      state = learn(state)
      _emit(kind="learner", version=it, checksum=_checksum(state["params"]))
    # A process without learner devices passes the weights' shapes and shardings only.
    source = state["params"] if mine else _abstract(abstract_state["params"], learner_sh)
    weights.stage(it, parallel.broadcast_via_collective(source, learner_mesh, actor_mesh,
                                                        actor_sh))
    version, received = weights.take_newest()
    assert version == it and _pointers(weights.trees()) == buffers, "weights moved"
    local = _local(received)
    _emit(kind="actor", version=int(local["version"]), checksum=_checksum(local),
          action=float(act(local, obs)), device=local["w"].devices().pop().id)
    writer.write(it, {"actor/version": int(local["version"])})
  writer.close()

  # Orbax saves only arrays that every process holds a part of, and the learner plane lives
  # on process 0 alone: the train state is checkpointed from a copy on the actor mesh (one
  # device per process), restored there, and sent back to the learner by the same collective.
  source = state if mine else _abstract(abstract_state, state_sh)
  replicated = jax.tree.map(lambda _: NamedSharding(actor_mesh, P()), abstract_state)
  saved = parallel.broadcast_via_collective(source, learner_mesh, actor_mesh, replicated)
  with checkpoints.Checkpointer(f"{workdir}/checkpoints") as ckpt:
    ckpt.save(ITERATIONS, saved, received, {"process_count": jax.process_count()})
    ckpt.wait()
    restored, meta = ckpt.restore(None, _abstract(abstract_state, replicated))
    params = ckpt.restore_params(None, _abstract(received, actor_sh))
  back = parallel.broadcast_via_collective(restored, actor_mesh, learner_mesh)
  learner = resumed = None
  if mine:
    learner = _checksum(state)
    # The learner resumes from the restored state; an uninterrupted step is the reference.
    resumed = learn(jax.device_put(back, state_sh))
    continued = learn(state)
    resumed = {"version": int(resumed["params"]["version"]),
               "checksum": _checksum(resumed["params"]),
               "continued_checksum": _checksum(continued["params"])}
  _emit(kind="restored", step=meta["step"], process_count=meta["process_count"],
        params_checksum=_checksum(_local(params)), state_checksum=_checksum(_local(restored)),
        saved_checksum=_checksum(_local(saved)), learner_checksum=learner, resumed=resumed)
  jax.distributed.shutdown()


if __name__ == "__main__":
  main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
