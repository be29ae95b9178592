"""config_check: shipped configs pass; each kind of violation is one line naming the field."""

import importlib.util
import os
import pathlib
import subprocess
import sys

import ml_collections
import pytest

from dvla_jax.config import config_check
from dvla_jax.config import default_config
from dvla_jax.config import fields
from dvla_jax.config import names

_ROOT = pathlib.Path(__file__).parents[2]
_DEMO = _ROOT / "configs" / "demo.py"


def _demo_config(arg: str) -> ml_collections.ConfigDict:
  spec = importlib.util.spec_from_file_location("demo_config", _DEMO)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def _flat_keys(config, prefix=""):
  keys = []
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      keys += _flat_keys(value, f"{prefix}{key}.")
    else:
      keys.append(prefix + key)
  return keys


def test_every_field_is_declared_once_with_its_doc():
  assert sorted(_flat_keys(default_config.get_config())) == sorted(fields.paths())
  assert len(set(fields.paths())) == len(fields.FIELDS)
  for field in fields.FIELDS:
    assert len(field.doc) > 10, field.path
    assert f"{field.path} = {field.default!r}" in default_config.__doc__, field.path
  with pytest.raises(ValueError, match="default -1 breaks its own rule"):
    fields.Field("x", -1, fields.integer(ge=0), "a field")


def test_config_reference_is_current():
  """docs/config.md is what the declarations generate (regenerate with
  `python -m dvla_jax.config --markdown > docs/config.md`)."""
  assert (_ROOT / "docs" / "config.md").read_text() == fields.markdown()


def test_cross_field_checks_are_named_validators():
  for validator in config_check.VALIDATORS:
    assert validator.__name__.startswith("validate_") and validator.__doc__


@pytest.mark.parametrize("config", [
    default_config.get_config(), _demo_config(""), _demo_config("tiny")])
def test_shipped_configs_pass(config):
  config_check.validate(config, known_tasks=["touch_cube"],
                        known_presets=["tiny", "small", "base"])


@pytest.mark.parametrize("path, value, message", [
    ("rl.lr", -1.0, "rl.lr=-1.0 out of range; allowed: float > 0"),
    ("rl.lr", float("inf"), "rl.lr=inf out of range"),
    ("rl.gamma", 1.5, "rl.gamma=1.5 out of range; allowed: float >= 0 and <= 1"),
    ("env.num_envs", 0, "env.num_envs=0 out of range; allowed: int >= 1"),
    ("env.image_size", 256, "env.image_size=256 out of range; allowed: int >= 32 and <= 128"),
    ("env.impl", "cuda", "env.impl='cuda' not a choice; allowed: 'warp', 'jax'"),
    ("rl.algo", "sac", "rl.algo='sac' not a choice; allowed: 'ppo'"),
    ("env.num_envs", 8.0, "env.num_envs=8.0 has type float; allowed: int >= 1"),
    ("seed", True, "seed=True has type bool"),
    ("rl.num_minibatches", 5, "rl.num_minibatches=5 does not divide env.num_envs * "
     "rl.rollout_length = 32; allowed: 1, 2, 4, 8, 16, 32"),
])
def test_violations(path, value, message):
  config = _demo_config("tiny")
  group, _, field = path.rpartition(".")
  holder = config[group] if group else config
  with holder.ignore_type():
    holder[field] = value
  with pytest.raises(config_check.ConfigError) as error:
    config_check.validate(config)
  assert str(error.value).startswith(message)
  assert "\n" not in str(error.value)


def test_int_is_accepted_for_a_float_field():
  config = _demo_config("tiny")
  with config.ignore_type():
    config.rl.lr = 1
  config_check.validate(config)


def test_unknown_and_missing_fields():
  config = _demo_config("tiny")
  config.unlock()
  config.rl.learning_rate = 1e-3
  with pytest.raises(config_check.ConfigError, match=r"rl.learning_rate: unknown field; "
                     r"allowed: algo, rollout_length, lr"):
    config_check.validate(config)
  config = _demo_config("tiny")
  del config.train["iterations"]
  with pytest.raises(config_check.ConfigError, match="train.iterations: missing field"):
    config_check.validate(config)


def test_names_from_lists_or_callables():
  config = _demo_config("tiny")
  config.env.task = "stack_cups"
  with pytest.raises(config_check.ConfigError,
                     match="env.task='stack_cups' unknown; allowed: lift, touch_cube"):
    config_check.validate(config, known_tasks=["touch_cube", "lift"])
  config_check.validate(config)  # Not checked when no list is given.
  config.env.task = "touch_cube"
  config.model.preset = "huge"
  calls = []
  with pytest.raises(config_check.ConfigError, match="model.preset='huge' unknown"):
    config_check.validate(config, known_presets=lambda: calls.append(1) or ["tiny"])
  assert calls == [1]
  # A source that returns None (package without the list) skips the check.
  config_check.validate(config, known_presets=lambda: None)


def test_cheap_checks_run_before_name_lookups():
  config = _demo_config("tiny")
  config.rl.lr = -1.0
  lookups = []
  with pytest.raises(config_check.ConfigError, match="rl.lr"):
    config_check.validate(config, known_tasks=lambda: lookups.append(1) or [])
  assert not lookups


def test_describe():
  assert config_check.describe("rl.lr") == "float > 0"
  assert config_check.describe("env.impl") == "'warp', 'jax'"
  assert config_check.describe("rl.nope") is None


def test_optional_module_distinguishes_absent_from_broken(tmp_path, monkeypatch):
  (tmp_path / "dvla_broken_pkg").mkdir()
  (tmp_path / "dvla_broken_pkg" / "__init__.py").write_text("import dvla_no_such_dependency\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  assert names._optional_module("dvla_no_such_pkg.registry") is None
  # A package that exists but fails to import is a bug to surface, not a missing list.
  with pytest.raises(ModuleNotFoundError, match="dvla_no_such_dependency"):
    names._optional_module("dvla_broken_pkg")


def test_config_cli_prints_the_reference():
  env = dict(os.environ, PYTHONPATH=str(_ROOT))
  text = subprocess.run([sys.executable, "-m", "dvla_jax.config"], capture_output=True,
                        text=True, check=True, env=env, cwd=_ROOT).stdout
  assert text == fields.reference() and "rl.lr = 0.0003 (float > 0)" in text
  markdown = subprocess.run([sys.executable, "-m", "dvla_jax.config", "--markdown"],
                            capture_output=True, text=True, check=True, env=env, cwd=_ROOT)
  assert markdown.stdout == (_ROOT / "docs" / "config.md").read_text()
