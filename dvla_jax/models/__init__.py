"""The VLA policy model: config and presets, tokenizers, the Flax NNX module, token helpers."""

from dvla_jax.models import trainable
from dvla_jax.models.action_tokens import ActionTokenizer
from dvla_jax.models.presets import get_preset
from dvla_jax.models.presets import NOMINAL_PARAMS
from dvla_jax.models.presets import PRESETS
from dvla_jax.models.presets import VLAConfig
from dvla_jax.models.tokenizer import ByteTokenizer
from dvla_jax.models.vla import count_params
from dvla_jax.models.vla import LOGICAL_AXES
from dvla_jax.models.vla import prefix_query_mask
from dvla_jax.models.vla import sample_tokens
from dvla_jax.models.vla import token_entropy
from dvla_jax.models.vla import token_log_probs
from dvla_jax.models.vla import VLA

__all__ = [
    "ActionTokenizer",
    "ByteTokenizer",
    "LOGICAL_AXES",
    "NOMINAL_PARAMS",
    "PRESETS",
    "VLA",
    "VLAConfig",
    "count_params",
    "get_preset",
    "prefix_query_mask",
    "sample_tokens",
    "token_entropy",
    "token_log_probs",
    "trainable",
]
