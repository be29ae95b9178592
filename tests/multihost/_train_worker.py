"""One process of the 2-process training test (from the repository root):
`python _train_worker.py PROCESS_ID NUM_PROCESSES PORT WORKDIR ITERATIONS [FAULT_LANE]`
(with FAULT_LANE, the last process's lane of that name fails after its second unit of work).

Runs the real entry point (`dvla_jax.main`, the async pipeline) with 3 fake CPU devices per
process: each process simulates and acts on its own device (sim 1, actor 1) and the learner
mesh joins one device of each process (fsdp 2), so the train state is sharded across the
processes and every published version crosses them. The lanes' stage functions are wrapped
to record one JSON line per event for the test to compare (`_common.emit`): each published
version (with a checksum of the whole learner params), each version copied into the actors'
weights (with a checksum of this process's copy) and the version of the weights behind every
recorded step.
"""

import sys

from _common import checksum as _checksum  # Beside this script, which is on sys.path.
from _common import emit as _emit
import jax

from dvla_jax import main as main_lib
from dvla_jax import parallel
from dvla_jax.swimlanes import stages


def _instrument() -> None:
  lanes = stages.PolicyLanes
  publish, distribute_into, record = lanes.publish, lanes.distribute_into, lanes.record
  weight_buffers = stages.PolicyLanes.weight_buffers

  def publish_hook(self, snapshot, version, state):
    publish(self, snapshot, version, state)
    # A gather, on the gradient lane of every process (the same collectives in the same order).
    whole = parallel.local_replica(self.placement.gather(state.params))
    _emit(kind="learner", version=version, checksum=_checksum(whole),
          sharded=not jax.tree.leaves(state.params)[0].is_fully_addressable)

  def distribute_hook(self, actor, version, params):
    distribute_into(self, actor, version, params)
    # The copy just written; not `take_newest`, which would swap the inference lane's copy.
    with actor._lock:  # pylint: disable=protected-access
      weights = actor._bufs[actor._versions.index(version)]  # pylint: disable=protected-access
    _emit(kind="actor", version=version, checksum=_checksum(weights),
          devices=sorted({d.id for x in jax.tree.leaves(weights) for d in x.devices()}))

  def record_hook(self, slot, t, obs, out, version, result):
    _emit(kind="step", version=int(version))
    return record(self, slot, t, obs, out, version, result)

  def weight_buffers_hook(self, state, version):
    snapshot, actor = weight_buffers(self, state, version)
    _, params = actor.take_newest()
    _emit(kind="start", version=version, checksum=_checksum(params),
          processes=self.placement.meshes.processes)
    return snapshot, actor

  stages.PolicyLanes.publish = publish_hook
  stages.PolicyLanes.distribute_into = distribute_hook
  stages.PolicyLanes.record = record_hook
  stages.PolicyLanes.weight_buffers = weight_buffers_hook


def main(process_id: int, num_processes: int, port: int, workdir: str, iterations: int,
         fault_lane: str = "") -> None:
  jax.config.update("jax_num_cpu_devices", 3)  # Before anything starts the backend.
  _instrument()
  sys.argv = [
      "dvla_jax.main", "--config=configs/demo.py:tiny", f"--workdir={workdir}",
      f"--coordinator_address=localhost:{port}", f"--num_processes={num_processes}",
      f"--process_id={process_id}", "--config.pipeline=async",
      "--config.swimlanes.env_groups=2", "--config.placement.mode=disaggregated",
      "--config.placement.sim.devices=1", f"--config.train.iterations={iterations}",
      "--config.train.eval_every=100", "--config.train.checkpoint_every=1"]
  if fault_lane and process_id == num_processes - 1:  # One process fails, the others not.
    sys.argv += [f"--config.testing.fault_lane={fault_lane}", "--config.testing.fault_after=2"]
  main_lib.run()


if __name__ == "__main__":
  main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5]),
       *sys.argv[6:])
