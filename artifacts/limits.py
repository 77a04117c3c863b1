"""The bounds both halves share: each defined here once, imported where it is checked or used.

The compiler checks a GGUF's metadata against them (compiler/arch/), the bundle validator
checks a plan against the same numbers (artifacts/validate.py), and the runtime and the
generated kernels size what they keep by them. Two copies of one bound drift apart: a model
the compiler accepts that every load then refuses, or a kernel whose stack array is shorter
than what the validator lets through. tests/unit/test_limits.py fails when a module under
artifacts/, compiler/, runtime/ or cli/ assigns one of these names.

The values are generous for real models and stop hostile ones (block_count = 2^31) before
anything is allocated. Stdlib only: both halves import it. A bound only one side reads (a
GGUF's vocabulary size, a request field's maximum) stays where it is read.
"""

# -- a model's shape: the GGUF's metadata (compiler/arch/metadata.py) and the plan's ops ------
MAX_LAYERS = 4096  # blocks (real models: up to ~160)
MAX_HEADS = 4096  # query, kv or recurrent heads of one layer (real: up to 128)
MAX_HEAD_DIM = 4096  # values per head (real: 64 to 512)
MAX_CONTEXT = 1 << 24  # positions (16M; the longest real context, Llama 4 Scout's, is 10M)
# experts of one MoE layer (Kimi K2: 384, DeepSeek-V3: 256); the cpu router keeps one token's
# expert scores in stack arrays of the layer's count (kernels/cpu_moe.h), this many at most
MAX_EXPERTS = 1024

# -- the recurrent and AltUp ops: what their kernels keep per sequence or token ----------------
# taps of ssm_conv and short_conv (Qwen3.5, Mamba2: 4; LFM2: 3): the state tensor holds the
# last MAX_CONV_KERNEL - 1 inputs, and the cpu kernels keep that window in a stack array
MAX_CONV_KERNEL = 64
# gated_delta_net's head size S, its state S x S per head (Qwen3.5: 128): the cpu kernel keeps a
# token's normalized q and k (2 S floats) on the stack
MAX_DELTA_STATE = 1024
MAX_SSM_STATE = 1024  # ssm_scan's state size N, its state [heads, head_dim, N] (Granite 4.0-H, Nemotron-H: 128)
MAX_HC_STREAMS = 16  # hyper-connection streams (hy_v4: 4)
MAX_SINKHORN_ITERS = 64  # mHC's Sinkhorn normalizations (DeepSeek-V4, GLM5-Next: 20 and 2)
MAX_RES_STREAMS = 256  # res_mix's banked residuals + the current one (Kimi-K3: 93 layers banked every 12: 9)
MAX_ALTUP = 16  # gemma3n's AltUp streams (gemma3n: 4); the kernels keep one token's n x n coefficients in registers

# -- a step: the engine's default budget, which the compiled programs record their arena for ---
# tokens fed per step (the scheduler's max_batch_tokens, the chunked-prefill budget) and logit
# rows per step: a cpu program's arena holds this many of each, a gpu program's this many rows
STEP_TOKENS = 512
STEP_SEQS = 16  # sequences per step (the scheduler's max_batch): a cpu program's arena holds this many
