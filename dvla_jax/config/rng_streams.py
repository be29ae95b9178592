"""Every random stream's id, in one place: a stream is `jax.random.fold_in(parent, ID)`.

The values are part of what a seed means (change one and every run with that seed draws
other numbers), so they stay fixed; a new stream takes a new number.

Run streams, folded into `jax.random.key(config.seed)`:
  INIT        parameter initialisation (the trainer's and SFT's, so both start alike)
  TRAIN       the lanes' stream (below)
  EVAL        fixed-seed evaluation: SFT and RL evaluate on the same episodes
  DEMOS       recording the scripted expert's demonstrations
  WARMSTART   the behaviour-cloning warm start's batches
  DOMAIN      the domain-randomisation draw of the env's physics

Lane streams, folded into the TRAIN stream (then into the env group and a count):
  RESET, ROLLOUT, ACT, LEARN

Reset-key streams, folded into the key of one reset:
  TASK        the rotation of tasks over the worlds of a multi-task run
"""

# Run streams. 1 was the env's stream, now unused; kept free so seeds keep their meaning.
INIT = 0
TRAIN = 2
EVAL = 3
DEMOS = 4
WARMSTART = 5
DOMAIN = 7

# Lane streams (within TRAIN).
RESET, ROLLOUT, ACT, LEARN = range(4)

# Reset-key streams.
TASK = 1
