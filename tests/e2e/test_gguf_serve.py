"""One command from a GGUF: `rfc serve model.gguf` and `rfc run model.gguf` compile into the
content-addressed bundle cache once, then reuse it; `--chat-template` attaches a template."""

import pytest
import requests

from rfc.cli.host_targets import host_targets
from tests.conftest import CHAT_TEMPLATES, FIXTURES, rfc
from tests.e2e.conftest import ServerProcess

pytestmark = [pytest.mark.shared, pytest.mark.slow]
GGUF = FIXTURES / "tiny-qwen2-Q8_0.gguf"
TEMPLATE = CHAT_TEMPLATES / "Qwen-Qwen2.5-7B-Instruct.jinja"


def _serve(cache, tmp_path, *args):
    proc = ServerProcess(GGUF, "--cache-dir", str(cache), *args, log_dir=tmp_path)
    try:
        proc.wait_ready()
        models = requests.get(proc.url + "/v1/models", timeout=10).json()["data"]
        prompt = requests.post(
            proc.url + "/apply-template", json={"messages": [{"role": "user", "content": "Hi"}]}, timeout=10
        ).json()["prompt"]
        log = proc.log()
    finally:
        proc.stop()
    return models, prompt, log


def test_serve_a_gguf_compiles_once_then_reuses_the_bundle(tmp_path):
    cache = tmp_path / "cache"
    models, prompt, log = _serve(cache, tmp_path, "--chat-template", str(TEMPLATE))
    assert [m["id"] for m in models] == ["tiny-qwen2-Q8_0"] and models[0]["capabilities"]["chat"] is True
    assert prompt.startswith("<|im_start|>system\nYou are Qwen")  # the attached template renders
    # without --arch, for this host: its GPUs and its best CPU variant, said in the first line
    assert log.startswith(f"rfc: compiling {GGUF} for {', '.join(host_targets().targets)} [this host's best: ")
    bundles = cache / "bundles"  # compiled kernels are cached beside them, in cache/kernels
    (bundle,) = [p for p in bundles.iterdir() if p.is_dir()]
    again_models, again_prompt, again_log = _serve(cache, tmp_path, "--chat-template", str(TEMPLATE))
    assert "rfc: compiling" not in again_log and again_prompt == prompt
    assert [p for p in bundles.iterdir() if p.is_dir()] == [bundle]
    run = rfc(
        "run",
        GGUF,
        "--cache-dir",
        cache,
        "--chat-template",
        TEMPLATE,
        "-p",
        "Once",
        "-n",
        "3",
        "--temperature",
        "0",
        check=True,
    )
    assert "rfc: compiling" not in run.stderr and "generation: 3 tokens" in run.stderr
    assert run.stderr.startswith(f"rfc: {GGUF} compiled for {', '.join(host_targets().targets)} [this host's best: ")
    # other compile options, another bundle: without the template the GGUF has none
    plain = rfc("run", GGUF, "--cache-dir", cache, "-p", "Once", "-n", "3", "--temperature", "0", check=True)
    assert "rfc: compiling" in plain.stderr
    assert len([p for p in bundles.iterdir() if p.is_dir()]) == 2


def test_a_file_that_is_neither_bundle_nor_gguf_is_one_line(tmp_path):
    junk = tmp_path / "model.bin"
    junk.write_bytes(b"not a model")
    proc = rfc("serve", junk, "--cache-dir", tmp_path)
    assert proc.returncode == 2 and proc.stderr.startswith("rfc: error:") and proc.stderr.count("\n") == 1


def test_models_dir_serves_every_bundle_in_it(tmp_path, demo_bundle):
    import shutil

    from rfc.runtime.engine.assemble import LoadOptions
    from rfc.runtime.server.models import KvPages, discover_bundles, plan_models

    models = tmp_path / "models"
    for name in ("a-demo", "b-demo"):
        shutil.copytree(demo_bundle, models / name)
    (models / "notes.txt").write_text("not a bundle")
    bundles = discover_bundles(models)
    assert [b.name for b in bundles] == ["a-demo", "b-demo"]
    planned = plan_models(bundles, LoadOptions(), KvPages.parse(["64"]))
    # both hold a model named stories260K: their directory names tell them apart
    assert [(m.model_id, m.load.kv_blocks) for m in planned] == [("a-demo", 32), ("b-demo", 32)]
    proc = ServerProcess(demo_bundle, "--models-dir", str(models), "--kv-pages", "96", log_dir=tmp_path)
    try:
        proc.wait_ready()
        ids = [m["id"] for m in requests.get(proc.url + "/v1/models", timeout=10).json()["data"]]
        assert ids == ["stories260K", "a-demo", "b-demo"]
        r = requests.post(
            proc.url + "/v1/completions", json={"model": "b-demo", "prompt": "Once", "max_tokens": 2}, timeout=30
        )
        assert r.status_code == 200 and r.json()["model"] == "b-demo"
    finally:
        proc.stop()
