"""Placements: device sets per plane, one-line errors for bad ones, shardings on 8 fake devices."""

import os
import subprocess
import sys
import textwrap

import ml_collections
import pytest

from dvla_jax.config import config_check
from dvla_jax.config import default_config
from dvla_jax.parallel import mesh

_ROOT = os.path.join(os.path.dirname(__file__), "..", "..")


def _placement(mode="disaggregated", sim=2, actor=(2, 1, 1), learner=(4, 1, 1), ids=None):
  ids = ids or {}
  cfg = ml_collections.ConfigDict()
  cfg.mode = mode
  cfg.sim = {"devices": sim, "device_ids": ids.get("sim", "")}
  for plane, shape in (("actor", actor), ("learner", learner)):
    cfg[plane] = dict(zip(("data", "fsdp", "tensor"), shape), device_ids=ids.get(plane, ""))
  return cfg


def test_disaggregated_takes_disjoint_consecutive_devices():
  ids = mesh.resolve_device_ids(_placement(), 8)
  assert ids == {"sim": [0, 1], "actor": [2, 3], "learner": [4, 5, 6, 7]}


def test_colocated_planes_share_the_first_devices():
  ids = mesh.resolve_device_ids(_placement("colocated", 1, (1, 1, 1), (2, 1, 1)), 2)
  assert ids == {"sim": [0], "actor": [0], "learner": [0, 1]}


def test_explicit_ids_and_automatic_ones_do_not_collide():
  ids = mesh.resolve_device_ids(_placement(ids={"learner": "0,1,2,3"}), 8)
  assert ids == {"sim": [4, 5], "actor": [6, 7], "learner": [0, 1, 2, 3]}


@pytest.mark.parametrize("placement, devices, message", [
    (_placement(), 6, "placement needs 8 devices (sim 2 + actor 2 + learner 4) in "
     "placement.mode='disaggregated' but 6 exist"),
    (_placement("colocated", learner=(4, 1, 1)), 2,
     "placement.learner mesh 4x1x1 needs 4 devices but 2 exist"),
    (_placement(ids={"actor": "2,9"}), 8,
     "placement.actor.device_ids names device 9 but 8 devices exist"),
    (_placement(ids={"sim": "0,1", "actor": "1,2"}), 8,
     "placement.actor shares devices 1 with placement.sim"),
])
def test_bad_placements_fail_with_one_line(placement, devices, message):
  with pytest.raises(mesh.PlacementError) as error:
    mesh.resolve_device_ids(placement, devices)
  assert str(error.value).startswith(message) and "\n" not in str(error.value)


def _config(**fields):
  config = default_config.get_config()
  config.swimlanes.env_groups = 2
  config.placement.mode = "disaggregated"
  config.placement.sim.devices = 2
  config.placement.actor.data = 2
  config.placement.learner.fsdp = 4
  for path, value in fields.items():
    *groups, name = path.split("__")
    node = config
    for g in groups:
      node = node[g]
    node[name] = value
  return config


def test_the_2_2_4_placement_passes_the_static_checks():
  config_check.validate(_config())


@pytest.mark.parametrize("fields, message", [
    ({"placement__sim__device_ids": "0,1", "placement__actor__device_ids": "1,2"},
     "placement.actor.device_ids shares devices 1 with placement.sim.device_ids"),
    ({"placement__learner__device_ids": "4,5"},
     "placement.learner.device_ids='4,5' has 2 devices but the learner mesh 1x4x1 needs 4"),
    ({"placement__actor__device_ids": "a,b"}, "placement.actor.device_ids='a,b' is not a list"),
    ({"placement__actor__data": 3},
     "placement.actor.data * placement.actor.fsdp = 3 does not divide the envs per env group"),
    ({"placement__learner__data": 3},
     "placement.learner.data * placement.learner.fsdp = 12 does not divide the minibatch"),
    ({"placement__sim__devices": 3}, "placement.sim.devices=3 does not divide"),
    ({"pipeline": "async", "swimlanes__env_groups": 1},
     "swimlanes.env_groups=1 with pipeline='async'"),
])
def test_static_placement_errors_are_one_line(fields, message):
  with pytest.raises(config_check.ConfigError) as error:
    config_check.validate(_config(**fields))
  assert str(error.value).startswith(message) and "\n" not in str(error.value)


_EIGHT_DEVICES = textwrap.dedent("""
    import jax, numpy as np
    jax.config.update("jax_num_cpu_devices", 8)
    from flax import nnx
    from dvla_jax import models, parallel
    from dvla_jax.config import config_check, default_config
    from dvla_jax.programs import builders, steps
    from dvla_jax.training import trainer
    config = default_config.get_config()
    config.placement.mode = "disaggregated"
    config.placement.sim.devices = 2
    config.placement.actor.data = 2
    config.placement.learner.fsdp = 4
    placement = builders.make_placement(config)
    ids = placement.meshes.device_ids()
    assert ids == {"sim": [0, 1], "actor": [2, 3], "learner": [4, 5, 6, 7]}, ids
    assert [placement.sim_device(g).id for g in range(3)] == [0, 1, 0]
    mcfg = models.get_preset("tiny", width=64)
    opt = builders.make_optimizer(config.rl)
    def init(rng):
      params = nnx.state(models.VLA(mcfg, rngs=nnx.Rngs(params=rng)))
      return steps.TrainState(step=jax.numpy.zeros((), jax.numpy.int32), params=params,
                              opt_state=opt.init(params))
    rng = jax.random.key(0)
    shardings = placement.state_shardings(jax.eval_shape(init, rng), "learner")
    state = jax.jit(init, out_shardings=shardings)(rng)
    embed = state.params["text_embed"][...]
    assert {d.id for d in embed.devices()} == {4, 5, 6, 7}
    assert "fsdp" in str(embed.sharding.spec), embed.sharding.spec
    assert embed.addressable_shards[0].data.shape[1] == 64 // 4
    mu = state.opt_state[1][0].mu["text_embed"][...]
    assert mu.sharding == embed.sharding
    actor = placement.put_state(jax.tree.map(lambda x: x, state.params), "actor")
    a = actor["text_embed"][...]
    assert {d.id for d in a.devices()} == {2, 3} and a.sharding.is_fully_replicated
    np.testing.assert_array_equal(np.asarray(a), np.asarray(embed))
    # A copy of sharded weights into a replicated buffer lands in that buffer, replicated.
    from dvla_jax import memory
    from jax.sharding import NamedSharding, PartitionSpec
    rep = jax.device_put(embed * 0, NamedSharding(placement.mesh("learner"), PartitionSpec()))
    # XLA writes the result into the donated buffer (checked on the compiled program: at run
    # time XLA:CPU may still hand back a fresh buffer).
    shardings = (rep.sharding,)
    assert memory.donated_aliases(memory.pools._overwrite_in_layout_jit, rep, embed,
                                  shardings) == 1
    with memory.strict_donation():
      out = memory.overwrite_in_layout(rep, embed)
    assert out.sharding.is_fully_replicated
    np.testing.assert_array_equal(np.asarray(out), np.asarray(embed))
    assert placement.gather(embed) is embed  # One process: nothing to gather.
    obs = placement.put_batch({"x": np.zeros((8, 3), np.float32)}, "actor", batch_axis=0)
    assert obs["x"].addressable_shards[0].data.shape == (4, 3)
    slot = placement.put_batch(np.zeros((5, 8)), "learner", batch_axis=1)
    assert slot.addressable_shards[0].data.shape == (5, 2)  # fsdp=4 splits the env axis.
    config.placement.learner.fsdp = 1
    config.placement.learner.data = 8
    try:
      builders.make_placement(config)
    except config_check.ConfigError as e:
      print("ERROR", e)
    print("OK")
""")


def test_eight_fake_devices_shard_each_plane_on_its_own_mesh():
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=os.path.abspath(_ROOT))
  result = subprocess.run([sys.executable, "-c", _EIGHT_DEVICES], env=env, capture_output=True,
                          text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  lines = result.stdout.strip().splitlines()
  assert lines[-1] == "OK"
  assert lines[-2].startswith("ERROR placement needs 12 devices (sim 2 + actor 2 + learner 8)")


def test_main_reports_a_placement_bigger_than_the_machine_in_one_line(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=os.path.abspath(_ROOT))
  result = subprocess.run(
      [sys.executable, "-m", "dvla_jax.main", "--config=configs/demo.py:tiny",
       f"--workdir={tmp_path}", "--config.placement.learner.data=2"],
      cwd=_ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 2, result.stderr[-2000:]
  lines = result.stderr.strip().splitlines()
  assert lines[-1] == ("config error: placement.learner mesh 2x1x1 needs 2 devices but 1 exist; "
                       "allowed: at most 1")
  assert "Traceback" not in result.stderr
