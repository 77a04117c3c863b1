"""Architecture recipes: one module per GGUF `general.architecture`, each mapping that
architecture's metadata keys and tensors to a plan (docs/design.md: architectures are recipes).

A recipe is a function `(GGUFModel) -> ModelSpec`. Adding an architecture means adding a
module here, registering it below and, if it needs them, new plan ops with their kernels.
"""

from collections.abc import Callable

from rfc.compiler.arch import deepseek2, gemma2, gemma3, gpt_oss, llama, phi3, qwen2, qwen3
from rfc.compiler.arch import glm4moe, qwen3moe
from rfc.compiler.arch import granite, mistral3, olmo2, smollm3
from rfc.compiler.arch import qwen35
from rfc.compiler.arch import qwen35moe, qwen3next
from rfc.compiler.arch import lfm2
from rfc.compiler.arch import gemma4
from rfc.compiler.arch import gemma3n
from rfc.compiler.arch import lfm2moe
from rfc.compiler.arch import llama4
from rfc.compiler.arch import granitehybrid, nemotron_h
from rfc.compiler.arch import nemotron_h_moe
from rfc.compiler.arch import command_r
from rfc.compiler.arch import glm4
from rfc.compiler.arch import exaone4
from rfc.compiler.arch import ernie4_5, hunyuan, seed_oss
from rfc.compiler.arch import bert, cogvlm, deepseek2_ocr, gemma_embedding, modern_bert, qwen2vl, qwen3vl
from rfc.compiler.arch import eurobert, neo_bert, t5encoder
from rfc.compiler.arch import minimax_m2
from rfc.compiler.arch import bailingmoe2
from rfc.compiler.arch import falcon_h1
from rfc.compiler.arch import apertus
from rfc.compiler.arch import (
    dots3note,
    minimax_m3,
    granite_switch,
    grovemoe,
    arcee,
    arctic,
    baichuan,
    bailingmoe,
    chatglm,
    codeshell,
    cohere2moe,
    dbrx,
    deepseek,
    dots1,
    exaone,
    falcon,
    bitnet,
    bloom,
    gemma,
    deci,
    exaone_moe,
    gpt2,
    grok,
    hrm_text,
    hy_v3,
    hy_v4,
    jais,
    mpt,
    muse_glimmer,
    nanbeige,
    openelm,
    pangu_embedded,
    phimoe,
    plamo3,
    refact,
    gptneox,
    internlm2,
    jais2,
    jamba,
    glm5_next,
    kimi_k3,
    kimi_linear,
    laguna,
    maincoder,
    mamba,
    mamba2,
    maple,
    mellum,
    mimo2,
    minicpm3,
    minimax01,
    nemotron,
    olmo,
    olmoe,
    orion,
    phi2,
    plamo,
    plamo2,
    qwen,
    qwen2moe,
    rwkv,
    smallthinker,
    spark2_5,
    stablelm,
    step35,
    starcoder,
    talkie,
    starcoder2,
    xverse,
)
from rfc.compiler.arch import catalog
from rfc.compiler.errors import CompileError
from rfc.compiler.gguf_reader import GGUFModel
from rfc.compiler.spec import ModelSpec

Recipe = Callable[[GGUFModel], ModelSpec]

RECIPES: dict[str, Recipe] = {
    "apertus": apertus.build,
    "arcee": arcee.build,
    "arctic": arctic.build,
    "baichuan": baichuan.build,
    "bailingmoe": bailingmoe.build,
    "bailingmoe2": bailingmoe2.build,
    "bailingmoe3": kimi_linear.build_bailingmoe3,
    "chatglm": chatglm.build,
    "codeshell": codeshell.build,
    "cohere2": command_r.build_cohere2,
    "command-r": command_r.build,
    "dbrx": dbrx.build,
    "deepseek": deepseek.build,
    "deepseek2": deepseek2.build,
    "dots1": dots1.build,
    "ernie4_5": ernie4_5.build,
    "ernie4_5-moe": ernie4_5.build_moe,
    "exaone": exaone.build,
    "exaone4": exaone4.build,
    "falcon": falcon.build,
    "falcon-h1": falcon_h1.build,
    "gemma": gemma.build,
    "gemma2": gemma2.build,
    "gemma3": gemma3.build,
    "gemma3n": gemma3n.build,
    "gemma4": gemma4.build,
    "glm4": glm4.build,
    "glm4moe": glm4moe.build,
    "gpt-oss": gpt_oss.build,
    "bitnet": bitnet.build,
    "bloom": bloom.build,
    "deci": deci.build,
    "exaone-moe": exaone_moe.build,
    "gpt2": gpt2.build,
    "grok": grok.build,
    "jais": jais.build,
    "mpt": mpt.build,
    "nanbeige": nanbeige.build,
    "openelm": openelm.build,
    "pangu-embedded": pangu_embedded.build,
    "spark2_5": spark2_5.build,
    "cohere2moe": cohere2moe.build,
    "glm5-next": glm5_next.build,
    "kimi-k3": kimi_k3.build,
    "kimi-linear": kimi_linear.build,
    "laguna": laguna.build,
    "hy_v3": hy_v3.build,
    "hy_v4": hy_v4.build,
    "hrm_text": hrm_text.build,
    "mamba2": mamba2.build,
    "mamba": mamba.build,
    "jamba": jamba.build,
    "muse-glimmer": muse_glimmer.build,
    "afmoe": muse_glimmer.build_afmoe,
    "phimoe": phimoe.build,
    "plamo2": plamo2.build,
    "plamo3": plamo3.build,
    "refact": refact.build,
    "gptneox": gptneox.build,
    "granite": granite.build,
    "granitehybrid": granitehybrid.build,
    "granitemoe": granite.build_moe,
    "granite_swa": granite.build_swa,
    "hunyuan-dense": hunyuan.build_dense,
    "hunyuan-moe": hunyuan.build_moe,
    "hunyuan_vl": hunyuan.build_vl,
    "internlm2": internlm2.build,
    "jais2": jais2.build,
    "lfm2": lfm2.build,
    "lfm2moe": lfm2moe.build,
    "llama": llama.build,
    "llama4": llama4.build,
    "maincoder": maincoder.build,
    "maple": maple.build,
    "mellum": mellum.build,
    "minicpm": granite.build_minicpm,
    "minicpm3": minicpm3.build,
    "minimax-01": minimax01.build,
    "grovemoe": grovemoe.build,
    "dots3note": dots3note.build,
    "graniteswitch": granite_switch.build,
    "minimax-m3": minimax_m3.build,
    "rwkv6": rwkv.build_rwkv6,
    "rwkv6qwen2": rwkv.build_rwkv6qwen2,
    "rwkv7": rwkv.build_rwkv7,
    "arwkv7": rwkv.build_arwkv7,
    "step35": step35.build,
    "plm": minicpm3.build_plm,
    "mimo2": mimo2.build,
    "minimax-m2": minimax_m2.build,
    "mistral3": mistral3.build,
    "mistral4": deepseek2.build_mistral4,
    "deepseek32": deepseek2.build_deepseek32,
    "glm-dsa": deepseek2.build_glm_dsa,
    "nemotron": nemotron.build,
    "nemotron_h": nemotron_h.build,
    "nemotron_h_moe": nemotron_h_moe.build,
    "olmo": olmo.build,
    "olmo2": olmo2.build,
    "olmoe": olmoe.build,
    "orion": orion.build,
    "phi2": phi2.build,
    "phi3": phi3.build,
    "plamo": plamo.build,
    "qwen": qwen.build,
    "qwen2": qwen2.build,
    "qwen2moe": qwen2moe.build,
    "qwen3": qwen3.build,
    "qwen35": qwen35.build,
    "qwen35moe": qwen35moe.build,
    "qwen3moe": qwen3moe.build,
    "qwen3next": qwen3next.build,
    "qwen2vl": qwen2vl.build,
    "paddleocr": qwen2vl.build_paddleocr,
    "cogvlm": cogvlm.build,
    "bert": bert.build,
    "nomic-bert": bert.build_nomic,
    "nomic-bert-moe": bert.build_nomic_moe,
    "jina-bert-v3": bert.build_jina_v3,
    "jina-bert-v2": bert.build_jina_v2,
    "modern-bert": modern_bert.build,
    "eurobert": eurobert.build,
    "neo-bert": neo_bert.build,
    "t5encoder": t5encoder.build,
    "llama-embed": llama.build_embed,
    "gemma-embedding": gemma_embedding.build,
    "deepseek2-ocr": deepseek2_ocr.build,
    "qwen3vl": qwen3vl.build,
    "qwen3vlmoe": qwen3vl.build_moe,
    "seed_oss": seed_oss.build,
    "smallthinker": smallthinker.build,
    "smollm3": smollm3.build,
    "stablelm": stablelm.build,
    "starcoder": starcoder.build,
    "starcoder2": starcoder2.build,
    "talkie": talkie.build,
    "xverse": xverse.build,
}


def recipe_for(model: GGUFModel) -> Recipe:
    arch = model.metadata.get("general.architecture")
    if arch is None:
        raise CompileError(f"{model.path.name}: no general.architecture in the metadata")
    recipe = RECIPES.get(arch) if isinstance(arch, str) else None
    if recipe is None:
        shown = arch[:40] if isinstance(arch, str) else repr(arch)[:40]
        why = (
            catalog.status(arch, RECIPES)[1]
            if arch in catalog.LLAMA_CPP_ARCHITECTURES
            else "not an architecture llama.cpp knows"
        )
        raise CompileError(
            f"{model.path.name}: unsupported architecture '{shown}': {why} "
            f"(every architecture's status: docs/architectures.md)"
        )
    return recipe
