"""Byte-level instruction tokenizer: ships with the project, needs no vocabulary file.

Ids: 0 = pad, 1 = bos, 2 = eos, and UTF-8 byte b is id b + 3 (vocabulary 259).

The envs emit an instruction as an index into their `instruction_table()` (strings); the model
side turns the table into tokens once (`table_tokens`) and looks each observation's row up.
"""

from collections.abc import Sequence

import numpy as np

PAD_ID = 0
BOS_ID = 1
EOS_ID = 2
BYTE_OFFSET = 3
VOCAB_SIZE = 256 + BYTE_OFFSET
# Token length of an instruction table whose instructions are all shorter (bos and eos
# included): the length the models are built with unless a longer instruction needs more.
MIN_TEXT_LEN = 24


class ByteTokenizer:
  """Encodes instructions as bos + UTF-8 bytes + eos, right-padded to a fixed length."""

  pad_id = PAD_ID
  bos_id = BOS_ID
  eos_id = EOS_ID
  vocab_size = VOCAB_SIZE

  def encode(self, text: str, max_len: int) -> np.ndarray:
    """Encodes one instruction.

    Args:
      text: the instruction.
      max_len: output length (>= 2). Longer texts lose their tail bytes; bos and eos are kept
        so the model always sees where the instruction ends.

    Returns:
      int32 [max_len] token ids.
    """
    if max_len < 2:
      raise ValueError(f"max_len must be >= 2 (bos and eos), got {max_len}")
    body = np.frombuffer(text.encode("utf-8"), np.uint8)[: max_len - 2].astype(np.int32)
    out = np.full((max_len,), PAD_ID, np.int32)
    out[0] = BOS_ID
    out[1 : 1 + body.size] = body + BYTE_OFFSET
    out[1 + body.size] = EOS_ID
    return out

  def encode_batch(self, texts: Sequence[str], max_len: int) -> np.ndarray:
    """Encodes several instructions.

    Args:
      texts: the instructions.
      max_len: output length per instruction.

    Returns:
      int32 [len(texts), max_len] token ids.
    """
    if not texts:
      return np.zeros((0, max_len), np.int32)
    return np.stack([self.encode(t, max_len) for t in texts])

  def decode(self, ids: Sequence[int] | np.ndarray) -> str:
    """Decodes ids back to text: stops at eos, skips pad and bos.

    Args:
      ids: token ids (any integer sequence or 1-D array).

    Returns:
      The text; bytes cut mid-character by truncation decode as U+FFFD.
    """
    ids = np.asarray(ids, np.int64).reshape(-1)
    eos = np.flatnonzero(ids == EOS_ID)
    if eos.size:
      ids = ids[: eos[0]]
    ids = ids[(ids >= BYTE_OFFSET) & (ids < VOCAB_SIZE)] - BYTE_OFFSET
    return bytes(ids.astype(np.uint8).tolist()).decode("utf-8", errors="replace")


def encode(text: str, max_len: int) -> np.ndarray:
  """Module-level shortcut for `ByteTokenizer().encode`."""
  return ByteTokenizer().encode(text, max_len)


def encode_batch(texts: Sequence[str], max_len: int) -> np.ndarray:
  """Module-level shortcut for `ByteTokenizer().encode_batch`."""
  return ByteTokenizer().encode_batch(texts, max_len)


def decode(ids: Sequence[int] | np.ndarray) -> str:
  """Module-level shortcut for `ByteTokenizer().decode`."""
  return ByteTokenizer().decode(ids)


def tokens_needed(instructions: Sequence[str]) -> int:
  """Token length that holds every instruction whole: its bytes plus bos and eos."""
  return max(len(t.encode("utf-8")) for t in instructions) + 2


def text_len(instructions: Sequence[str]) -> int:
  """The token length a model is built with for this instruction table (never truncating)."""
  return max(MIN_TEXT_LEN, tokens_needed(instructions))


def table_tokens(instructions: Sequence[str], length: int) -> np.ndarray:
  """int32 [len(instructions), length]: each instruction's tokens, for an id lookup.

  Raises:
    ValueError: an instruction needs more than `length` tokens (two instructions sharing a
      prefix would otherwise become the same tokens).
  """
  need = tokens_needed(instructions)
  if need > length:
    raise ValueError(f"instructions need {need} tokens > the model's max_text_len {length}")
  return encode_batch(list(instructions), length)
