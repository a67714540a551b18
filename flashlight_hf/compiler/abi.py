"""The contract between generated kernels and the code that launches them.

Codegen writes these names into the Triton source; runtime passes arguments and constexprs by
the same names. Both import them from here so that a rename cannot leave one side behind.
"""

# Tile sizes: compile-time constants of every generated kernel.
BLOCK_M = "BLOCK_M"  # query rows per program
BLOCK_N = "BLOCK_N"  # keys per inner-loop step
NUM_SPLITS = "NUM_SPLITS"  # shares of the key axis in the split-KV kernels

# The kernels one plan yields.
KERNEL_SINGLE = "flashlight_fwd"  # one program per row tile, the whole key loop
KERNEL_SPLIT = "flashlight_fwd_split"  # a share of the keys per program, partials stored
KERNEL_COMBINE = "flashlight_fwd_combine"  # merges the partials, then the epilogue
KERNEL_SPLIT_FUSED = "flashlight_fwd_split_fused"  # split + combine in one launch
KERNEL_TRAIN = "flashlight_fwd_train"  # training mode: the single launch + per-row log-sum-exps
KERNEL_BWD_DKDV = "flashlight_bwd_dkdv"  # the backward: a program per key tile, loops over query tiles
KERNEL_BWD_DQ = "flashlight_bwd_dq"
KERNEL_BLOCK_TABLE = "flashlight_block_table"  # before a launch: per tile the tiles data-dependent masks keep  # the backward: a program per row tile, loops over key tiles

# A call with at most this many query rows is a decode step: it gets the decode tile
# configurations and the choice of a split-KV launch. The front door uses the same bound to
# decide when a mask is a decode mask.
DECODE_MAX_ROWS = 16
