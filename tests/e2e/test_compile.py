"""rfc compile / inspect / verify, end to end through the command line."""

import json
from pathlib import Path

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader

from tests.conftest import DEMO_MODEL, FIXTURES, TINY_MODELS, rfc
from tests.e2e.test_oracle_bounds import CPU_FOR_TIME_REF_ONLY
from tests.gguf_edit import rewrite_gguf

pytestmark = pytest.mark.shared


def _metadata(path: Path) -> dict:
    r = GGUFReader(path)
    return {k: f.contents() for k, f in r.fields.items() if not k.startswith("tokenizer.ggml.")}


# Fixtures the cpu target refuses (ops it has no kernels for yet): compiled without kernels.
CPU_REFUSED: tuple[str, ...] = ()  # every fixture architecture compiles for the cpu target
NEOX_ROPE = (
    "qwen2",
    "qwen3",
    "qwen3moe",
    "phi3",
    "gemma2",
    "gemma3",
    "gpt-oss",
    "olmo2",
    "lfm2",
    "lfm2moe",
    "glm4moe",
    "qwen35",
    "qwen35moe",
    "qwen3next",
    "gemma4",
    "gemma3n",
    "exaone4",
    "seed_oss",
    "hunyuan-dense",
    "hunyuan-moe",
    "minimax-m2",
    "bailingmoe2",
    "qwen3vl",
    "qwen3vlmoe",
    # llama.cpp's LLAMA_ROPE_TYPE_NEOX (qwen35, qwen3vl: IMROPE, whose text positions turn NeoX pairs)
    "falcon-h1",
)


@pytest.mark.parametrize("name", TINY_MODELS + ["stories260K"])
def test_compile_and_inspect_shows_gguf_hparams(name, tmp_path):
    model = DEMO_MODEL if name == "stories260K" else FIXTURES / f"{name}.gguf"
    out = tmp_path / "bundle"
    reference_only = name.startswith(CPU_REFUSED) or name in CPU_FOR_TIME_REF_ONLY  # inspect reads the plan alone
    rfc("compile", model, "-o", out, "-q", *(["--reference-only"] if reference_only else []), check=True)
    info = json.loads(rfc("inspect", out, "--json", check=True).stdout)
    md = _metadata(model)
    arch = md["general.architecture"]
    hp = info["hparams"]
    assert info["architecture"] == arch
    assert hp["context_length"] == md[f"{arch}.context_length"]
    assert hp["n_embd"] == md[f"{arch}.embedding_length"]
    n_ff = md[f"{arch}.feed_forward_length"]  # per layer in nemotron_h files (0: not an MLP layer)
    assert hp["n_ff"] == (max(n_ff) if isinstance(n_ff, list) else n_ff)
    trunk = md[f"{arch}.block_count"] - md.get(f"{arch}.nextn_predict_layers", 0)  # glm4moe's MTP blocks are not run
    assert hp["n_layers"] == trunk
    assert hp["n_heads"] == md[f"{arch}.attention.head_count"]
    kv_heads = md[f"{arch}.attention.head_count_kv"]  # per layer in hybrid files (lfm2: 0 for a conv layer)
    assert hp["n_kv_heads"] == (max(kv_heads) if isinstance(kv_heads, list) else kv_heads)
    head_dim = md.get(f"{arch}.attention.key_length", hp["n_embd"] // hp["n_heads"])
    if f"{arch}.attention.key_length_swa" in md:  # gemma4: the widest layer's KV row sets the head_dim shown
        assert hp["head_dim"] in (head_dim, md[f"{arch}.attention.key_length_swa"])
        assert (hp["extra"]["key_length"], hp["extra"]["key_length_swa"]) == (
            head_dim,
            md[f"{arch}.attention.key_length_swa"],
        )
    else:
        assert hp["head_dim"] == head_dim
    assert hp["n_rot"] == md.get(f"{arch}.rope.dimension_count", head_dim)
    # llama.cpp's default base when the key is absent (Gemma 2 files have none)
    base = md.get(f"{arch}.rope.freq_base", 10000.0)
    if alpha := md.get(f"{arch}.rope.scaling.alpha", 0.0) if arch == "hunyuan-dense" else 0.0:  # XDRoPE's NTK alpha
        base = base * alpha ** (head_dim / (head_dim - 2))
    assert hp["rope_freq_base"] == pytest.approx(base, rel=1e-6)
    eps_key = f"{arch}.attention.layer_norm_rms_epsilon"  # command-r, cohere2: LayerNorms, layer_norm_epsilon
    assert hp["rms_eps"] == pytest.approx(md[eps_key] if eps_key in md else md[f"{arch}.attention.layer_norm_epsilon"])
    assert hp["rope_style"] == ("neox" if arch in NEOX_ROPE else "adjacent")
    tensors = {t.name: t for t in GGUFReader(model).tensors}
    # nor read
    tensors = {n: t for n, t in tensors.items() if not (n.startswith("blk.") and int(n.split(".")[1]) >= trunk)}
    assert hp["tied_embeddings"] == ("output.weight" not in tensors or arch == "gemma2")
    assert hp["qkv_bias"] == ("blk.0.attn_q.bias" in tensors)
    assert hp["vocab_size"] == int(tensors["token_embd.weight"].shape[1])
    if f"{arch}.expert_count" in md:
        assert hp["extra"]["expert_count"] == md[f"{arch}.expert_count"]
        assert hp["extra"]["expert_used_count"] == md[f"{arch}.expert_used_count"]
    if f"{arch}.attention.sliding_window" in md and arch.startswith("gemma"):
        assert hp["extra"]["sliding_window"] == md[f"{arch}.attention.sliding_window"]
    # gemma4's layer_output_scale scalars are read at compile time into the plan, not stored as weights
    tensors = {n: t for n, t in tensors.items() if not n.endswith(".layer_output_scale.weight")}
    if arch == "gemma3n":  # its KV-shared layers (20 on) carry K/V weights llama.cpp loads but its graph never uses
        tensors = {
            n: t
            for n, t in tensors.items()
            if not (
                n.startswith("blk.")
                and int(n.split(".")[1]) >= 20
                and n.split(".")[2] in ("attn_k", "attn_v", "attn_k_norm")
            )
        }
    assert info["parameter_count"] == sum(int(t.n_elements) for t in tensors.values())
    assert sum(info["formats"].values()) == len(tensors)
    assert info["targets"] == ([] if reference_only else ["cpu"])
    human = rfc("inspect", out, check=True).stdout
    assert info["bundle_id"] in human and f"{info['parameter_count']:,}" in human


def test_reference_only_bundle_runs_on_the_reference_device(tmp_path):
    model = FIXTURES / "tiny-mixtral-Q8_0.gguf"
    proc = rfc("compile", model, "-o", tmp_path / "x", "--reference-only", "--arch", "cpu")
    assert proc.returncode == 2 and "cannot be combined with --arch" in proc.stderr
    rfc("compile", model, "-o", tmp_path / "ref", "--reference-only", check=True)
    run = rfc("run", tmp_path / "ref", "-p", "Once upon a time", "-n", "4", "--temperature", "0", check=True)
    assert "no compiled kernels" in run.stderr and "[ref]" in run.stderr


def test_compile_is_reproducible(tmp_path):
    a, b = tmp_path / "a", tmp_path / "nested" / "b"
    for out in (a, b):
        rfc("compile", FIXTURES / "tiny-llama-Q4_K_M.gguf", "-o", out, "-q", check=True)
    files_a = sorted(p.relative_to(a).as_posix() for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b).as_posix() for p in b.rglob("*") if p.is_file())
    assert files_a == files_b and "manifest.json" in files_a
    for rel in files_a:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    manifest = (a / "manifest.json").read_text()
    assert str(tmp_path) not in manifest


def test_default_model_is_the_embedded_demo(tmp_path):
    proc = rfc("compile", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "bundles" / "stories260K" / "manifest.json").is_file()
    assert "stories260K" in proc.stderr  # the one-line summary
    # without --arch: the portable cpu, and how to build for this host instead (cli/host_targets.py)
    assert "rfc: no --arch: built for cpu (x86-64-v3" in proc.stderr


@pytest.fixture
def demo_bundle(tmp_path):
    out = tmp_path / "demo"
    rfc("compile", DEMO_MODEL, "-o", out, "-q", check=True)
    return out


def test_verify_passes_on_a_fresh_bundle(demo_bundle):
    proc = rfc("verify", demo_bundle)
    assert proc.returncode == 0 and proc.stdout.startswith("ok:")


@pytest.mark.parametrize("victim", ["weights.bin", "tokenizer.json", "plan.msgpack", "layout.msgpack"])
def test_verify_reports_one_flipped_byte(demo_bundle, victim):
    path = demo_bundle / victim
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    proc = rfc("verify", demo_bundle)
    assert proc.returncode == 1
    assert victim in proc.stderr and "Traceback" not in proc.stderr


def test_verify_detects_an_edited_manifest(demo_bundle):
    path = demo_bundle / "manifest.json"
    m = json.loads(path.read_text())
    m["model"]["name"] = "something else"
    path.write_text(json.dumps(m))
    proc = rfc("verify", demo_bundle)
    assert proc.returncode == 1 and "bundle_id" in proc.stderr


def test_reader_refuses_another_major_format_version(demo_bundle):
    path = demo_bundle / "manifest.json"
    m = json.loads(path.read_text())
    m["format_version"] = [m["format_version"][0] + 1, 0]
    path.write_text(json.dumps(m))
    for cmd in (("inspect", demo_bundle), ("run", demo_bundle, "-n", "1")):
        proc = rfc(*cmd)
        assert proc.returncode == 2, cmd
        assert "format version" in proc.stderr and "not supported" in proc.stderr


# -- bad input: exit 2, one line on stderr, nothing left behind --------------------------


def _q4_0_to_q8_1(name, data, qtype):
    # Q8_1: a tensor type ggml knows (its activations' format) that no weight format of rfc's is;
    # the rows are zeros of its size (gguf's block size for it), so the file stays well-formed
    if name == "blk.0.attn_q.weight":
        q8_1 = GGMLQuantizationType.Q8_1
        return np.zeros((data.shape[0], data.shape[1] // 18 * GGML_QUANT_SIZES[q8_1][1]), np.uint8), q8_1
    return data, qtype


def _bad_inputs(tmp: Path) -> dict[str, tuple[list, str]]:
    not_gguf = tmp / "notes.gguf"
    not_gguf.write_text("hello, this is not a model\n" * 100)
    truncated = tmp / "truncated.gguf"
    truncated.write_bytes(DEMO_MODEL.read_bytes()[: DEMO_MODEL.stat().st_size * 2 // 3])
    header_cut = tmp / "header-cut.gguf"
    header_cut.write_bytes(DEMO_MODEL.read_bytes()[:3000])
    arch = rewrite_gguf(DEMO_MODEL, tmp / "arch.gguf", metadata={"general.architecture": "deepseek4"})
    qtype = rewrite_gguf(FIXTURES / "tiny-llama-Q4_0.gguf", tmp / "qtype.gguf", tensor_fn=_q4_0_to_q8_1)
    missing = rewrite_gguf(DEMO_MODEL, tmp / "missing.gguf", drop_tensors=("blk.2.ffn_up.weight",))
    shape = rewrite_gguf(
        DEMO_MODEL,
        tmp / "shape.gguf",
        tensor_fn=lambda n, d, q: (d[:, :32].copy(), q) if n == "blk.1.attn_q.weight" else (d, q),
    )
    exists = tmp / "exists"
    exists.mkdir()
    (exists / "keep.txt").write_text("precious")
    return {
        "not a GGUF": ([not_gguf], "not a GGUF file"),
        "truncated file": ([truncated], "truncated"),
        "truncated header": ([header_cut], "truncated"),
        "unsupported architecture": ([arch], "unsupported architecture 'deepseek4'"),
        "unsupported tensor type": ([qtype], "unsupported tensor type Q8_1"),
        "missing tensor": ([missing], "missing tensor blk.2.ffn_up.weight"),
        "shape mismatch": ([shape], "shape mismatch for blk.1.attn_q.weight"),
        "output exists": ([DEMO_MODEL, "-o", exists], "exists (use --force"),
        "unknown target": ([DEMO_MODEL, "--arch", "tpu9"], "unknown target 'tpu9'"),
        "no such file": ([tmp / "absent.gguf"], "no such file"),
    }


BAD_CASES = [
    "not a GGUF", "truncated file", "truncated header", "unsupported architecture", "unsupported tensor type",
    "missing tensor", "shape mismatch", "output exists", "unknown target", "no such file",
]  # fmt: skip


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(case, tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    args, message = _bad_inputs(inputs)[case]
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    if "-o" not in args:
        args = [*args, "-o", outputs / "bundle"]
    proc = rfc("compile", *args)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert message in lines[0]
    assert "Traceback" not in proc.stderr
    assert list(outputs.iterdir()) == []  # no bundle, no temporary directory
    if case == "output exists":
        exists = inputs / "exists"
        assert [p.name for p in exists.iterdir()] == ["keep.txt"]
        assert [p.name for p in inputs.iterdir() if p.name.startswith(".")] == []


def test_force_replaces_an_existing_bundle(tmp_path):
    out = tmp_path / "b"
    rfc("compile", DEMO_MODEL, "-o", out, "-q", check=True)
    (out / "stray").write_text("x")
    rfc("compile", DEMO_MODEL, "-o", out, "-q", "--force", check=True)
    assert not (out / "stray").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["b"]


def test_quiet_compile_prints_nothing(tmp_path):
    proc = rfc("compile", DEMO_MODEL, "-o", tmp_path / "b", "-q", check=True)
    assert proc.stdout == "" and proc.stderr == ""


def test_every_subcommand_has_help():
    assert rfc("--version", check=True).stdout.strip().startswith("rfc, version")
    for cmd in ("compile", "tokenizer", "inspect", "verify", "run", "serve"):
        proc = rfc(cmd, "--help")
        assert proc.returncode == 0 and "Usage:" in proc.stdout, cmd
