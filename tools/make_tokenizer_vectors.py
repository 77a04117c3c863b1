"""Generate the tokenizer test vectors in tests/fixtures/tokenizer/ with llama.cpp itself.

For every vocabulary GGUF (llama.cpp's models/ggml-vocab-*.gguf; tests/data/vocab packs them) and for
every `tokenizer.ggml.pre` name llama.cpp recognizes (applied to a shared vocabulary through a
metadata override), this tokenizes a fixed, varied input set with llama.cpp's tokenizer and
writes the ids as JSON. The tests then need neither llama.cpp nor /tmp: only the vocabulary
GGUFs, and a test whose GGUF is absent skips and says which.

    python tools/make_tokenizer_vectors.py --llama-cpp /tmp/llama.cpp-build

Run it again after changing INPUTS or CASES; the fixtures it writes are committed.
"""

import argparse
import re
import json
import struct
import subprocess
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "fixtures" / "tokenizer"
SEPARATOR = "\n__ggml_vocab_test__\n"

# Inputs beyond llama.cpp's own .inp files: scripts, whitespace, digits, emoji, combining marks,
# case, code, control characters and special-token texts.
EXTRA_INPUTS = [
    "", " ", "  ", "\t", "\n\n\n", " \n \n ", "\r\n", "a\r\nb\rc\n", "  leading", "trailing  ",
    "a" + " " * 40 + "b", "tab\tsep\t\tcols", "non\u00a0breaking", "ideographic\u3000space",
    "thin\u2009space", "next\u0085line", "zero\u200bwidth", "line\u2028sep",
    "café", "cafe\u0301", "e\u0301\u0301", "Å vs \u212b vs A\u030a", "\ufb01nance", "ＡＢＣ１２３ｘｙｚ",
    "K vs \u212a", "ǅemal ǈ", "ΣΊΣΥΦΟΣ σίσυφος", "Привет, мир! Как дела?", "مرحبا بالعالم ١٢٣",
    "שלום עולם", "नमस्ते दुनिया क्षत्रिय", "สวัสดีครับ ภาษาไทย", "안녕하세요 세계", "こんにちは、世界。カタカナ",
    "你好，世界！我是中文。", "日本語と中文と한국어", "বাংলা ভাষা", "தமிழ் மொழி", "ქართული ენა", "Ελληνικά 2024",
    "1234567890", "12345678901234", "3.14159", "1,000,000.00", "-42 +7 0x1F 1e-9", "٣٤٥ ۱۲۳ ४५६",
    "½ ¾ ² ³ ① Ⅻ", "v1.2.3-rc4", "2024-01-31T12:00:00Z",
    "👍🏽 👨‍👩‍👧 🇺🇸 ❤️ 🤖", "😀😃😄", "★☆✓✗→←", "I'M YOU'LL we'd They'VE", "don’t can’t", "'s 's'll",
    "HelloWORLD camelCase XMLHttpRequest snake_case kebab-case", "ALLCAPS lowercase Titlecase",
    "def f(x):\n    return x**2  # comment\n", "if (a && b) { c++; } else { d--; }",
    "<html><body class=\"x\">Hi</body></html>", "https://example.com/a/b?q=1&r=2#frag",
    "a/b/c \\d\\e", "$100 + 5% = ~€105 ^_^ |pipe| `tick`", "...!!!???;;;", "— – - ‐ ‑",
    "\u0001\u001c\u007f", "x\u0000y", "<s>hi</s>", "<|endoftext|>after", "<|im_start|>user\nhi<|im_end|>",
    "<unk> <pad> [CLS] [SEP] [MASK]", "▁already▁escaped", "Ġspecial Ċchars",
    # whitespace beside special tokens that llama.cpp marks LSTRIP / RSTRIP by the file's names (Phi-3's, a
    # modern-bert's [MASK]): ASCII whitespace alone is dropped, a no-break or ideographic space stays
    "<|user|>\nHello world<|end|>\n<|assistant|>\n", "a </s> b\n\n</s>  \t c", "<|end|>\u00a0after <s> kept",
    "<|end|><|end|> \u3000 z", "x [MASK] y\u00a0[MASK]\t\n[MASK]z", "<|user|>\n<|end|>",
]  # fmt: skip


def _read_inp(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    return text[: -len(SEPARATOR)].split(SEPARATOR)


def inputs(models: Path) -> list[str]:
    """llama.cpp's .inp strings (each once, first-seen order), then EXTRA_INPUTS."""
    seen: dict[str, None] = {}
    for inp in sorted(models.glob("ggml-vocab-*.gguf.inp")):
        seen.update(dict.fromkeys(_read_inp(inp)))
    seen.update(dict.fromkeys(EXTRA_INPUTS))
    return list(seen)


def pre_names(vocab_cpp: Path) -> list[str]:
    """Every `tokenizer_pre == "..."` name in llama-vocab.cpp's loader, in source order."""
    names = re.findall(r'tokenizer_pre == "([^"]+)"', vocab_cpp.read_text(encoding="utf-8"))
    return list(dict.fromkeys(names))


def _c_string(literal: str) -> str:
    escapes = {"\\": "\\", '"': '"', "r": "\r", "n": "\n", "t": "\t"}
    return re.sub(r"\\(.)", lambda m: escapes[m.group(1)], literal)


def pre_types(vocab_cpp: Path) -> dict[str, dict]:
    """llama.cpp's pre-tokenizer table, read from its source: pre type -> {"regexes": [...],
    "byte_encode": bool, "names": {name: {flag: value}}}. "DEFAULT" is also the type of a
    byte-level vocabulary without `tokenizer.ggml.pre`."""
    source = vocab_cpp.read_text(encoding="utf-8")
    start, end = source.index("switch (vocab.get_pre_type())"), source.index("std::vector<std::string> regex_exprs;")
    switch = source[start:end]
    types: dict[str, dict] = {}
    labels: list[str] = []
    for block in re.split(r"\n\s*(?=case |default:)", switch)[1:]:
        label = re.match(r"case LLAMA_VOCAB_PRE_TYPE_(\w+):|default:", block)
        labels.append(label.group(1) or "DEFAULT")
        if "regex_exprs = {" not in block:
            continue
        body = block[block.index("regex_exprs = {") : block.index("};")]
        code = "\n".join(line for line in body.splitlines() if not line.strip().startswith("//"))
        regexes = [_c_string(lit) for lit in re.findall(r'"((?:[^"\\]|\\.)*)"', code)]
        for pre_type in labels:
            types[pre_type] = {"regexes": regexes, "byte_encode": "byte_encode = false" not in block, "names": {}}
        labels = []
    loader = source[source.index('} else if (tokenizer_pre == "default")') :]
    loader = loader[: loader.index("} else {")]
    for block in loader.split("} else if (")[1:]:
        names = re.findall(r'tokenizer_pre == "([^"]+)"', block)
        pre_type = re.search(r"pre_type = LLAMA_VOCAB_PRE_TYPE_(\w+);", block).group(1)
        flags = dict(re.findall(r"\b(\w+) = (true|false);", block))
        for name in names:
            types[pre_type]["names"][name] = {k: v == "true" for k, v in flags.items()}
    return types


def cases(models: Path) -> list[tuple[str, str, dict[str, str]]]:
    """(case name, vocabulary file name, metadata overrides): every vocabulary as it is, the
    Gemma 4 vocabulary under the other pre-tokenizers that tokenize raw UTF-8 with "▁" for
    spaces (no vocabulary of their own is at hand), and two under names that make llama.cpp strip
    whitespace beside special tokens."""
    found = [p.name for p in sorted(models.glob("ggml-vocab-*.gguf"))]
    result = [(name[len("ggml-vocab-") : -len(".gguf")], name, {}) for name in found]
    for pre in ("sarvam-moe", "granite-embed-multi-311m"):
        overrides = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": pre}
        result.append((f"gemma-4-as-{pre}", "ggml-vocab-gemma-4.gguf", overrides))
    # llama.cpp's loader marks special tokens LSTRIP / RSTRIP by general.name: a BPE vocabulary named as a
    # Phi-3 (its special tokens RSTRIP), a WordPiece one as a ModernBERT ([MASK] LSTRIP)
    result.append(("qwen2-as-phi3", "ggml-vocab-qwen2.gguf", {"general.name": "Phi3 test"}))
    result.append(("bert-bge-as-modern-bert", "ggml-vocab-bert-bge.gguf", {"general.name": "modern-bert-base"}))
    return result


def split(exe: Path, regexes: list[str], byte_encode: bool, texts: list[str]) -> list[list[str] | None]:
    """llama.cpp's pre-tokenizer words for each text (unicode_regex_split, called directly);
    None where llama.cpp aborts on that text."""

    def run(batch: list[str]) -> list[list[str]] | None:
        records = b"".join(struct.pack("<I", len(b)) + b for b in (t.encode("utf-8") for t in batch))
        proc = subprocess.run([str(exe), "--split", "1" if byte_encode else "0", *regexes], input=records,
                              capture_output=True, timeout=600)  # fmt: skip
        if proc.returncode != 0:
            return None
        lines = proc.stdout.decode().split("\n")
        assert lines[-1] == "" and len(lines) == len(batch) + 1
        return [[bytes.fromhex(w.rstrip("-")).decode("utf-8") for w in line.split()] for line in lines[:-1]]

    words = run(texts)
    return words if words is not None else [(run([t]) or [None])[0] for t in texts]


def _build_oracle(llama_cpp: Path, workdir: Path, build: Path | None = None) -> Path:
    exe = workdir / "llama_tokenize_batch"
    build = build or llama_cpp / "build"
    subprocess.run(
        ["g++", "-O1", "-std=c++17", f"-I{llama_cpp / 'src/include'}", f"-I{llama_cpp / 'src/src'}",
         f"-I{llama_cpp / 'src/ggml/include'}", str(ROOT / "tools" / "llama_tokenize_batch.cpp"),
         str(build / "src/libllama.a"), str(build / "ggml/src/libggml.a"), str(build / "ggml/src/libggml-cpu.a"),
         str(build / "ggml/src/libggml-base.a"), "-fopenmp", "-lpthread", "-ldl", "-o", str(exe)],
        check=True,
    )  # fmt: skip
    return exe


def tokenize(exe: Path, vocab: Path, overrides: dict[str, str], texts: list[str],
             typed: bool = False) -> list[list[int] | None] | str:  # fmt: skip
    """llama.cpp's ids per text (None where llama.cpp aborts on that text), or the loader's
    error when it refuses the vocabulary. The overrides' values are strings, or with `typed`
    already "TYPE:VALUE"."""

    def run(batch: list[str]) -> subprocess.CompletedProcess:
        records = b"".join(struct.pack("<I", len(b)) + b for b in (t.encode("utf-8") for t in batch))
        args = [f"{k}={v}" if typed else f"{k}=str:{v}" for k, v in overrides.items()]
        return subprocess.run([str(exe), str(vocab), *args], input=records, capture_output=True, timeout=600)

    def parse(proc: subprocess.CompletedProcess, n: int) -> list[list[int]]:
        lines = proc.stdout.decode().split("\n")
        assert lines[-1] == "" and len(lines) == n + 1, (vocab, overrides, len(lines))
        return [[int(i) for i in line.split()] for line in lines[:-1]]

    proc = run(texts)
    if proc.returncode == 0:
        return parse(proc, len(texts))
    if run([]).returncode != 0:  # the vocabulary itself is refused
        return proc.stderr.decode(errors="replace").strip().splitlines()[0]
    # Some text makes llama.cpp abort (an assertion): find which, one text at a time.
    results: list[list[int] | None] = []
    for text in texts:
        single = run([text])
        results.append(parse(single, 1)[0] if single.returncode == 0 else None)
    return results


# The Unigram (`t5`) vocabulary llama.cpp ships, under each setting of the two options that
# change its normalization, and inputs for what only Unigram does: the charsmap's longest match
# (composition sequences, compatibility forms, marks after a mapped letter), runs of unknown
# characters, whitespace merging, and the LSTRIP "<mask>".
UNIGRAM_VOCAB = "ggml-vocab-nomic-bert-moe.gguf"
UNIGRAM_FLAGS = ("tokenizer.ggml.add_space_prefix", "tokenizer.ggml.remove_extra_whitespaces")
UNIGRAM_INPUTS = [
    "A\u0300 a\u0301 e\u0301\u0301 \uff21\u0301 o\u0308\u0304",
    "\u1100\u1161\u11a8 \u1112\u1161",
    "\ufb01\ufb02 \u337f \u2121 \u216b",
    "\u2460\u2461 \u2474 \u2488",
    "\uff28\uff45\uff4c\uff4c\uff4f\u3000\uff57\uff4f\uff52\uff4c\uff44",
    "\ue000\ue001 \U000f0000\U000f0001x",
    "\U00020000\U0002a6d6 \U0001fae8\U0001fae9",
    "\u0000a\u0000",
    "a\u00a0\u00a0b\u2003c\u3000\u3000d",
    "\t\ta\n\nb\r\n",
    " <mask>",
    "a <mask> b",
    "\u00a0<mask>",
    "\u3000<mask>",
    "\n<mask>",
    "x<mask>y",
    "<mask><mask>",
    "<s> x </s><pad><unk>",
    "\u200b\u200c\u200d\u2060\ufeff",
    "\u0001\u0002\u001f\u007f\u0080\u009f",
    "\ufffd\ufffe\uffff",
    "\u0301leading mark",
    "\u00c5\u212b\u0041\u030a",
    "\u01c4\u01c5\u01c6 \u1e9e\u00df",
    "\u2215\u2044 \u2024\u2025\u2026",
    "\u0e01\u0e33 \u0e4d\u0e32",
    "\u0915\u094d\u0937 \u0958",
    "\u05d1\u05bc \ufb31",
    "\u0627\u0644\u0644\u0647 \ufdf2",
    "\uff76\uff9e \uff8a\uff9f \u30ab\u3099",
    "\u2070\u00b9\u00b2\u2080\u2081",
    "\u33a1\u33c8\u3398",
]


def unigram_inputs(count: int = 400, seed: int = 7) -> list[str]:
    """UNIGRAM_INPUTS, then `count` random strings drawn from the kinds of text above."""
    import random

    pools = [
        " ", "  ", "\t", "\n", "\u00a0", "\u3000", "\u2003", "<mask>", "<s>", "</s>",
        *"abcxyzAEIOUKT0123456789.,;:!?'\"-()[]{}/\\@#$%^&*_+=~`|",
        *map(chr, range(0x300, 0x370)), *map(chr, range(0xFF01, 0xFF5F)), *map(chr, range(0xFB00, 0xFB07)),
        *map(chr, range(0x2460, 0x2474)), *map(chr, range(0x1100, 0x1113)), *map(chr, range(0x1161, 0x1176)),
        *map(chr, range(0xAC00, 0xAC40)), *map(chr, range(0x4E00, 0x4E40)), *map(chr, range(0x3040, 0x30A0)),
        *map(chr, range(0x0400, 0x0450)), *map(chr, range(0x0370, 0x03D0)), *map(chr, range(0x0600, 0x0660)),
        *map(chr, range(0x0900, 0x0970)), *map(chr, range(0x0E00, 0x0E5C)), *map(chr, range(0x3300, 0x3358)),
        *map(chr, range(0x2150, 0x2190)), *map(chr, range(0xE000, 0xE010)), *map(chr, range(0x1F600, 0x1F650)),
        *map(chr, range(0x20000, 0x20010)), "\u200b", "\u200d", "\ufeff", "\u0001", "\u007f", "\ufffd",
    ]  # fmt: skip
    rng = random.Random(seed)
    return UNIGRAM_INPUTS + ["".join(rng.choice(pools) for _ in range(rng.randint(1, 40))) for _ in range(count)]


def unigram_vectors(exe: Path, models: Path) -> dict:
    texts = unigram_inputs()
    settings = []
    for prefix in (False, True):
        for merge in (False, True):
            overrides = {UNIGRAM_FLAGS[0]: prefix, UNIGRAM_FLAGS[1]: merge}
            args = {k: f"bool:{'true' if v else 'false'}" for k, v in overrides.items()}
            ids = tokenize(exe, models / UNIGRAM_VOCAB, args, texts, typed=True)
            assert not isinstance(ids, str), ids
            settings.append({"overrides": overrides, "ids": [_joined(x) for x in ids]})
    return {"vocab": UNIGRAM_VOCAB, "inputs": texts, "settings": settings, "small": _small_unigram(exe, models, texts)}


def _small_unigram(exe: Path, models: Path, texts: list[str]) -> dict:
    """llama.cpp's ids for the first 64 inputs in the bert-dense fixture with tests/unigram_vocab.py's
    512-piece `t5` vocabulary (the file tests/e2e/test_encoders.py serves)."""
    import sys

    sys.path.insert(0, str(ROOT))  # the tests package
    from tests.unigram_vocab import with_small_t5_vocab

    sys.path.insert(0, str(ROOT / "tools" / "fixtures"))
    import llama_archs

    with tempfile.TemporaryDirectory() as tmp:
        plain, small = Path(tmp) / "bert-dense.gguf", Path(tmp) / "bert-dense-t5.gguf"
        llama_archs.write_model(llama_archs.load("bert-dense"), plain, "bert-dense")
        with_small_t5_vocab(plain, small, models)
        ids = tokenize(exe, small, {}, texts[:64])
    assert not isinstance(ids, str), ids
    return {"fixture": "bert-dense", "pieces": 512, "ids": [_joined(x) for x in ids]}


def _joined(ids: list[int] | None) -> str | None:
    return None if ids is None else " ".join(map(str, ids))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llama-cpp", type=Path, default=Path("/tmp/llama.cpp-build"))
    parser.add_argument("--build", type=Path, help="llama.cpp's build folder (default: LLAMA_CPP/build)")
    parser.add_argument("--unigram-only", action="store_true", help="write unigram.json alone")
    args = parser.parse_args()
    models = args.llama_cpp / "src" / "models"
    vocab_cpp = args.llama_cpp / "src" / "src" / "llama-vocab.cpp"
    if args.unigram_only:
        with tempfile.TemporaryDirectory() as tmp:
            exe = _build_oracle(args.llama_cpp, Path(tmp), args.build)
            _write(OUT / "unigram.json", unigram_vectors(exe, models))
        return
    texts = inputs(models)
    OUT.mkdir(parents=True, exist_ok=True)
    for old in OUT.glob("*.json"):
        old.unlink()
    _write(OUT / "inputs.json", texts)
    with tempfile.TemporaryDirectory() as tmp:
        exe = _build_oracle(args.llama_cpp, Path(tmp), args.build)
        _write(OUT / "unigram.json", unigram_vectors(exe, models))
        for name, vocab_file, overrides in cases(models):
            vocab = models / vocab_file
            result = tokenize(exe, vocab, overrides, texts)
            record = {"vocab": vocab_file, "overrides": overrides}
            if isinstance(result, str):
                record["refused"] = result
            else:
                record["ids"] = [None if x is None else " ".join(map(str, x)) for x in result]
            _write(OUT / f"vocab-{name}.json", record)
            print(name, record.get("refused", len(record.get("ids", []))))
        # Pre types with the same regexes split alike: one set of words for each.
        groups: dict[str, dict] = {}
        for pre_type, spec in pre_types(vocab_cpp).items():
            key = json.dumps([spec["regexes"], spec["byte_encode"]])
            if key not in groups:
                groups[key] = {"types": [], "names": {}, "regexes": spec["regexes"], "byte_encode": spec["byte_encode"],
                               "words": split(exe, spec["regexes"], spec["byte_encode"], texts)}  # fmt: skip
            groups[key]["types"].append(pre_type)
            groups[key]["names"].update(spec["names"])
        _write(OUT / "pre-tokenizers.json", list(groups.values()))
        print(len(groups), "pre-tokenizer groups")


def _write(path: Path, value: object) -> None:
    path.write_text(json.dumps(value, ensure_ascii=False, separators=(",", ":")) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
