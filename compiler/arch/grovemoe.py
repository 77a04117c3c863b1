"""`grovemoe` (inclusionAI GroveMoE), as llama.cpp 0.3.36 builds it (src/models/grovemoe.cpp): qwen3moe's
attention (build_qkv with its biases and scales, per-head Q/K norms, NeoX RoPE over whole heads) and
experts (softmax over `expert_count`, the chosen `expert_used_count` renormalized, no weight scales), then
the adjugate experts: `expert_count` / `experts_per_group` = C chunk experts (`ffn_*_chexps`,
`expert_chunk_feed_forward_length` wide, default the head size) run on the routed experts' SUM, each token
taking min(used, C) of them chosen by the same router: the top experts of all `expert_count` scores, each
id divided by experts_per_group (llama.cpp's float scale and cast: moe_route id_div) and weighed by the
softmax score at the divided id (llama.cpp gathers the probabilities of all the experts at those ids),
renormalized. The layer: x + (experts + adjugate x `expert_group_scale`).

Refused as llama.cpp would fail on them: experts_per_group 0 or not dividing expert_count, expert groups
(`expert_group_count` > 1: the adjugate call reshapes C scores into them), a selection bias (exp_probs_b:
the loader reads none). `expert_weights_scale` is not read by llama.cpp's grovemoe loader: ignored.
"""

from rfc.compiler.arch.builder import ModelBuilder
from rfc.compiler.arch.common import Sizes, f32
from rfc.compiler.arch.metadata import MAX_FF, Metadata
from rfc.compiler.arch.moe import Experts, moe_transformer, read_experts_of
from rfc.compiler.errors import CompileError
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec


def build(model: GGUFModel) -> ModelSpec:
    adjugate: dict = {}

    def experts(md: Metadata) -> tuple[Experts, int]:
        n_ff = md.int("feed_forward_length", 0, MAX_FF, default=0)
        count, used, n_ff_exp, groups, _ = read_experts_of(md, n_ff=n_ff)
        if groups > 1:
            raise CompileError(f"{md.path}: grovemoe with expert groups ({md.key('expert_group_count')} {groups}): "
                               "llama.cpp's adjugate routing reshapes its chunk experts' scores into them and "
                               "fails")  # fmt: skip
        per = md.int("experts_per_group", 1, count)
        if count % per:
            raise CompileError(f"{md.path}: {md.key('experts_per_group')} {per} does not divide "
                               f"{md.key('expert_count')} {count}")  # fmt: skip
        head = md.int("attention.key_length", 1, MAX_FF, default=md.int("embedding_length", 1, 1 << 18) //
                      md.int("attention.head_count", 1, 4096))  # fmt: skip
        md.ignored("expert_weights_scale", "llama.cpp's grovemoe loader does not read it (the scale stays 0: none)")
        adjugate.update(per=per, chunk=count // per, used=min(used, count // per),
                        n_ff=md.int("expert_chunk_feed_forward_length", 0, MAX_FF, default=0) or head,
                        scale=f32(md.float("expert_group_scale", -1e6, 1e6)))  # fmt: skip
        return Experts(count, used, n_ff_exp), n_ff

    def after_moe(b: ModelBuilder, i: int, sizes: Sizes) -> None:
        """x += moe_out + adjugate(moe_out) x expert_group_scale, the adjugate experts routed by the same logits."""
        a, p, n = adjugate, f"blk.{i}.", sizes.n_embd
        if b.has(p + "exp_probs_b.bias"):
            raise CompileError(f"{b.path}: {p}exp_probs_b.bias: llama.cpp's grovemoe reads no selection bias")
        for name, width in (("adj_gate", a["used"] * a["n_ff"]), ("adj_up", a["used"] * a["n_ff"]),
                            ("adj_out", a["used"] * n), ("adj_sum", n), ("adj_weights", a["used"])):  # fmt: skip
            b.buffer(name, "T", width)
        b.buffer("adj_ids", "T", a["used"], dtype="i32")
        b.op("moe_route", ("router",), ("adj_ids", "adj_weights"), n_used=a["used"], id_div=a["per"])
        shape = (a["chunk"], a["n_ff"], n)
        for half in ("gate", "up"):
            w = b.tensor(f"{p}ffn_{half}_chexps.weight", f"ffn_{half}_chexps", shape)
            b.op("moe_matmul", ("moe_out", "adj_ids"), (f"adj_{half}",), (w,))
        b.op("swiglu", ("adj_gate", "adj_up"), ("adj_gate",))
        down = b.tensor(p + "ffn_down_chexps.weight", "ffn_down_chexps", (a["chunk"], n, a["n_ff"]))
        b.op("moe_matmul", ("adj_gate", "adj_ids"), ("adj_out",), (down,))
        b.op("moe_combine", ("adj_out", "adj_weights"), ("adj_sum",))
        b.op("scale", ("adj_sum",), ("adj_sum",), factor=a["scale"])
        b.op("add", ("moe_out", "adj_sum"), ("moe_out",))
        b.op("add", ("x", "moe_out"), ("x",))

    return moe_transformer(model, "grovemoe", experts, full_rotary=True, moe_args=lambda md: {"residual": None},
                           after_moe=after_moe)  # fmt: skip
