"""`minimax-m3` (MiniMax-M3), as llama.cpp 0.3.36 builds it (src/models/minimax-m3.cpp): GQA attention with
build_qkv's biases and scales, per-head Q/K RMS norms, NeoX RoPE over the first `rope.dimension_count` of each head,
scores x 1/sqrt(head_dim), `attn_output` with its scale; `leading_dense_block_count` dense layers, then routed
experts (the gating function required, the selection bias `exp_probs_b` required, `expert_weights_norm` and
`_scale` where set) plus `expert_shared_count` shared experts, every FFN gpt-oss's clamped SwiGLU (swiglu_oai,
alpha 1.702, limit 7) and none of them scaled (the graph passes no FFN `.scale`); `output.weight` (required) with
its scale.

MiniMax Sparse Attention on the expert layers: per query, the `attention.indexer.top_k` key blocks of
`attention.indexer.block_size` positions an indexer scores best (plus local blocks). While a sequence holds at most
top_k x block_size tokens every block is chosen (llama.cpp takes min(top_k, blocks)) and the attention is the dense
one exactly: the served context is capped there (`rfc inspect` shows the file's as context_length_of_file) and the
indexer's tensors are left unused, as deepseek32's DSA.
"""

from dataclasses import replace

from rfc.compiler.arch.builder import ModelBuilder
from rfc.compiler.arch.metadata import MAX_CONTEXT, MAX_HEADS, Metadata
from rfc.compiler.arch.moe import Experts, experts_after_dense, moe_transformer
from rfc.compiler.errors import CompileError
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec

ARCH = "minimax-m3"
INDEXER_TENSORS = ("indexer.q_proj.weight", "indexer.k_proj.weight", "indexer.q_norm.weight", "indexer.k_norm.weight")
OAI = {"activation": "swiglu_oai"}  # llama.cpp's LLM_FFN_SWIGLU_OAI_MOE: gpt-oss's constants, swiglu's defaults


def build(model: GGUFModel) -> ModelSpec:
    budget: dict = {}

    def experts(md: Metadata) -> tuple[Experts, int]:
        e, n_ff = experts_after_dense(md, md.int("block_count", 1, 1 << 16), dense_required=False)
        kv = md.int("attention.head_count_kv", 1, MAX_HEADS)
        if md.int("attention.indexer.head_count", 1, MAX_HEADS) != kv:
            raise CompileError(f"{md.path}: {md.key('attention.indexer.head_count')} is not head_count_kv {kv} "
                               "(llama.cpp's sparse attention asserts one indexer head per KV head)")  # fmt: skip
        md.int("attention.indexer.key_length", 1, 1 << 16)
        md.int("attention.indexer.local_blocks", 0, MAX_CONTEXT)
        blocks = md.int("attention.indexer.top_k", 1, MAX_CONTEXT) * md.int("attention.indexer.block_size", 1, 1 << 16)
        budget.update(tokens=blocks, n_ctx=md.int("context_length", 1, MAX_CONTEXT))
        return e, n_ff

    def unused(b: ModelBuilder, n_layers: int) -> None:
        why = "MiniMax Sparse Attention's indexer: every key block is chosen within the served context"
        for i in range(n_layers):
            for name in INDEXER_TENSORS:
                b.unused(f"blk.{i}.{name}", why)
            if not b.has(f"blk.{i}.ffn_gate_inp.weight"):
                continue
            if not b.has(f"blk.{i}.exp_probs_b.bias"):
                raise CompileError(
                    f"{b.path}: blk.{i}.exp_probs_b.bias is missing (llama.cpp's minimax-m3 requires it)"
                )

    spec = moe_transformer(model, ARCH, experts, output_required=True, unused=unused,
                           moe_args=lambda md: {**OAI, "shared_glu": OAI}, dense_activation="swiglu_oai")  # fmt: skip
    cap = min(budget["n_ctx"], budget["tokens"], MAX_CONTEXT)
    extra = {
        **spec.hparams.extra,
        "sparse_attention_tokens": budget["tokens"],
        "context_length_of_file": budget["n_ctx"],
    }
    return replace(spec, hparams=replace(spec.hparams, context_length=cap, extra=extra),
                   plan=replace(spec.plan, context_length=cap))  # fmt: skip
