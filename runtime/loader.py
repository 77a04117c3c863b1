"""Loads a bundle for execution: verify, map weights, pick a device, set up the KV pool."""

import sys
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer

from rfc.artifacts.bundle import TOKENIZER_FILE, Bundle, open_bundle
from rfc.runtime.devices import DeviceChoice, choose_device, create_device
from rfc.runtime.executor import Executor
from rfc.runtime.kv_cache import BlockManager


@dataclass(frozen=True)
class LoadOptions:
    device: str = "auto"
    verify: bool = True
    block_size: int = 16
    kv_blocks: int | None = None  # default: room for 4 full contexts
    prefix_caching: bool = True  # reuse the KV blocks of a prefix computed before


@dataclass
class LoadedModel:
    bundle: Bundle
    tokenizer: Tokenizer
    device_choice: DeviceChoice
    device: object
    blocks: BlockManager
    executor: Executor

    @property
    def manifest(self) -> dict:
        return self.bundle.manifest

    @property
    def context_length(self) -> int:
        return self.bundle.plan.context_length

    @property
    def vocab_size(self) -> int:
        return self.bundle.plan.vocab_size

    @property
    def tokenizer_info(self) -> dict:
        return self.bundle.manifest["tokenizer"]

    def chat_template_source(self) -> str | None:
        rel = self.bundle.manifest.get("chat_template")
        return self.bundle.read_text(rel) if rel else None


def load_model(path: Path, options: LoadOptions = LoadOptions()) -> LoadedModel:
    if not options.verify:
        print(f"rfc: warning: --no-verify: trusting {path} without re-hashing its files "
              "(paths, sizes, layout and plan are still checked)", file=sys.stderr)
    bundle = open_bundle(Path(path), verify=options.verify)
    plan = bundle.plan
    per_context = -(-plan.context_length // options.block_size)
    num_blocks = options.kv_blocks or 4 * per_context
    choice = choose_device(bundle, options.device)
    device = create_device(choice, bundle, plan.kv, num_blocks, options.block_size)
    tokenizer = Tokenizer.from_file(str(bundle.file(TOKENIZER_FILE)))
    return LoadedModel(
        bundle=bundle,
        tokenizer=tokenizer,
        device_choice=choice,
        device=device,
        blocks=BlockManager(num_blocks, options.block_size, options.prefix_caching),
        executor=Executor(plan, device),
    )
