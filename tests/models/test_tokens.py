"""Instruction tokenizer and action tokenizer."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dvla_jax.models import ActionTokenizer
from dvla_jax.models import ByteTokenizer
from dvla_jax.models import tokenizer


def test_byte_tokenizer_layout_and_round_trip():
  tok = ByteTokenizer()
  ids = tok.encode("pick cube", 16)
  assert ids.dtype == np.int32 and ids.shape == (16,)
  assert ids[0] == tokenizer.BOS_ID
  np.testing.assert_array_equal(ids[1:10], np.frombuffer(b"pick cube", np.uint8) + 3)
  assert ids[10] == tokenizer.EOS_ID
  assert np.all(ids[11:] == tokenizer.PAD_ID)
  assert tok.decode(ids) == "pick cube"
  assert tok.vocab_size == 259
  text = "grasp the red block \u00e9"  # non-ASCII bytes survive too
  assert tok.decode(tok.encode(text, 64)) == text


def test_byte_tokenizer_truncates_but_keeps_eos():
  tok = ByteTokenizer()
  ids = tok.encode("abcdefgh", 5)
  np.testing.assert_array_equal(ids, [1, ord("a") + 3, ord("b") + 3, ord("c") + 3, 2])
  assert tok.decode(ids) == "abc"
  with pytest.raises(ValueError):
    tok.encode("a", 1)


def test_byte_tokenizer_batch():
  batch = tokenizer.encode_batch(["a", "bb", ""], 6)
  assert batch.shape == (3, 6) and batch.dtype == np.int32
  assert [tokenizer.decode(row) for row in batch] == ["a", "bb", ""]
  np.testing.assert_array_equal(batch[2], [1, 2, 0, 0, 0, 0])


def test_action_tokenizer_round_trip_within_half_bin():
  low, high = np.array([-1.0, 0.0, -2.0]), np.array([1.0, 0.5, 6.0])
  at = ActionTokenizer(low, high, num_bins=256)
  actions = jax.random.uniform(jax.random.key(0), (500, 3), minval=low, maxval=high)
  tokens = at.encode(actions)
  assert tokens.dtype == jnp.int32 and tokens.shape == (500, 3)
  assert int(tokens.min()) >= 0 and int(tokens.max()) <= 255
  err = np.abs(np.asarray(at.decode(tokens)) - np.asarray(actions))
  half_width = (high - low) / 256 / 2
  assert np.all(err <= half_width + 1e-6)
  # Bins are not degenerate: the 500 samples hit many distinct bins.
  assert len(np.unique(np.asarray(tokens[:, 0]))) > 100


def test_action_tokenizer_clips_and_is_jittable():
  at = ActionTokenizer(np.array([-1.0, -1.0]), np.array([1.0, 1.0]), num_bins=8)
  tokens = jax.jit(at.encode)(jnp.array([[-5.0, 5.0], [-1.0, 1.0], [0.01, -0.01]]))
  np.testing.assert_array_equal(tokens, [[0, 7], [0, 7], [4, 3]])
  centres = jax.jit(at.decode)(jnp.array([0, 7]))
  np.testing.assert_allclose(centres, [-0.875, 0.875])
  np.testing.assert_allclose(at.decode(jnp.array([-3, 99])), [-0.875, 0.875])


def test_action_tokenizer_rejects_bad_bounds():
  with pytest.raises(ValueError):
    ActionTokenizer(np.array([1.0]), np.array([1.0]))
  with pytest.raises(ValueError):
    ActionTokenizer(np.array([0.0]), np.array([1.0]), num_bins=1)
