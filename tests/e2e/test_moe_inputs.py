"""Malformed mixtures of experts: expert counts, group counts, expert widths and
expert tensors of the wrong shape are refused by `rfc compile` with one line naming what is
wrong, exit 2, before anything is allocated or written."""

import pytest

from tests.conftest import FIXTURES, assert_compile_refused
from tests.gguf_edit import rewrite_gguf

pytestmark = pytest.mark.shared

SRC = FIXTURES / "tiny-qwen3moe-Q8_0.gguf"


def _seven_experts(name, data, qtype):
    return (data[:7].copy(), qtype) if name == "blk.1.ffn_up_exps.weight" else (data, qtype)


CASES = {
    "used > count": ({"metadata": {"qwen3moe.expert_used_count": 9}}, "expert_used_count = 9 is outside [0, 8]"),
    "count 2^31": ({"metadata": {"qwen3moe.expert_count": 1 << 31}}, "qwen3moe.expert_count"),
    "groups do not divide": ({"metadata": {"qwen3moe.expert_group_count": 3}},
                             "not a multiple of expert_group_count 3"),
    "expert width 2^32-1": ({"metadata": {"qwen3moe.expert_feed_forward_length": (1 << 32) - 1}},
                            "qwen3moe.expert_feed_forward_length"),
    "seven experts of eight": ({"tensor_fn": _seven_experts}, "blk.1.ffn_up_exps.weight"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(CASES))
def test_malformed_experts_are_one_line_exit_2(case, tmp_path):
    edits, message = CASES[case]
    model = rewrite_gguf(SRC, tmp_path / "bad.gguf", **edits)
    assert_compile_refused(model, tmp_path, message)


GLM_CASES = {  # glm4moe's own keys and tensors
    "nextn layers = block_count": (
        {"metadata": {"glm4moe.nextn_predict_layers": 4}},
        "glm4moe.nextn_predict_layers = 4",
    ),
    "no selection bias": ({"drop_tensors": ("blk.1.exp_probs_b.bias",)}, "blk.1.exp_probs_b.bias"),
}


@pytest.mark.parametrize("case", sorted(GLM_CASES))
def test_malformed_glm4moe_is_one_line_exit_2(case, tmp_path):
    edits, message = GLM_CASES[case]
    model = rewrite_gguf(FIXTURES / "tiny-glm4moe-Q8_0.gguf", tmp_path / "bad.gguf", **edits)
    assert_compile_refused(model, tmp_path, message)


def test_malformed_granitemoe_is_one_line_exit_2(tmp_path):
    model = rewrite_gguf(
        FIXTURES / "tiny-granitemoe-Q8_0.gguf",
        tmp_path / "bad.gguf",
        metadata={"granitemoe.expert_shared_feed_forward_length": 1 << 31},
    )
    assert_compile_refused(model, tmp_path, "granitemoe.expert_shared_feed_forward_length")


def _three_heads(name, data, qtype):
    return (data[:3].copy(), qtype) if name == "blk.0.attn_k_b.weight" else (data, qtype)


DEEPSEEK2_CASES = {  # multi-head latent attention's sizes, and its experts
    "kv_lora_rank 2^31": ({"metadata": {"deepseek2.attention.kv_lora_rank": 1 << 31}},
                          "deepseek2.attention.kv_lora_rank"),
    "kv_lora_rank vs key_length": ({"metadata": {"deepseek2.attention.kv_lora_rank": 48}},
                                   "deepseek2.attention.key_length 96 != 80"),
    "q_lora_rank vs attn_q_a": ({"metadata": {"deepseek2.attention.q_lora_rank": 32}}, "blk.0.attn_q_a.weight"),
    "odd rope dims": ({"metadata": {"deepseek2.rope.dimension_count": 31}}, "rope.dimension_count 31 must be even"),
    "key_length_mla <= rope dims": ({"metadata": {"deepseek2.attention.key_length_mla": 32}},
                                    "deepseek2.attention.key_length_mla = 32 is outside [33,"),
    "no key_length_mla (legacy kv_b)": ({"drop_keys": ("deepseek2.attention.key_length_mla",)},
                                        "legacy unsplit attn_kv_b"),
    "groups used = groups": ({"metadata": {"deepseek2.expert_group_used_count": 4}}, "expert_group_used_count = 4"),
    "wk_b of 3 heads": ({"tensor_fn": _three_heads}, "blk.0.attn_k_b.weight"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(DEEPSEEK2_CASES))
def test_malformed_deepseek2_is_one_line_exit_2(case, tmp_path):
    edits, message = DEEPSEEK2_CASES[case]
    model = rewrite_gguf(FIXTURES / "tiny-deepseek2-Q8_0.gguf", tmp_path / "bad.gguf", **edits)
    assert_compile_refused(model, tmp_path, message)
