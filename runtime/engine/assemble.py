"""Assembles a loaded model for execution: the bundle verified and mapped with its tokenizer
(runtime/model/loader.py), a device picked, the KV pool sized, the executor on top."""

import sys
from dataclasses import dataclass, replace
from pathlib import Path

from tokenizers import Tokenizer

from rfc.artifacts import BundleError
from rfc.artifacts.bundle import Bundle, open_bundle
from rfc.artifacts.kv_cache_type import KvCacheTypes
from rfc.artifacts.plan import Plan
from rfc.runtime.core.device import Device
from rfc.runtime.devices import DeviceChoice, choose_device, create_device
from rfc.runtime.engine.executor import Executor
from rfc.runtime.engine.kv_budget import (
    DEFAULT_GPU_MEMORY_UTILIZATION,
    HOST_CONTEXTS,
    KvShare,
    KvSizing,
    budget_blocks,
    token_bytes,
)
from rfc.runtime.engine.kv_cache import KvPool
from rfc.runtime.model.loader import load_tokenizer, served_context_length


@dataclass(frozen=True)
class LoadOptions:
    device: str = "auto"
    verify: bool = True
    block_size: int = 16
    kv_blocks: int | None = None  # default: from the memory budget (kv_budget.py)
    gpu_memory_utilization: float = DEFAULT_GPU_MEMORY_UTILIZATION  # GPU: fraction of device memory the server may use
    kv_memory: float | int | None = None  # host: KV bytes, or a fraction of host memory (None: the default fraction)
    kv_max_sequences: int = HOST_CONTEXTS  # GPU: the pool holds at most this many full contexts
    kv_share: KvShare = KvShare()  # this model's part of the budget when a server has several
    prefix_caching: bool = True  # reuse the KV blocks of a prefix computed before
    ctx_size: int | None = None  # serve at most this many tokens per sequence (None: the model's own context)
    mmap: bool = True  # False: weights read into private memory (a file changed under the server cannot reach it)
    draft_model: Path | None = None  # speculative decoding: a bundle with the same vocabulary, loaded beside it
    threads: int | None = None  # cpu: compute threads of the step program (None: the cores in the affinity mask)
    cache_types: KvCacheTypes = KvCacheTypes()  # how K and V are cached (--cache-type-k/-v): f16, q8_0, q4_0


@dataclass
class LoadedModel:
    bundle: Bundle
    tokenizer: Tokenizer
    device_choice: DeviceChoice
    device: Device
    kv_pool: KvPool  # the device's KV pool; its engine decides which sequence holds which block
    executor: Executor
    context_length: int  # the served limit on prompt + generated tokens: --ctx-size, at most the trained context
    draft: "LoadedModel | None" = None  # the draft model of speculative decoding (same device, its own KV pool)

    @property
    def manifest(self) -> dict:
        return self.bundle.manifest

    @property
    def generates(self) -> bool:
        """False for an encoder (bert): embeddings only, every generation refused."""
        return self.bundle.plan.generates

    @property
    def ranks(self) -> bool:
        """A reranker: its plan has a classifier's scores (runtime/server/rerank.py)."""
        return bool(self.bundle.plan.output_scores)

    @property
    def whole_inputs(self) -> bool:
        """An encoder's attention sees the tokens after its own: an input runs in one step."""
        return not self.bundle.plan.causal

    @property
    def kv_bytes_per_token(self) -> int:
        """Bytes one cached token takes in this model's pool: K and V of every layer, stored in
        its cache types (--cache-type-k/-v)."""
        return token_bytes(self.device_choice.name, self.bundle.plan.kv, self.kv_pool.cache_types)

    @property
    def trained_context_length(self) -> int:
        """The context the model was trained for (the GGUF's metadata), whatever is served."""
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


def _budget_blocks(bundle: Bundle, choice: DeviceChoice, options: LoadOptions, context_length: int) -> int:
    plan = bundle.plan
    sizing = KvSizing(
        choice.name,
        plan.kv,
        options.block_size,
        context_length,
        options.gpu_memory_utilization,
        options.kv_memory,
        options.kv_max_sequences,
        options.kv_share,
        options.cache_types,
    )
    slots = state_slots(plan, options) + checkpoint_slots(plan, options)
    sizing = replace(sizing, state_bytes=slots * plan.state.slot_bytes)
    if choice.name.is_gpu:
        from rfc.runtime.devices import gpu_memory_info, gpu_resident_bytes

        blocks, _ = budget_blocks(sizing, lambda: gpu_memory_info(choice), gpu_resident_bytes(bundle, choice.target))
    else:
        blocks, _ = budget_blocks(sizing)
    return blocks


def state_slots(plan: Plan, options: LoadOptions) -> int:
    """Recurrent-state slots of a plan with state (hybrid models), 0 without: one per sequence
    that may hold KV at once, as many as the pool's `kv_max_sequences` (a server's --max-batch).
    The scheduler admits a sequence only when one is free (runtime/engine/kv_cache.py)."""
    return max(1, options.kv_max_sequences) if plan.state.tensors else 0


def checkpoint_slots(plan: Plan, options: LoadOptions) -> int:
    """Further state slots for prefix caching's checkpoints (runtime/engine/state_cache.py):
    as many as sequences, from the same budget; 0 without state or prefix caching."""
    return state_slots(plan, options) if options.prefix_caching else 0


def load_model(path: Path, options: LoadOptions = LoadOptions()) -> LoadedModel:
    if not options.verify:
        print(
            f"rfc: warning: --no-verify: trusting {path} without re-hashing its files "
            "(paths, sizes, layout and plan are still checked)",
            file=sys.stderr,
        )
    # the draft first: a GPU target's KV budget then counts the draft's memory as taken
    draft = (
        load_model(options.draft_model, replace(options, draft_model=None, kv_blocks=None))
        if options.draft_model
        else None
    )
    bundle = open_bundle(Path(path), verify=options.verify, mmap_weights=options.mmap)
    tokenizer = load_tokenizer(bundle)
    if draft is not None:
        check_draft_vocabulary(bundle.plan.vocab_size, tokenizer, draft)
    plan = bundle.plan
    choice = choose_device(bundle, options.device)
    context_length = served_context_length(plan.context_length, options.ctx_size)
    # before sizing: a head_dim that is not whole blocks refuses the types
    options.cache_types.check(plan.kv, plan.kv_geometries())
    num_blocks = options.kv_blocks or _budget_blocks(bundle, choice, options, context_length)
    device = create_device(
        choice, bundle, plan.kv, num_blocks, options.block_size, context_length, options.threads, options.cache_types
    )
    slots, checkpoints = state_slots(plan, options), checkpoint_slots(plan, options)
    if slots:
        device.alloc_state(slots + checkpoints)
    return LoadedModel(
        bundle=bundle,
        tokenizer=tokenizer,
        device_choice=choice,
        device=device,
        kv_pool=KvPool(
            num_blocks,
            options.block_size,
            options.prefix_caching,
            options.cache_types,
            state_slots=slots,
            checkpoint_slots=checkpoints,
        ),
        executor=Executor(plan, device),
        context_length=context_length,
        draft=draft,
    )


def check_draft_vocabulary(vocab_size: int, tokenizer: Tokenizer, draft: LoadedModel) -> None:
    """BundleError unless the draft model has the target's vocabulary, token for token (its
    tokens are proposed to the target by id)."""
    name = draft.manifest["model"].get("name") or draft.bundle.root.name
    if draft.vocab_size != vocab_size:
        raise BundleError(
            f"the draft model {name} has {draft.vocab_size} tokens, the target {vocab_size}: "
            "speculative decoding needs the same vocabulary"
        )
    if draft.tokenizer.get_vocab(with_added_tokens=True) != tokenizer.get_vocab(with_added_tokens=True):
        raise BundleError(
            f"the draft model {name} has another vocabulary than the target (same size, other tokens): "
            "speculative decoding needs the same vocabulary"
        )
