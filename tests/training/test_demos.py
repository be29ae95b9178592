"""Demonstrations: expert episodes round-trip through disk and feed behaviour-cloning batches."""

import json
import os

import numpy as np
import pytest

from dvla_jax import envs
from dvla_jax.models import ActionTokenizer
from dvla_jax.models import tokenizer
from dvla_jax.training import demos

EPISODES, WORLDS, T = 6, 4, 8


@pytest.fixture(scope="module")
def written(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("demos"))
  config = envs.EnvConfig(image_size=16, episode_length=T, action_horizon=2)
  meta = demos.write_demos(path, "touch_cube", EPISODES, num_worlds=WORLDS, seed=3,
                           env_config=config)
  return path, meta, demos.load_demos(path)


def test_files_and_meta(written):
  path, meta, _ = written
  assert sorted(os.listdir(path)) == ["meta.json", "shard_00000.npz", "shard_00001.npz"]
  assert [s["episodes"] for s in meta["shards"]] == [4, 2]
  with open(os.path.join(path, "meta.json")) as f:
    assert json.load(f) == meta
  # No pickled objects: every array loads with allow_pickle=False and has a plain dtype.
  with np.load(os.path.join(path, "shard_00001.npz"), allow_pickle=False) as shard:
    assert set(shard.files) == set(demos.FIELDS)
    assert all(shard[k].dtype != object for k in shard.files)
  assert meta["action_dim"] == 3 and meta["action_horizon"] == 2 and meta["num_bins"] == 256


def test_round_trip_shapes_and_content(written):
  _, meta, data = written
  assert data["image"].shape == (EPISODES, T, 1, 16, 16, 3) and data["image"].dtype == np.uint8
  assert data["proprio"].shape == (EPISODES, T, 6)
  assert data["actions"].shape == (EPISODES, T, 6) and data["actions"].dtype == np.float32
  assert data["text"].shape == (EPISODES, meta["max_text_len"])
  for k in ("rewards", "dones", "valid"):
    assert data[k].shape == (EPISODES, T)
  # Instruction text and tokens agree, and name one of the cubes.
  for text, ids in zip(data["instruction"], data["text"], strict=True):
    assert tokenizer.decode(ids) == text
    assert any(c in text for c in ("red", "green", "blue"))
  # Tokens are the 256-bin encoding of the stored actions.
  tok = ActionTokenizer(meta["action_low"], meta["action_high"], meta["num_bins"])
  decoded = np.asarray(tok.decode(data["action_tokens"].reshape(EPISODES, T, 2, 3)))
  np.testing.assert_allclose(decoded.reshape(data["actions"].shape), data["actions"],
                             atol=tok.bin_width.max() / 2 + 1e-6)
  assert np.all(np.abs(data["actions"]) <= 1.0)
  # The expert moves the gripper: the pictures change and proprio follows.
  assert not np.array_equal(data["image"][:, 0], data["image"][:, 1])
  assert np.abs(data["proprio"][:, 1] - data["proprio"][:, 0]).max() > 0.01


def test_episode_bookkeeping(written):
  _, meta, data = written
  assert data["success"].mean() >= 0.8
  assert meta["success_rate"] == pytest.approx(data["success"].mean())
  for i in range(EPISODES):
    valid, dones = data["valid"][i], data["dones"][i]
    assert valid[0] and data["length"][i] == valid.sum()
    if data["success"][i]:
      # The episode ends at its first done: valid up to and including it, not after.
      first = np.argmax(dones)
      assert dones[first] and valid[: first + 1].all() and not valid[first + 1:].any()
      assert data["rewards"][i, first] >= 1.0


def test_iterate_batches(written):
  _, _, data = written
  usable = int((data["valid"] & data["success"][:, None]).sum())
  batches = list(demos.iterate_batches(data, batch_size=4, seed=0, num_epochs=1))
  assert len(batches) == usable // 4
  b = batches[0]
  assert b["image"].shape == (4, 1, 16, 16, 3) and b["text"].shape == (4, data["text"].shape[1])
  assert b["actions"].shape == (4, 6) and b["action_tokens"].shape == (4, 6)
  # Every served step is a recorded valid step.
  seen = {tuple(a) for batch in batches for a in batch["actions"]}
  recorded = {tuple(a) for a in data["actions"][data["valid"] & data["success"][:, None]]}
  assert seen <= recorded
  again = next(demos.iterate_batches(data, batch_size=4, seed=0))
  np.testing.assert_array_equal(again["actions"], b["actions"])


def test_bad_input(tmp_path):
  with pytest.raises(FileNotFoundError, match="meta.json"):
    demos.load_demos(str(tmp_path))
  with pytest.raises(ValueError, match="num_episodes"):
    demos.write_demos(str(tmp_path), "touch_cube", 0)
  with pytest.raises(envs.UnknownTaskError, match="touch_cube"):
    demos.write_demos(str(tmp_path), "touch_cub", 1)
