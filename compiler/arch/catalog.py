"""Every architecture name llama.cpp knows, and what rfc does with a GGUF that names it.

docs/architectures.md's status table is rendered from this module and RECIPES
(tools/arch_table.py writes it; tests/unit/test_arch_catalog.py fails when the two drift), and
`rfc compile` quotes the reason when it refuses a file. The names are llama.cpp 0.3.36's
(`src/llama-arch.cpp`, the vendored copy in llama-cpp-python 0.3.36), in its order.
"""

LLAMA_CPP = "llama.cpp 0.3.36"

LLAMA_CPP_ARCHITECTURES: tuple[str, ...] = (
    "clip", "llama", "llama4", "deci", "falcon", "grok", "gpt2", "gptj", "gptneox", "mpt", "baichuan",
    "starcoder", "refact", "bert", "modern-bert", "nomic-bert", "nomic-bert-moe", "neo-bert", "jina-bert-v2",
    "jina-bert-v3", "eurobert", "bloom", "stablelm", "qwen", "qwen2", "qwen2moe", "qwen2vl", "qwen3", "qwen3moe",
    "qwen3next", "qwen3vl", "qwen3vlmoe", "qwen35", "qwen35moe", "qwen4exp", "phi2", "phi3", "phimoe", "plamo",
    "plamo2", "plamo3", "codeshell", "orion", "internlm2", "minicpm", "minicpm3", "gemma", "gemma2", "gemma3",
    "gemma3n", "gemma4", "gemma4-assistant", "gemma-embedding", "starcoder2", "mamba", "mamba2", "maple", "jamba",
    "falcon-h1", "xverse", "command-r", "cohere2", "cohere2moe", "dbrx", "olmo", "olmo2", "olmoe", "muse-glimmer",
    "openelm", "arctic", "deepseek", "deepseek2", "deepseek2-ocr", "deepseek32", "deepseek4", "chatglm", "glm4",
    "glm4moe", "glm-dsa", "bitnet", "t5", "t5encoder", "jais", "jais2", "nemotron", "nemotron_h", "nemotron_h_moe",
    "exaone", "exaone4", "exaone-moe", "rwkv6", "rwkv6qwen2", "rwkv7", "arwkv7", "granite", "granitemoe",
    "granitehybrid", "graniteswitch", "granite_swa", "chameleon", "wavtokenizer-dec", "plm", "bailingmoe",
    "bailingmoe2", "bailingmoe3", "dots1", "dots3note", "arcee", "afmoe", "laguna", "ernie4_5", "ernie4_5-moe",
    "hunyuan-moe", "hunyuan-dense", "hunyuan_vl", "hy_v3", "hy_v4", "smollm3", "gpt-oss", "lfm2", "lfm2moe", "dream",
    "smallthinker", "llada", "llada-moe", "seed_oss", "grovemoe", "apertus", "minimax-01", "hrm_text", "minimax-m2",
    "minimax-m3", "cogvlm", "rnd1", "pangu-embedded", "mistral3", "eagle3", "dflash", "mistral4", "paddleocr",
    "mimo2", "step35", "spark2_5", "llama-embed", "maincoder", "kimi-linear", "kimi-k3", "glm5-next", "talkie",
    "mellum", "nanbeige", "qwen3tts", "pockettts",
)  # fmt: skip

# Recurrent layers: per-sequence state and the ops ssm_conv, ssm_scan (Mamba2, one decay per head),
# gated_delta_net and short_conv exist; what each of these still lacks is said in its own words.
_MODALITY = "a vision, audio or speech model: rfc has no tower for it (text-only server)"
_DIFFUSION = "a diffusion language model: not decoded token by token"
_DRAFT = "a speculative-decoding head that runs beside its target model, not a model of its own"

# Why a name without a recipe is refused; a name not listed here has no recipe yet.
REFUSED: dict[str, str] = {
    **dict.fromkeys(
        (
            "clip",
            "wavtokenizer-dec",
            "qwen3tts",
            "pockettts",
        ),
        _MODALITY,
    ),  # fmt: skip
    **dict.fromkeys(("dream", "llada", "llada-moe", "rnd1"), _DIFFUSION),
    **dict.fromkeys(("eagle3", "dflash", "gemma4-assistant"), _DRAFT),
    "t5": "an encoder-decoder model: rfc runs decoder-only models",
    "chameleon": "llama.cpp 0.3.36 calls its chameleon half-implemented (test-llama-archs skips it: 'to be "
    "removed'); its graph hides the image tokens by overwriting 8192 entries of the flattened logits from token "
    "4 on, the first output row's only when a batch asks for several: no per-token reference to match",
    "gptj": "llama.cpp 0.3.36 names it and builds no model for it (its loader has no case for gptj): no reference "
    "to match",
    "deepseek4": "compressed attention (build_hca_attention: keys pooled every compress_ratio tokens, 4 with a "
    "lightning indexer's top-k or 128, kept in a per-sequence state beside a sliding window), grouped low-rank "
    "output projections and hash-routed layers; its mHC streams rfc has (glm5-next's); no recipe yet",
    "qwen4exp": 'llama.cpp 0.3.36 marks its graph as pending complete reimplementation ("do not use it as a '
    'reference"): no reference to match; low-rank hyper-connection mixing, PLE n-gram hash embeddings and '
    "query-sparse attention (build_attn_qsa) besides",
}
NO_RECIPE = "no recipe yet"


def status(name: str, recipes: dict) -> tuple[str, str]:
    """("runs", the recipe's module) or ("refused", why)."""
    if name in recipes:
        return "runs", recipes[name].__module__.rsplit(".", 1)[-1] + ".py"
    return "refused", REFUSED.get(name, NO_RECIPE)


def render_table(recipes: dict) -> str:
    """The markdown table of docs/architectures.md, one row per llama.cpp architecture."""
    runs = sum(name in recipes for name in LLAMA_CPP_ARCHITECTURES)
    lines = [
        f"{runs} of the {len(LLAMA_CPP_ARCHITECTURES)} architectures {LLAMA_CPP} knows run "
        "(rendered from `compiler/arch/catalog.py` and `RECIPES` by `tools/arch_table.py`).",
        "",
        "| architecture | rfc | recipe / why not |",
        "|---|---|---|",
    ]
    for name in LLAMA_CPP_ARCHITECTURES:
        state, detail = status(name, recipes)
        lines.append(f"| `{name}` | {state} | {'`' + detail + '`' if state == 'runs' else detail} |")
    return "\n".join(lines) + "\n"


TABLE_START, TABLE_END = "<!-- arch-table:start -->\n", "<!-- arch-table:end -->\n"


def render_into(doc: str, recipes: dict) -> str:
    """A document (docs/architectures.md) with its table, between the markers, made current."""
    head, sep, rest = doc.partition(TABLE_START)
    _, sep2, tail = rest.partition(TABLE_END)
    if not (sep and sep2):
        raise ValueError(f"the {TABLE_START.strip()} / {TABLE_END.strip()} markers are missing")
    return head + TABLE_START + render_table(recipes) + TABLE_END + tail
