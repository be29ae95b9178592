"""The VLA policy: a transformer over [image patches, text, proprio] with parallel action decoding.

The prefix (image patches, instruction tokens, one proprio token) attends bidirectionally to
itself; H*D action query tokens and one value query token attend to the prefix and to each
other, so a whole action chunk is decoded in one forward pass (OpenVLA-OFT style). Each action
query yields `num_bins` logits through one shared head; the value query yields a scalar.

Every parameter is an `nnx.Param` whose `out_sharding` metadata holds logical axis names;
`dvla_jax.parallel` maps them to mesh axes. Eager sharding is off so the model can be built
without a mesh (tests, CPU) and sharded later by `jit(out_shardings=...)`.
"""

import math

from flax import nnx
import jax
import jax.numpy as jnp

from dvla_jax.models import tokenizer
from dvla_jax.models.presets import VLAConfig

# Logical axis names of parameter dimensions, the only ones used in this module.
EMBED = "embed"
MLP = "mlp"
HEADS = "heads"
KV = "kv"
VOCAB = "vocab"
PATCH = "patch"
BINS = "bins"
LORA = "lora"  # The rank of a LoRA adapter.
LOGICAL_AXES = (EMBED, MLP, HEADS, KV, VOCAB, PATCH, BINS, LORA)

_EMBED_INIT = nnx.initializers.normal(0.02)
_ZEROS = nnx.initializers.zeros_init()
_ONES = nnx.initializers.ones_init()


def _fan_in_init(in_axis, out_axis):
  return nnx.initializers.variance_scaling(1.0, "fan_in", "truncated_normal",
                                           in_axis=in_axis, out_axis=out_axis)


class _KeySeq:
  """Per-parameter keys folded from one base key.

  Drawing every key from `nnx.Rngs` costs time quadratic in the traced program under
  `eval_shape` (seconds to tens of seconds for the large presets); folding in a counter is free.
  """

  def __init__(self, key: jax.Array):
    self._key = key
    self._count = 0
    self._adapters = None

  def __call__(self) -> jax.Array:
    self._count += 1
    return jax.random.fold_in(self._key, self._count)

  def adapters(self) -> "_KeySeq":
    """A separate sequence for LoRA adapters, so that adding them leaves every base
    parameter's key, and so its initial value, as it was."""
    if self._adapters is None:
      self._adapters = _KeySeq(jax.random.fold_in(self._key, 2**32 - 1))
    return self._adapters


def _param(keys: _KeySeq, init, shape, axes, dtype) -> nnx.Param:
  if len(axes) != len(shape):
    raise ValueError(f"logical axes {axes} do not match shape {shape}")
  return nnx.Param(init(keys(), shape, dtype), out_sharding=axes, eager_sharding=False)


class _LayerNorm(nnx.Module):
  """LayerNorm with float32 statistics."""

  def __init__(self, dim: int, param_dtype, *, keys: _KeySeq):
    self.scale = _param(keys, _ONES, (dim,), (EMBED,), param_dtype)
    self.bias = _param(keys, _ZEROS, (dim,), (EMBED,), param_dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    mean = x32.mean(-1, keepdims=True)
    var = jnp.square(x32 - mean).mean(-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + 1e-6)
    y = y * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)
    return y.astype(x.dtype)


def _lora_pair(keys: _KeySeq, in_shape, in_axes, out_shape, out_axes, rank: int, param_dtype):
  """A LoRA adapter's (A, B): A [in..., r] small random, B [r, out...] zero, so that the
  adapted projection starts equal to the base one."""
  keys = keys.adapters()
  a_init = nnx.initializers.normal(1.0 / (math.prod(in_shape) ** 0.5))
  a = _param(keys, a_init, (*in_shape, rank), (*in_axes, LORA), param_dtype)
  b = _param(keys, _ZEROS, (rank, *out_shape), (LORA, *out_axes), param_dtype)
  return a, b


class _Dense(nnx.Module):
  """x @ kernel + bias, computed in `dtype`; with `lora_rank`, plus (x @ lora_a) @ lora_b."""

  def __init__(self, din: int, dout: int, axes, dtype, param_dtype, *, keys: _KeySeq,
               lora_rank: int = 0):
    self.dtype = dtype
    self.kernel = _param(keys, _fan_in_init(0, 1), (din, dout), axes, param_dtype)
    self.bias = _param(keys, _ZEROS, (dout,), axes[1:], param_dtype)
    self.lora_rank = lora_rank
    if lora_rank:
      self.lora_a, self.lora_b = _lora_pair(keys, (din,), axes[:1], (dout,), axes[1:],
                                            lora_rank, param_dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    dt = self.dtype
    x = x.astype(dt)
    y = x @ self.kernel[...].astype(dt) + self.bias[...].astype(dt)
    if self.lora_rank:
      y = y + (x @ self.lora_a[...].astype(dt)) @ self.lora_b[...].astype(dt)
    return y


class _Attention(nnx.Module):
  """Multi-head self-attention with a fused qkv projection and float32 softmax."""

  def __init__(self, width: int, num_heads: int, dtype, param_dtype, *, keys: _KeySeq,
               lora_rank: int = 0):
    head_dim = width // num_heads
    self.dtype = dtype
    self.qkv = _param(keys, _fan_in_init(0, (1, 2, 3)), (width, 3, num_heads, head_dim),
                      (EMBED, None, HEADS, KV), param_dtype)
    self.qkv_bias = _param(keys, _ZEROS, (3, num_heads, head_dim), (None, HEADS, KV),
                           param_dtype)
    self.out = _param(keys, _fan_in_init((0, 1), 2), (num_heads, head_dim, width),
                      (HEADS, KV, EMBED), param_dtype)
    self.out_bias = _param(keys, _ZEROS, (width,), (EMBED,), param_dtype)
    self.lora_rank = lora_rank
    if lora_rank:
      self.qkv_lora_a, self.qkv_lora_b = _lora_pair(
          keys, (width,), (EMBED,), (3, num_heads, head_dim), (None, HEADS, KV), lora_rank,
          param_dtype)
      self.out_lora_a, self.out_lora_b = _lora_pair(
          keys, (num_heads, head_dim), (HEADS, KV), (width,), (EMBED,), lora_rank, param_dtype)

  def __call__(self, x: jax.Array, mask: jax.Array | None) -> jax.Array:
    dt = self.dtype
    qkv = jnp.einsum("btd,dshk->sbthk", x, self.qkv[...].astype(dt))
    if self.lora_rank:
      low = x @ self.qkv_lora_a[...].astype(dt)
      qkv = qkv + jnp.einsum("btr,rshk->sbthk", low, self.qkv_lora_b[...].astype(dt))
    q, k, v = qkv + self.qkv_bias[...].astype(dt)[:, None, None]
    q = q * jnp.asarray(q.shape[-1] ** -0.5, dt)
    scores = jnp.einsum("bqhk,bthk->bhqt", q, k, preferred_element_type=jnp.float32)
    if mask is not None:
      scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(dt)
    ctx = jnp.einsum("bhqt,bthk->bqhk", probs, v)
    out = jnp.einsum("bqhk,hkd->bqd", ctx, self.out[...].astype(dt))
    if self.lora_rank:
      low = jnp.einsum("bqhk,hkr->bqr", ctx, self.out_lora_a[...].astype(dt))
      out = out + low @ self.out_lora_b[...].astype(dt)
    return out + self.out_bias[...].astype(dt)


class _Block(nnx.Module):
  """Pre-LayerNorm transformer block: attention then GELU MLP, both residual."""

  def __init__(self, width: int, num_heads: int, mlp_dim: int, dtype, param_dtype, *,
               keys: _KeySeq, lora_rank: int = 0):
    self.attn_norm = _LayerNorm(width, param_dtype, keys=keys)
    self.attn = _Attention(width, num_heads, dtype, param_dtype, keys=keys, lora_rank=lora_rank)
    self.mlp_norm = _LayerNorm(width, param_dtype, keys=keys)
    self.mlp_in = _Dense(width, mlp_dim, (EMBED, MLP), dtype, param_dtype, keys=keys,
                         lora_rank=lora_rank)
    self.mlp_out = _Dense(mlp_dim, width, (MLP, EMBED), dtype, param_dtype, keys=keys,
                          lora_rank=lora_rank)

  def __call__(self, x: jax.Array, mask: jax.Array | None) -> jax.Array:
    x = x + self.attn(self.attn_norm(x), mask)
    return x + self.mlp_out(jax.nn.gelu(self.mlp_in(self.mlp_norm(x))))


def _run_block(block: _Block, x: jax.Array, mask: jax.Array | None) -> jax.Array:
  return block(x, mask)


def prefix_query_mask(prefix_valid: jax.Array, num_queries: int) -> jax.Array:
  """Attention mask of the trunk sequence [prefix, queries].

  A prefix token sees the valid prefix tokens only; a query sees the valid prefix tokens and
  every query. Invalid (padding) prefix tokens are seen by nobody.

  Args:
    prefix_valid: bool [B, P], False at padding.
    num_queries: Q query tokens appended after the prefix.

  Returns:
    bool [B, 1, P + Q, P + Q], True where row token may attend to column token.
  """
  batch, prefix_len = prefix_valid.shape
  total = prefix_len + num_queries
  is_query = jnp.arange(total) >= prefix_len
  key_is_prefix = jnp.concatenate(
      [prefix_valid.astype(bool), jnp.zeros((batch, num_queries), bool)], axis=1)
  query_to_query = is_query[:, None] & is_query[None, :]
  mask = key_is_prefix[:, None, :] | query_to_query[None]
  return mask[:, None]


class VLA(nnx.Module):
  """Vision-language-action policy with a token action head and a value head."""

  def __init__(self, config: VLAConfig, *, rngs: nnx.Rngs):
    c = config
    keys = _KeySeq(rngs.params())
    self.config = c
    dt, pdt = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
    self.dtype = dt
    enc_width = c.vit_width if c.vit_depth else c.width
    patch_dim = c.patch_size * c.patch_size * 3
    self.patch_embed = _Dense(patch_dim, enc_width, (PATCH, EMBED), dt, pdt, keys=keys)
    self.image_pos = _param(keys, _EMBED_INIT, (c.num_cameras, c.patches_per_camera, enc_width),
                            (None, None, EMBED), pdt)
    self.vit_blocks = nnx.List([
        _Block(c.vit_width, c.vit_num_heads, c.vit_mlp_dim, dt, pdt, keys=keys)
        for _ in range(c.vit_depth)])
    if c.vit_depth:
      self.vit_norm = _LayerNorm(c.vit_width, pdt, keys=keys)
      self.vit_proj = _Dense(c.vit_width, c.width, (None, EMBED), dt, pdt, keys=keys)
    self.text_embed = _param(keys, _EMBED_INIT, (c.vocab_size, c.width), (VOCAB, EMBED), pdt)
    self.text_pos = _param(keys, _EMBED_INIT, (c.max_text_len, c.width), (None, EMBED), pdt)
    self.proprio_embed = _Dense(c.proprio_dim, c.width, (None, EMBED), dt, pdt, keys=keys)
    # Action queries first, the value query last.
    self.query_embed = _param(keys, _EMBED_INIT, (c.num_action_tokens + 1, c.width),
                              (None, EMBED), pdt)
    self.blocks = nnx.List([
        _Block(c.width, c.num_heads, c.mlp_dim, dt, pdt, keys=keys, lora_rank=c.lora_rank)
        for _ in range(c.depth)])
    self.final_norm = _LayerNorm(c.width, pdt, keys=keys)
    # Heads run in float32 so logits and values keep full precision under bfloat16 compute.
    if c.action_free_logits:
      self.action_head = _Dense(c.width, c.num_bins, (EMBED, BINS), jnp.float32, pdt, keys=keys)
    if c.action_prior_std > 0 and c.action_free_logits:
      # Starts as a discretised Gaussian N(0, action_prior_std^2) over the bins: the free
      # logits start small and the prior's mean / log-std head starts at zero.
      self.action_head.kernel[...] = self.action_head.kernel[...] * 0.01
    if c.action_prior_std > 0:
      self.action_prior = _Dense(c.width, 2, (EMBED, None), jnp.float32, pdt, keys=keys)
      self.action_prior.kernel[...] = self.action_prior.kernel[...] * 0.01
    self.value_head = _Dense(c.width, 1, (EMBED, None), jnp.float32, pdt, keys=keys)
    # The critic starts at V = 0 everywhere: with a 0/1 success reward that is a neutral guess,
    # where a random head's offsets (up to +-1) would feed the first updates large, wrong
    # advantages through the shared trunk.
    self.value_head.kernel[...] = jnp.zeros_like(self.value_head.kernel[...])

  def _encode_images(self, image: jax.Array) -> jax.Array:
    """uint8 [B, C, S, S, 3] -> [B, C * N, width] image tokens."""
    c = self.config
    b, cams, s = image.shape[0], image.shape[1], image.shape[2]
    if image.shape[1:] != (c.num_cameras, c.image_size, c.image_size, 3):
      raise ValueError(f"image shape {image.shape} does not match config "
                       f"[B, {c.num_cameras}, {c.image_size}, {c.image_size}, 3]")
    g, p = s // c.patch_size, c.patch_size
    patches = image.reshape(b, cams, g, p, g, p, 3).transpose(0, 1, 2, 4, 3, 5, 6)
    patches = patches.reshape(b, cams, g * g, p * p * 3).astype(self.dtype) / 127.5 - 1.0
    x = self.patch_embed(patches) + self.image_pos[...].astype(self.dtype)
    if c.vit_depth:
      # Each camera image is encoded on its own, as a pretrained ViT would.
      x = x.reshape(b * cams, g * g, -1)
      for block in self.vit_blocks:
        x = block(x, None)
      x = self.vit_proj(self.vit_norm(x))
    return x.reshape(b, cams * g * g, c.width)

  def __call__(self, obs: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
    """Runs the policy.

    Args:
      obs: {"image": uint8 [B, num_cameras, S, S, 3], "text": int32 [B, L] with
        L <= max_text_len (0 = padding), "proprio": float [B, proprio_dim]}. Without
        "image" (or with None) the prefix holds the text and proprio tokens only; a blank
        (all-zero) image, as the Playground adapter gives for an env without a camera, is
        encoded like any other.

    Returns:
      (logits float32 [B, H, D, num_bins], value float32 [B]).
    """
    c, dt = self.config, self.dtype
    text = obs["text"]
    batch, text_len = text.shape
    if text_len > c.max_text_len:
      raise ValueError(f"text length {text_len} exceeds max_text_len {c.max_text_len}")
    if obs.get("image") is not None:
      img = self._encode_images(obs["image"])
    else:  # A proprioception-only observation (an env without a camera): no image tokens.
      img = jnp.zeros((batch, 0, c.width), dt)
    txt = jnp.take(self.text_embed[...], text, axis=0).astype(dt)
    txt = txt + self.text_pos[:text_len].astype(dt)
    pro = self.proprio_embed(obs["proprio"])[:, None]
    num_queries = c.num_action_tokens + 1
    qry = jnp.broadcast_to(self.query_embed[...].astype(dt), (batch, num_queries, c.width))
    x = jnp.concatenate([img, txt, pro, qry], axis=1)

    prefix_valid = jnp.concatenate([
        jnp.ones(img.shape[:2], bool), text != tokenizer.PAD_ID, jnp.ones((batch, 1), bool)],
        axis=1)
    mask = prefix_query_mask(prefix_valid, num_queries)
    run = nnx.remat(_run_block) if c.remat else _run_block
    for block in self.blocks:
      x = run(block, x, mask)

    # Only the query outputs are read, so the prefix skips the final norm.
    q = self.final_norm(x[:, -num_queries:].astype(jnp.float32))
    if c.action_free_logits and c.action_prior_std > 0:
      logits = self.action_head(q[:, :-1]) + self._ordinal_prior(q[:, :-1])
    elif c.action_free_logits:
      logits = self.action_head(q[:, :-1])
    else:
      logits = self._ordinal_prior(q[:, :-1])
    logits = logits.reshape(batch, c.action_horizon, c.action_dim, c.num_bins)
    value = self.value_head(q[:, -1])[:, 0]
    return logits, value


  def _ordinal_prior(self, q: jax.Array) -> jax.Array:
    """[B, N, width] action queries -> [B, N, num_bins] discretised-Gaussian log-weights."""
    c = self.config
    out = self.action_prior(q)
    mu = jnp.tanh(out[..., :1])
    # The floor keeps the prior at least `action_prior_min_std` wide after cloning, so that
    # sampling still explores neighbouring bins where the expert's labels all sit in one.
    log_std = jnp.clip(out[..., 1:] + jnp.log(c.action_prior_std),
                       jnp.log(c.action_prior_min_std), 1.0)
    centres = (jnp.arange(c.num_bins, dtype=jnp.float32) + 0.5) / c.num_bins * 2.0 - 1.0
    return -0.5 * jnp.square((centres - mu) * jnp.exp(-log_std))


def count_params(config: VLAConfig) -> int:
  """Total parameter count, computed abstractly (nothing is allocated)."""
  model = nnx.eval_shape(lambda: VLA(config, rngs=nnx.Rngs(0)))
  return sum(int(x.size) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def sample_tokens(logits: jax.Array, rng: jax.Array, temperature) -> jax.Array:
  """Samples one token per action dimension.

  Args:
    logits: float [B, H, D, num_bins].
    rng: PRNG key.
    temperature: softmax temperature; 0 (or below) picks the argmax. A Python number or a
      traced scalar.

  Returns:
    int32 [B, H, D] tokens.
  """
  greedy = jnp.argmax(logits, axis=-1).astype(jnp.int32)
  if isinstance(temperature, (int, float)) and temperature <= 0:
    return greedy
  t = jnp.asarray(temperature, jnp.float32)
  scaled = logits.astype(jnp.float32) / jnp.maximum(t, 1e-6)
  sampled = jax.random.categorical(rng, scaled, axis=-1).astype(jnp.int32)
  return jnp.where(t > 0, sampled, greedy)


def _tempered(logits: jax.Array, temperature) -> jax.Array:
  logits = logits.astype(jnp.float32)
  if isinstance(temperature, (int, float)) and temperature in (0, 1):
    return logits  # 0: greedy acting, scored under the untempered policy.
  return logits / jnp.maximum(jnp.asarray(temperature, jnp.float32), 1e-6)


def token_log_probs(logits: jax.Array, tokens: jax.Array, temperature=1.0) -> jax.Array:
  """Log-probability of each token under softmax(logits / temperature).

  The behaviour, proximal and learner log-probs of PPO must all use the temperature the
  tokens were sampled at, or the ratio compares two different policies.

  Args:
    logits: float [B, H, D, num_bins].
    tokens: int [B, H, D].
    temperature: the sampling temperature (a Python number or a traced scalar); 0 and 1
      leave the logits as they are.

  Returns:
    float32 [B, H, D].
  """
  logp = jax.nn.log_softmax(_tempered(logits, temperature), axis=-1)
  return jnp.take_along_axis(logp, tokens[..., None].astype(jnp.int32), axis=-1)[..., 0]


def token_entropy(logits: jax.Array, temperature=1.0) -> jax.Array:
  """Entropy of each token distribution softmax(logits / temperature).

  Args:
    logits: float [B, H, D, num_bins].
    temperature: as in `token_log_probs`.

  Returns:
    float32 [B, H, D] entropies in nats.
  """
  logp = jax.nn.log_softmax(_tempered(logits, temperature), axis=-1)
  return -jnp.sum(jnp.exp(logp) * logp, axis=-1)
