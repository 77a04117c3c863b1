"""`rfc run`: generate from a bundle, streaming the text to stdout."""

import sys
from pathlib import Path

import click

from rfc.cli.errors import CHECK_FAILED, fail
from rfc.cli.cache_types import cache_type_options, parse_cache_types
from rfc.cli.memory import check_ctx_size, ctx_size_option, memory_options, parse_memory_options
from rfc.cli.speculative_options import draft_bundle, spec_config, spec_options
from rfc.cli.threads import apply_threads, threads_option


@click.command("run")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("-p", "--prompt", default=None, help="Prompt text (default: start from BOS alone).")
@click.option(
    "--chat",
    is_flag=True,
    help="Treat the prompt as a user message and apply the chat template; without -p, read turns from stdin.",
)
@click.option("-s", "--system", default=None, help="System message for --chat.")
@click.option("-n", "--max-tokens", default=128, show_default=True, type=click.IntRange(min=1))
@click.option("--temperature", default=0.8, show_default=True, type=float)
@click.option("--top-k", default=40, show_default=True, type=int)
@click.option("--top-p", default=0.95, show_default=True, type=float)
@click.option("--min-p", default=0.05, show_default=True, type=float)
@click.option("--repeat-penalty", default=1.0, show_default=True, type=float)
@click.option("--seed", default=None, type=int, help="Sampling seed (same seed, same prompt: same text).")
@click.option("--stop", multiple=True, help="Stop string (repeatable); not printed.")
@click.option("--ignore-eos", is_flag=True, help="Keep generating past end-of-generation tokens.")
@click.option("--device", default="auto", show_default=True, help="auto, ref, cpu, hip or cuda.")
@threads_option
@memory_options
@cache_type_options
@ctx_size_option(several_models=False)
@click.option(
    "--no-verify",
    is_flag=True,
    help="Trust the bundle: skip re-hashing its files (paths, sizes, layout and plan are still checked).",
)
@click.option(
    "--no-mmap",
    is_flag=True,
    help="Read the weights into memory instead of mapping the file (changes to the bundle's files under a "
    "running process cannot reach it).",
)
@click.option(
    "--arch",
    "targets",
    multiple=True,
    metavar="TARGET",
    help="For a GGUF: compile for this target (default: this host's GPUs and best CPU variant; repeatable).",
)
@click.option(
    "--chat-template",
    "template_file",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    default=None,
    help="For a GGUF: compile with this Jinja chat template instead of the file's own.",
)
@click.option(
    "--cache-dir",
    envvar="RFC_CACHE_DIR",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="rfc's cache (default: ~/.cache/rfc); a GGUF is compiled into DIR/bundles.",
)
@spec_options
def run_cmd(
    bundle,
    prompt,
    chat,
    system,
    max_tokens,
    temperature,
    top_k,
    top_p,
    min_p,
    repeat_penalty,
    seed,
    stop,
    ignore_eos,
    device,
    compute_threads,
    gpu_memory_utilization,
    kv_memory,
    cache_type_k,
    cache_type_v,
    ctx_size,
    no_verify,
    no_mmap,
    targets,
    template_file,
    cache_dir,
    spec_type,
    model_draft,
    spec_n_max,
):
    """Generate text from BUNDLE (a bundle directory, or a GGUF file compiled into the cache on
    first use); the generation goes to stdout, speed to stderr."""
    threads = apply_threads(compute_threads)  # before the runtime (numpy, kernels) loads
    utilization, kv_budget = parse_memory_options(gpu_memory_utilization, kv_memory)
    cache_types = parse_cache_types(cache_type_k, cache_type_v)
    from rfc.artifacts import BundleError
    from rfc.artifacts.kv_cache_type import CacheTypeError
    from rfc.cli.model_args import bundle_paths
    from rfc.runtime.engine.budget import BudgetRule, PastContext, generation_budget
    from rfc.runtime.text.chat import ChatTemplateError
    from rfc.runtime.devices import DeviceError
    from rfc.runtime.engine.engine import Engine, GenerationRequest, RequestError
    from rfc.runtime.engine.generate import generate
    from rfc.runtime.engine.kv_budget import KvBudgetError
    from rfc.runtime.engine.assemble import LoadOptions, load_model
    from rfc.runtime.engine.prompting import chat_template, encode_prompt
    from rfc.runtime.sampling.sampler import SamplingError, SamplingParams
    from rfc.runtime.engine.scheduler import SchedulerConfig

    (bundle,) = bundle_paths([bundle], targets, template_file, cache_dir)
    spec = spec_config(spec_type, spec_n_max, model_draft)
    draft = draft_bundle(model_draft, targets, cache_dir)
    check_ctx_size(ctx_size, {Path(bundle).name: bundle})
    try:
        model = load_model(
            bundle,
            LoadOptions(
                device=device,
                verify=not no_verify,
                mmap=not no_mmap,
                gpu_memory_utilization=utilization,
                kv_memory=kv_budget,
                kv_max_sequences=1,
                ctx_size=ctx_size,
                threads=threads.threads,
                cache_types=cache_types,
                draft_model=draft,
            ),
        )
    except (BundleError, DeviceError, CacheTypeError) as e:
        fail(str(e))
    except KvBudgetError as e:
        fail(str(e), CHECK_FAILED)
    click.echo(f"rfc: {model.device_choice.name}, {threads.describe()}", err=True)
    engine = Engine(model, SchedulerConfig(spec=spec))
    params = SamplingParams(
        temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, repetition_penalty=repeat_penalty, seed=seed
    )

    def one(text: str) -> str:
        ids = encode_prompt(model, text)
        # -n past the context stops at it; a prompt that fills the context is refused (RequestError)
        budget = generation_budget(
            BudgetRule(past_context=PastContext.CLAMP), max_tokens, len(ids), model.context_length
        )
        request = GenerationRequest(
            prompt_ids=ids, params=params, max_tokens=budget, stop=tuple(stop), ignore_eos=ignore_eos
        )
        state, stats = generate(engine, request, lambda t: (sys.stdout.write(t), sys.stdout.flush()))
        sys.stdout.write("\n")
        click.echo(
            f"[{model.device_choice.name}] prompt: {stats.prompt_tokens} tokens, {stats.prompt_tps:.1f} tok/s | "
            f"generation: {len(state.tokens)} tokens, {stats.generate_tps:.1f} tok/s | finish: {state.finish_reason}"
            + (
                f" | drafts accepted: {counts['spec_accepted']}/{counts['spec_drafted']}"
                if (counts := engine.counts())["spec_drafted"]
                else ""
            ),
            err=True,
        )
        return state.text

    try:
        if not chat:
            one(prompt or "")
            return
        template = chat_template(model)
        messages = [{"role": "system", "content": system}] if system else []
        turns = [prompt] if prompt is not None else _stdin_turns()
        for turn in turns:
            messages.append({"role": "user", "content": turn})
            reply = one(template.render(messages, add_generation_prompt=True))
            messages.append({"role": "assistant", "content": reply})
    except (RequestError, SamplingError, ChatTemplateError) as e:
        fail(str(e))


def _stdin_turns():
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            click.echo("> ", nl=False, err=True)
        line = sys.stdin.readline()
        if not line:
            return
        if line.strip():
            yield line.rstrip("\n")
