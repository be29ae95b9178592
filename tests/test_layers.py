"""Imports point down the layers, and no module imports itself back through others.

Layers, bottom first (ARCHITECTURE): envs, models, rl, parallel, memory, config < programs <
swimlanes < training < main, evaluate. Every import counts, at module level or inside a
function. Within the bottom layer, envs import none of the others but config (the env emits
what it knows; the model side tokenises), and config (pure Python) imports none of them.
"""

import ast
import collections
import pathlib

_ROOT = pathlib.Path(__file__).resolve().parents[1]
_PACKAGE = _ROOT / "dvla_jax"

_RANK = {"envs": 0, "models": 0, "rl": 0, "parallel": 0, "memory": 0, "config": 0,
         "programs": 1, "swimlanes": 2, "training": 3, "main": 4, "evaluate": 4}
# Bottom-layer packages each may import (besides themselves).
_BOTTOM = {
    "envs": {"config"},
    "models": set(),
    "rl": {"models"},
    "parallel": {"models", "config"},
    "memory": {"models", "parallel"},
    "config": set(),
}
# Known violations that later steps of the layering work remove; the test fails when one is
# fixed (remove it here) or a new one appears.
_PENDING: set[tuple[str, str]] = set()


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(_ROOT).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: pathlib.Path) -> set[str]:
  """Every dvla_jax module `path` imports, anywhere in the file."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      found.update(a.name for a in node.names if a.name.startswith("dvla_jax"))
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      if node.module.startswith("dvla_jax"):
        found.add(node.module)
        found.update(f"{node.module}.{a.name}" for a in node.names)
  return found


def _graph() -> dict[str, set[str]]:
  modules = {_module_name(p): p for p in _PACKAGE.rglob("*.py")}
  graph = {}
  for name, path in modules.items():
    # `from pkg import sub` names a module when `pkg.sub` is one, else an attribute of pkg.
    graph[name] = {m for m in _imports(path) if m in modules and m != name}
  return graph


def _package(module: str) -> str:
  parts = module.split(".")
  return parts[1] if len(parts) > 1 else ""


def test_imports_point_down():
  found = set()
  for module, targets in _graph().items():
    src = _package(module)
    for target in targets:
      dst = _package(target)
      if not src or not dst or src == dst:
        continue
      rank_src, rank_dst = _RANK[src], _RANK[dst]
      upward = rank_dst > rank_src
      sideways = rank_src == rank_dst == 0 and dst not in _BOTTOM[src]
      if upward or sideways:
        found.add((src, dst, module, target))
  pairs = {(src, dst) for src, dst, _, _ in found}
  unexpected = sorted(f"{m} -> {t}" for s, d, m, t in found if (s, d) not in _PENDING)
  assert not unexpected, f"imports that point up or across the bottom layer: {unexpected}"
  assert pairs == _PENDING, f"fixed (remove from _PENDING): {sorted(_PENDING - pairs)}"


def test_every_package_has_a_layer():
  packages = {p.name for p in _PACKAGE.iterdir() if (p / "__init__.py").exists()}
  packages |= {p.stem for p in _PACKAGE.glob("*.py") if p.stem != "__init__"}
  assert packages <= set(_RANK), sorted(packages - set(_RANK))


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """Strongly connected components of more than one module (Tarjan)."""
  index, low, stack, on_stack, out = {}, {}, [], set(), []
  counter = [0]

  def visit(v):
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on_stack.add(v)
    for w in graph.get(v, ()):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        out.append(sorted(component))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return out


def test_no_import_cycles_between_modules():
  # A package's __init__ re-exports its modules, which import each other through it: cycles
  # through an __init__ are how Python packages work, and are not counted.
  graph = {m: {t for t in ts if not _is_package(t)} for m, ts in _graph().items()
           if not _is_package(m)}
  assert not _cycles(graph), _cycles(graph)


def _is_package(module: str) -> bool:
  path = _ROOT.joinpath(*module.split("."))
  return (path / "__init__.py").exists()


def test_the_checker_sees_imports_inside_functions(tmp_path):
  source = tmp_path / "m.py"
  source.write_text("def f():\n  from dvla_jax.training import trainer\n  import dvla_jax.envs\n")
  assert _imports(source) == {"dvla_jax.training", "dvla_jax.training.trainer",
                              "dvla_jax.envs"}
  assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
  assert collections.Counter(_RANK.values())[0] == 6


def test_lanes_use_the_narrow_interface():
  """The lanes import no builder: they run on `interface.LanePrograms`, which the components
  bundle provides member for member."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  from dvla_jax.programs import builders  # pylint: disable=g-import-not-at-top
  from dvla_jax.swimlanes import interface  # pylint: disable=g-import-not-at-top

  graph = _graph()
  for module, imports in graph.items():
    if module.startswith("dvla_jax.swimlanes"):
      assert "dvla_jax.programs.builders" not in imports, module
  provided = {f.name for f in dataclasses.fields(builders.Components)} | set(
      vars(builders.Components))
  for name in list(interface.LanePrograms.__annotations__) + ["empty_slot"]:
    assert name in provided, name
  group = {f.name for f in dataclasses.fields(builders.EnvGroup)} | set(vars(builders.EnvGroup))
  for name in ("reset", "env_step", "start_rollout"):
    assert name in group, name
