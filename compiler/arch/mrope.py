"""M-RoPE's sections (`rope.dimension_sections`) for the text stacks of the vision-language models
(qwen2vl, paddleocr, hunyuan_vl, glm4 and glm4moe's GLM-4V text stacks, qwen3vl, qwen35, bailingmoe3),
read and checked in one place.

llama.cpp reads the key with get_key_or_arr(…, 4): a scalar stands for 4 equal counts, an array must
have exactly 4 (its loader throws on any other length). The counts are rotary pairs of each head
given to the token's temporal (t), height (h), width (w) and extra (e) positions; ggml's
ggml_mrope_cache_init walks the pairs and gives pair p the position of its sector p % sum:

- M-RoPE (qwen2vl, paddleocr, GLM-4V, HunyuanVL): sectors in order, t then h then w then e;
- interleaved M-RoPE (IMROPE: qwen3vl, qwen35): sector s is t, h or w as s % 3 is 0, 1 or 2
  while s < 3 × that section's count, else e.

Either pairs the dims as NeoX RoPE does (half a head apart). For a text token llama.cpp sets the t, h
and w positions to the token's position and e to 0, so a text token turns every t/h/w pair exactly
as NeoX RoPE at the same frequencies, and leaves the pairs of e unturned (angle 0, times the rope's
magnitude). The recipes plan NeoX RoPE with those pairs' frequencies stopped (Rope.unturned,
common.rope_weights). Qwen3-VL's own sections, [24, 20, 20, 0] over 64 pairs, leave pairs 61 and 62 to
e in llama.cpp (Hugging Face's model turns them by t, at about 4e-7 rad per position: a difference
below what the logits show); rfc computes what llama.cpp computes. Refused: the files llama.cpp itself
cannot run, with no t/h/w count at all (ggml asserts one and divides by the sum) or counts that add up
to more than the head (ggml_mrope_cache_init asserts it).
"""

import numbers
from collections.abc import Callable
from dataclasses import replace

from rfc.compiler.arch.common import Rope, Sizes
from rfc.compiler.arch.metadata import MAX_HEAD_DIM, Metadata
from rfc.compiler.errors import CompileError

KEY = "rope.dimension_sections"
N_SECTIONS = 4

Sections = tuple[int, int, int, int]


def read(md: Metadata, *, required: bool) -> Sections:
    """The four counts; (0, 0, 0, 0) for an optional key the file does not have."""
    if not required and not md.has(KEY):
        return (0, 0, 0, 0)
    value = md.raw(KEY)
    if not isinstance(value, (list, tuple)):
        return (md.int(KEY, 0, MAX_HEAD_DIM),) * N_SECTIONS
    if len(value) != N_SECTIONS or not all(
        isinstance(v, numbers.Integral) and not isinstance(v, bool) and 0 <= v <= MAX_HEAD_DIM for v in value
    ):
        raise CompileError(f"{md.path}: metadata {md.key(KEY)} is not {N_SECTIONS} counts in [0, {MAX_HEAD_DIM}] "
                           "(llama.cpp reads exactly 4)")  # fmt: skip
    return tuple(int(v) for v in value)  # type: ignore[return-value]


def used(sections: Sections) -> bool:
    """llama_hparams::use_mrope(): the families whose rope type depends on the file (glm4, glm4moe,
    hunyuan_vl, bailingmoe3) take M-RoPE when the t and h counts are both set."""
    return sections[0] > 0 and sections[1] > 0


def text_sector(sections: Sections, pair: int, *, interleaved: bool) -> bool:
    """Whether rotary pair `pair` turns by one of the t/h/w positions (a text token's position)."""
    t, h, w, _ = sections
    sector = pair % sum(sections)
    if interleaved:
        return any(sector % 3 == j and sector < 3 * n for j, n in enumerate((t, h, w)))
    return sector < t + h + w


def text_rope(md: Metadata, sections: Sections, rope: Rope, head_dim: int, *, interleaved: bool) -> Rope:
    """A text token's RoPE under these sections: NeoX RoPE over rope.n_rot dims with the pairs of the
    extra section unturned (Rope.unturned); refuses the sections llama.cpp cannot run."""
    shown = list(sections)
    if sum(sections[:3]) == 0:
        raise CompileError(f"{md.path}: {md.key(KEY)} {shown} has no temporal, height or width count "
                           "(ggml asserts one)")  # fmt: skip
    if sum(sections) > head_dim:
        raise CompileError(f"{md.path}: {md.key(KEY)} {shown} add up to more than the head size {head_dim} "
                           "(ggml_mrope_cache_init asserts it)")  # fmt: skip
    if rope.style != "neox":
        raise ValueError("M-RoPE pairs dims as NeoX RoPE does")  # a recipe bug
    unturned = tuple(p for p in range(rope.n_rot // 2) if not text_sector(sections, p, interleaved=interleaved))
    return replace(rope, unturned=unturned)


def rope_hook(*, required: bool, interleaved: bool, when_used: bool = False) -> Callable[[Metadata, Sizes, Rope], Rope]:
    """A recipe's RoPE hook (`rope=` of prenorm.build, llama_like, moe_transformer): the file's RoPE as a
    text token turns under the file's sections; with `when_used`, only where use_mrope() holds (a family
    whose rope type depends on the file: glm4moe, hunyuan_vl), the file's RoPE unchanged otherwise."""

    def hook(md: Metadata, sizes: Sizes, rope: Rope) -> Rope:
        sections = read(md, required=required)
        if when_used and not used(sections):
            return rope
        return text_rope(md, sections, rope, sizes.head_dim, interleaved=interleaved)

    return hook
