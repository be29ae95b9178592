r"""Says ahead of time whether a model fits a mesh: per-device bytes of the learner and actor steps.

    python tools/plan_memory.py --preset 7b --mesh data=4,fsdp=32,tensor=8
    python tools/plan_memory.py --preset 1t --mesh data=4,fsdp=512,tensor=16 --dtype bfloat16 \
        --remat --device_memory_gib 80
    python tools/plan_memory.py --preset small --mesh fsdp=2,tensor=2 --batch 8   # + compiles
    python tools/plan_memory.py --config=configs/gpu8.py --devices=8 --device_memory_gib=80

With `--config` (a run config file, `path[:arg]` as `dvla_jax.main` takes it) the tool checks
the run for `--devices` devices as a run does at start-up (config check, placement, meshes
that divide the model) and adds the sim, actor and learner planes up on the devices they
share (`dvla_jax.training.run_plan`); it prints the fullest device's terms and a verdict.

Parameters, optimizer state (Adam, float32 moments), gradients, activations (an analytic
per-layer count), FSDP gather buffers and the batch are computed from shapes and the logical
sharding rules, without allocating anything, for any mesh size. When the mesh fits on the
devices present (up to 8 fake CPU devices here; on CPU, models of at most 1B parameters
unless `--compile=always`) the learner step (the run's own update,
`dvla_jax.programs.aot.compile_update`, on one minibatch) is also compiled ahead of
time and `compiled.memory_analysis()` is printed next to the plan: its argument bytes
correspond to the plan's parameters + optimizer state + batch, and its temporaries to the
gradients + activations + gather buffers (XLA adds fusion buffers the plan does not count).

Exit status: 0 (also when the plan does not fit, unless --strict: then 1); 2 on a bad argument,
printed as one line.
"""

import argparse
import json
import math
import os
import sys

import jax

# Fake CPU devices for the ahead-of-time compile; only possible before JAX starts a backend.
try:
  jax.config.update("jax_num_cpu_devices", 8)
except RuntimeError:
  pass

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dvla_jax import models  # noqa: E402
from dvla_jax.parallel import memory_plan  # noqa: E402

_MAX_COMPILE_DEVICES = 8
_MAX_CPU_COMPILE_PARAMS = 1e9  # --compile=auto on CPU devices: larger models are planned only.


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="tools/plan_memory.py", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--preset", help=f"model preset: {', '.join(models.PRESETS)}")
  p.add_argument("--config", default=None, help="instead of --preset and the meshes: a run "
                 "config file, e.g. configs/gpu8.py (or configs/gpu8.py:runlocal)")
  p.add_argument("--devices", type=int, default=0,
                 help="with --config: devices of the run, all hosts together")
  p.add_argument("--processes", type=int, default=1,
                 help="with --config: processes of the run (jax.distributed); the config's "
                 "placement is then each process's share of --devices")
  p.add_argument("--mesh", default="", help="learner mesh, e.g. data=4,fsdp=32,tensor=8 "
                 "(missing axes are 1)")
  p.add_argument("--batch", type=int, default=0,
                 help="learner samples per update step (default: one per data x fsdp rank)")
  p.add_argument("--actor_mesh", default=None, help="actor mesh (default: the learner mesh)")
  p.add_argument("--actor_batch", type=int, default=0, help="samples per inference step "
                 "(default: --batch)")
  p.add_argument("--device_memory_gib", type=float, default=80.0,
                 help="memory of one device in GiB (default 80)")
  p.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                 help="compute dtype (parameters stay float32 master weights)")
  p.add_argument("--remat", action="store_true", help="rematerialise trunk blocks")
  p.add_argument("--lora_rank", type=int, default=None,
                 help="LoRA adapters of this rank on the trunk (0 = none)")
  p.add_argument("--trainable", default=None,
                 help="parameter groups that train (VLAConfig.trainable; default auto: all "
                 "without LoRA, lora,action_head,value_head with it)")
  p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                 help="override a VLAConfig field, e.g. --set depth=200 (repeatable)")
  p.add_argument("--compile", choices=("auto", "always", "never"), default="auto",
                 help="auto: compile the learner step when the mesh fits the devices here and, "
                 f"on CPU, the model has at most {_MAX_CPU_COMPILE_PARAMS:.0e} parameters; "
                 "always: whenever the mesh fits")
  p.add_argument("--strict", action="store_true", help="exit 1 when a step does not fit")
  p.add_argument("--json", default=None, help="also write the plan as JSON to this file")
  return p


def _overrides(args) -> dict:
  fields = {f.name: f.type for f in models.VLAConfig.__dataclass_fields__.values()}
  out = {}
  for item in args.set:
    name, _, value = item.partition("=")
    if name not in fields or not value:
      raise ValueError(f"--set {item!r}: allowed: FIELD=VALUE with FIELD a VLAConfig field "
                       f"({', '.join(fields)})")
    kind = fields[name]
    if kind in ("bool", bool):
      out[name] = value.lower() in ("1", "true", "yes")
    elif kind in ("int", int):
      out[name] = int(float(value))
    else:
      out[name] = value
  if args.dtype:
    out["dtype"] = args.dtype
  if args.remat:
    out["remat"] = True
  if args.lora_rank is not None:
    out["lora_rank"] = args.lora_rank
  if args.trainable is not None:
    out["trainable"] = args.trainable
  return out


def _compile_report(config, plan, mesh_shape) -> dict:
  """Compiles the learner step on real devices and sets its figures beside the plan's."""
  from dvla_jax.programs import aot  # pylint: disable=g-import-not-at-top

  compiled = aot.compile_update(config, memory_plan.make_mesh(mesh_shape), plan.batch)
  stats = memory_plan.compiled_memory(compiled)
  if stats is None:
    return {"note": "memory_analysis() is unavailable on this backend"}
  terms = plan.learner.terms
  planned_args = terms["parameters"] + terms["optimizer state"] + terms["batch"]
  planned_temp = terms["gradients"] + terms["activations"] + terms["fsdp gather"]
  return {
      "memory_analysis": stats,
      "planned_arguments": planned_args,
      "arguments_rel_diff": stats["argument_size_in_bytes"] / planned_args - 1.0,
      "planned_temporaries": planned_temp,
      "temporaries_ratio": stats["temp_size_in_bytes"] / max(planned_temp, 1),
  }


def _main_config(args) -> int:
  """--config mode: the whole run's placement and per-device memory."""
  from dvla_jax.config import config_check  # pylint: disable=g-import-not-at-top
  from dvla_jax.training import run_plan  # pylint: disable=g-import-not-at-top

  try:
    if args.devices < 1:
      raise ValueError(f"--devices={args.devices}; allowed: >= 1 (required with --config)")
    if args.device_memory_gib <= 0:
      raise ValueError(f"--device_memory_gib={args.device_memory_gib}; allowed: > 0")
    plan = run_plan.plan_run(config_check.load_config_file(args.config), args.devices,
                              args.processes)
  except (ValueError, config_check.ConfigError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  device_bytes = int(args.device_memory_gib * memory_plan.GIB)
  print(plan.format(device_bytes))
  fits = plan.fits(device_bytes)
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"config": args.config, "devices": args.devices,
                 "processes": args.processes, "device_bytes": device_bytes,
                 "device_ids": plan.device_ids, "num_params": plan.steps.num_params,
                 "per_device": {str(d): t for d, t in plan.per_device.items()},
                 "peak_device": plan.peak()[0], "peak_bytes": plan.peak()[1], "fits": fits},
                f, indent=2)
  return 1 if args.strict and not fits else 0


def main(argv=None) -> int:
  args = _parser().parse_args(argv)
  if args.config is not None:
    return _main_config(args)
  if args.preset is None:
    print("error: --preset is required (or --config); allowed: "
          f"{', '.join(models.PRESETS)}", file=sys.stderr)
    return 2
  try:
    config = models.get_preset(args.preset, **_overrides(args))
    mesh_shape = memory_plan.parse_mesh(args.mesh)
    actor_shape = (memory_plan.parse_mesh(args.actor_mesh) if args.actor_mesh is not None
                   else None)
    for name in ("batch", "actor_batch"):
      if getattr(args, name) < 0:
        raise ValueError(f"--{name}={getattr(args, name)}; allowed: >= 1 (0 = default)")
    if args.device_memory_gib <= 0:
      raise ValueError(f"--device_memory_gib={args.device_memory_gib}; allowed: > 0")
    plan = memory_plan.plan_memory(config, mesh_shape, batch=args.batch or None,
                                   actor_mesh_shape=actor_shape,
                                   actor_batch=args.actor_batch or None)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  device_bytes = int(args.device_memory_gib * memory_plan.GIB)
  print(memory_plan.format_plan(plan, device_bytes))

  report = {"preset": args.preset, "mesh": plan.mesh, "actor_mesh": plan.actor_mesh,
            "batch": plan.batch, "actor_batch": plan.actor_batch,
            "num_params": plan.num_params, "device_bytes": device_bytes,
            "learner": plan.learner.terms, "actor": plan.actor.terms,
            "fits": plan.fits(device_bytes)}
  devices = math.prod(mesh_shape.values())
  available = min(len(jax.devices()), _MAX_COMPILE_DEVICES)
  # XLA:CPU takes many minutes over a multi-billion-parameter update, and its figures say
  # nothing an accelerator would not: auto leaves such models to the plan.
  too_big = (jax.devices()[0].platform == "cpu" and plan.num_params > _MAX_CPU_COMPILE_PARAMS
             and args.compile == "auto" and devices <= available)
  if args.compile != "never" and devices <= available and not too_big:
    compiled = _compile_report(config, plan, mesh_shape)
    report["compiled"] = compiled
    if "memory_analysis" in compiled:
      s = compiled["memory_analysis"]
      print(f"compiled learner step on {devices} {jax.devices()[0].platform} device(s), "
            "memory_analysis() per device:")
      print(f"  arguments {s['argument_size_in_bytes']:,} B (plan: parameters + optimizer "
            f"state + batch = {compiled['planned_arguments']:,} B, "
            f"{100 * compiled['arguments_rel_diff']:+.2f}%)")
      print(f"  temporaries {s['temp_size_in_bytes']:,} B (plan: gradients + activations + "
            f"fsdp gather = {compiled['planned_temporaries']:,} B, "
            f"x{compiled['temporaries_ratio']:.2f})")
      print(f"  outputs {s['output_size_in_bytes']:,} B, of which aliased to donated "
            f"inputs {s['alias_size_in_bytes']:,} B")
    else:
      print(compiled["note"])
  elif args.compile == "never":
    print("not compiled (--compile=never)")
  elif too_big:
    print(f"not compiled: {plan.num_params / 1e9:.2f}B parameters on CPU devices (at most "
          f"{_MAX_CPU_COMPILE_PARAMS / 1e9:g}B with --compile=auto; --compile=always forces it)")
  else:
    print(f"not compiled: the mesh has {devices} devices, {available} are available here "
          f"(at most {_MAX_COMPILE_DEVICES})")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(report, f, indent=2)
  return 1 if args.strict and not report["fits"] else 0


if __name__ == "__main__":
  sys.exit(main())
