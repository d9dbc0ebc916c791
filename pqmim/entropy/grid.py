"""The logit grid the probability tables are built on (pmf.py): its constants, in a module that
imports nothing, so that the file format (pqmim.format, imported by `import pqmim`) can check a
header's grid shift without loading torch."""

STEPS_PER_NAT = 16  # grid step 1/16 nat: probabilities move by at most 3%, the rate by ~0.02%
GRID_SHIFTS = 4  # the encoder may shift the grid by 0, 1/4, 1/2 or 3/4 of a step (the header records it)
