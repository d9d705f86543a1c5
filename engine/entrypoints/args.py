"""`pagoda serve` settings: every flag, its environment variable and its default, in one table.

Containers are configured through the environment, so each flag `--foo-bar`
also reads `PAGODA_FOO_BAR` (the model directory reads `PAGODA_MODEL`); a
flag on the command line wins over the environment. Engine flags take their
defaults from EngineConfig, so the two can never disagree.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pagoda.engine.config import KV_CACHE_DTYPES, MAMBA_SSM_CACHE_DTYPES, QUANTIZATIONS, SCHEDULING_POLICIES, EngineConfig
from pagoda.engine.spec_decode import SpeculativeConfig
from pagoda.engine.entrypoints import harmony
from pagoda.engine.entrypoints.reply import REASONING_PARSERS
from pagoda.engine.entrypoints.tool_parsers import AUTO_PARSERS

ENV_PREFIX = "PAGODA_"
DTYPES = ("auto", "float32", "float16", "bfloat16")
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
TOOL_CALL_PARSERS = ("auto", *AUTO_PARSERS, harmony.TOOL_PARSER, "none")


@dataclass
class ServeSettings:
    engine: EngineConfig
    served_model_name: str
    host: str = "0.0.0.0"
    port: int = 8000
    api_key: str | None = None
    max_queue_len: int = 1024
    log_level: str = "info"
    # Seconds SIGTERM waits for in-flight requests before cancelling them
    # (Kubernetes' default terminationGracePeriodSeconds is 30).
    drain_timeout: float = 25.0
    # How tool_choice "auto" reads calls from the text; "auto": the format the chat template teaches.
    tool_call_parser: str = "auto"
    # Returns a reasoning model's <think> text apart from the content ("none": left in the content).
    reasoning_parser: str = "none"
    # A Jinja chat template replacing the tokenizer's (the text, read from --chat-template's file).
    chat_template: str | None = None
    # LoRA adapters served from the start, (name, directory); requests select one by its name as `model`.
    lora_modules: tuple[tuple[str, str], ...] = ()
    # Responses kept for previous_response_id and GET /v1/responses/{id} (0: none).
    responses_store_size: int = 1000
    # A node after the first of a multi-node engine: its ranks only, no HTTP server.
    headless: bool = False
    # Hosts that image URLs may name (empty: any); data: URLs are always accepted.
    allowed_media_domains: tuple[str, ...] = ()


class _BadValue(argparse.ArgumentTypeError, ValueError):
    """A flag value argparse reports with this message (not just "invalid value")."""


def _parse_lora_modules(text: str) -> tuple[tuple[str, str], ...]:
    """NAME=PATH[,NAME=PATH...] (an empty string: none)."""
    modules = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, path = item.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise _BadValue(f"expected NAME=PATH, got {item!r}")
        modules.append((name.strip(), path.strip()))
    names = [name for name, _ in modules]
    if len(set(names)) != len(names):
        raise _BadValue("LoRA adapter names must be unique")
    return tuple(modules)


def _chat_template(value: str) -> str:
    """A chat template given as a file path (the usual way) or as the template itself; its Jinja
    syntax is checked now, so a broken template stops the server at start, not each request."""
    import jinja2

    text = pathlib.Path(value).read_text() if pathlib.Path(value).is_file() else value
    try:
        jinja2.Environment().parse(text)
    except jinja2.TemplateSyntaxError as exc:
        raise _BadValue(f"--chat-template is not a valid Jinja template (line {exc.lineno}: {exc.message})") from None
    return text


def _speculative_config(text: str) -> SpeculativeConfig:
    """vLLM's --speculative-config: a JSON object such as {"method": "ngram", "num_speculative_tokens": 4}."""
    try:
        return SpeculativeConfig.parse(json.loads(text))
    except json.JSONDecodeError as exc:
        raise _BadValue(f"--speculative-config is not JSON ({exc.msg})") from None
    except ValueError as exc:
        raise _BadValue(str(exc)) from None


def _limit_mm(text: str) -> int:
    """vLLM's --limit-mm-per-prompt, '{"image": N}' (or N)."""
    try:
        value = json.loads(text)
    except ValueError:
        raise _BadValue(f'expected {{"image": N}}, got {text!r}') from None
    if isinstance(value, dict):
        if set(value) != {"image"}:
            raise _BadValue(f"only images are served: expected {{\"image\": N}}, got {text!r}")
        value = value["image"]
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise _BadValue(f"the image limit must be a whole number >= 0, got {text!r}")
    return value


def _mm_processor_kwargs(text: str) -> dict[str, Any]:
    """vLLM's --mm-processor-kwargs: a JSON object of image processor settings."""
    try:
        value = json.loads(text)
    except ValueError:
        raise _BadValue(f'expected a JSON object such as {{"max_pixels": 1003520}}, got {text!r}') from None
    if not isinstance(value, dict):
        raise _BadValue(f"expected a JSON object, got {text!r}")
    return value


def _domains(text: str) -> tuple[str, ...]:
    return tuple(d.strip().lower() for d in text.replace(",", " ").split() if d.strip())


def _parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


@dataclass(frozen=True)
class _Flag:
    name: str  # without the leading dashes
    type: Callable[[str], Any]
    help: str
    choices: tuple[str, ...] | None = None
    # Where the value goes: a ServeSettings field, or "engine.<EngineConfig field>".
    dest: str = ""
    secret: bool = False

    @property
    def target(self) -> str:
        return self.dest or self.name.replace("-", "_")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper().replace("-", "_")


_ENGINE = "engine."
_SERVE_DEFAULTS = {f.name: f.default for f in dataclasses.fields(ServeSettings) if f.default is not dataclasses.MISSING}
_ENGINE_DEFAULTS = {f.name: f.default for f in dataclasses.fields(EngineConfig) if f.default is not dataclasses.MISSING}

FLAGS: tuple[_Flag, ...] = (
    _Flag("host", str, "address to listen on"),
    _Flag("port", int, "port to listen on"),
    _Flag("served-model-name", str, "the model name clients send (default: the model directory)"),
    _Flag("api-key", str, "require this key as 'Authorization: Bearer <key>' on the API", secret=True),
    _Flag("dtype", str, "weights and activations dtype", DTYPES, _ENGINE + "dtype"),
    _Flag("max-model-len", int, "context length (default: the model's)", dest=_ENGINE + "max_model_len"),
    _Flag("max-num-seqs", int, "most sequences in a batch", dest=_ENGINE + "max_num_seqs"),
    _Flag("max-num-batched-tokens", int, "token budget of one step", dest=_ENGINE + "max_num_batched_tokens"),
    _Flag("block-size", int, "tokens per KV-cache block", dest=_ENGINE + "block_size"),
    _Flag("kv-cache-dtype", str, "auto (the model's dtype), or fp8 (fp8_e4m3) or fp8_e5m2: twice the cached tokens "
          "in the same memory", tuple(KV_CACHE_DTYPES), _ENGINE + "kv_cache_dtype"),
    _Flag("mamba-ssm-cache-dtype", str, "Mamba layers' scan states: auto (the config's mamba_ssm_cache_dtype, "
          "else the model's dtype) or a dtype", tuple(MAMBA_SSM_CACHE_DTYPES), _ENGINE + "mamba_ssm_cache_dtype"),
    _Flag("enable-prefix-caching", _parse_bool, "share KV blocks of equal prompt prefixes",
          dest=_ENGINE + "enable_prefix_caching"),
    _Flag("disable-hybrid-kv-cache-manager", _parse_bool, "keep every layer's KV blocks for the whole sequence, "
          "sliding-window layers' too (by default those give back blocks that leave their window)",
          dest=_ENGINE + "disable_hybrid_kv_cache_manager"),
    _Flag("gpu-memory-utilization", float, "fraction of GPU memory for weights and KV cache",
          dest=_ENGINE + "gpu_memory_utilization"),
    _Flag("async-scheduling", _parse_bool, "launch each step before the previous one's tokens are read back, "
          "overlapping the host's scheduling with the GPU's forward pass", dest=_ENGINE + "async_scheduling"),
    _Flag("tensor-parallel-size", int, "GPUs to shard the model over", dest=_ENGINE + "tensor_parallel_size"),
    _Flag("enable-expert-parallel", _parse_bool, "MoE layers: each tensor-parallel rank holds whole experts "
          "(E / tensor-parallel-size of them) instead of a slice of every expert", dest=_ENGINE + "enable_expert_parallel"),
    _Flag("nnodes", int, "machines the tensor-parallel ranks spread over (tensor-parallel-size / nnodes each)",
          dest=_ENGINE + "nnodes"),
    _Flag("node-rank", int, "this machine's place among the nnodes (0: the one serving HTTP)",
          dest=_ENGINE + "node_rank"),
    _Flag("master-addr", str, "address of node 0, where the nodes' ranks meet", dest=_ENGINE + "master_addr"),
    _Flag("master-port", int, "port on node 0 where the nodes' ranks meet", dest=_ENGINE + "master_port"),
    _Flag("headless", _parse_bool, "run this node's ranks of a multi-node engine without an HTTP server "
          "(every node but node 0)"),
    _Flag("scheduling-policy", str, "fcfs, or priority: requests' priority field orders waiting and preemption",
          SCHEDULING_POLICIES, _ENGINE + "scheduling_policy"),
    _Flag("quantization", str, "fp8: hold the projections in FP8 with 128x128 block scales (quantized at load "
          "from a bf16 checkpoint; FP8 checkpoints are served as FP8 either way); bitsandbytes: NF4 at load "
          "likewise; gptq, awq, compressed-tensors, bitsandbytes (or gptq_marlin, awq_marlin): check that the checkpoint is so quantized (it is served so either way)",
          QUANTIZATIONS,
          _ENGINE + "quantization"),
    _Flag("speculative-config", _speculative_config, 'speculative decoding, e.g. {"method": "ngram", '
          '"num_speculative_tokens": 4, "prompt_lookup_max": 4} (drafts from earlier text) or {"model": DIR, '
          '"num_speculative_tokens": 4} (a draft model): drafts verified in one pass',
          dest=_ENGINE + "speculative_config"),
    _Flag("generation-config", str, "default sampling parameters of requests that set none: auto (the model's "
          "generation_config.json), vllm (the engine's own), or a directory holding a generation_config.json",
          dest=_ENGINE + "generation_config"),
    _Flag("max-queue-len", int, "most requests waiting for the batch; beyond it, 503 with Retry-After"),
    _Flag("responses-store-size", int, "responses kept in memory for previous_response_id and "
          "GET /v1/responses/{id}, the least recently used going first (0: none stored)"),
    _Flag("log-level", str, "log level", LOG_LEVELS),
    _Flag("drain-timeout", float, "seconds SIGTERM waits for in-flight requests"),
    _Flag("chat-template", _chat_template, "a Jinja chat template (a file, or the template itself) replacing "
          "the tokenizer's"),
    _Flag("tool-call-parser", str, 'the tool-call format of tool_choice "auto" replies ("auto": the one the chat '
          'template teaches; "none": refuse tool_choice "auto")', TOOL_CALL_PARSERS),
    _Flag("lora-modules", _parse_lora_modules, "LoRA adapters to serve, NAME=PATH[,NAME=PATH...]; a request "
          "selects one by sending its NAME as the model (implies --enable-lora)"),
    _Flag("enable-lora", _parse_bool, "serve LoRA adapters (also loaded at run time by /v1/load_lora_adapter)",
          dest=_ENGINE + "enable_lora"),
    _Flag("max-loras", int, "most LoRA adapters in one batch", dest=_ENGINE + "max_loras"),
    _Flag("max-lora-rank", int, "largest LoRA rank served", dest=_ENGINE + "max_lora_rank"),
    _Flag("limit-mm-per-prompt", _limit_mm, 'most images one prompt may carry, {"image": N}',
          dest=_ENGINE + "limit_images_per_prompt"),
    _Flag("mm-processor-kwargs", _mm_processor_kwargs, 'settings of the model\'s image processor, e.g. '
          '{"max_pixels": 1003520} (Qwen2-VL: fewer tokens per image)', dest=_ENGINE + "mm_processor_kwargs"),
    _Flag("allowed-media-domains", _domains, "hosts that image URLs may name, comma-separated (default: any; "
          "data: URLs always)"),
    _Flag("reasoning-parser", str, "return a reasoning model's thinking as `reasoning`, apart from the content",
          ("none", *REASONING_PARSERS, harmony.REASONING_PARSER)),
)


def _default(flag: _Flag) -> Any:
    if flag.target.startswith(_ENGINE):
        return _ENGINE_DEFAULTS[flag.target[len(_ENGINE):]]
    return _SERVE_DEFAULTS.get(flag.target)


def add_serve_arguments(parser: argparse.ArgumentParser, environ: Mapping[str, str] | None = None) -> None:
    """Adds the model directory and every flag, with defaults taken from `environ` first."""
    environ = os.environ if environ is None else environ
    model = environ.get(ENV_PREFIX + "MODEL")
    parser.add_argument("model", nargs="?" if model else None, default=model,
                        help=f"a Hugging Face model directory (env {ENV_PREFIX}MODEL)")
    # A bad environment value is reported when `serve` runs, not when the parser is
    # built: other `pagoda` subcommands share the parser and must not fail on it.
    env_errors: list[str] = []
    for flag in FLAGS:
        default = _default(flag)
        if flag.env in environ:
            try:
                value = flag.type(environ[flag.env])
            except ValueError as exc:
                env_errors.append(f"{flag.env}: {exc}")
            else:
                if flag.choices and value not in flag.choices:
                    env_errors.append(f"{flag.env} must be one of {', '.join(flag.choices)}, got {value!r}")
                else:
                    default = value
        shown = "set" if flag.secret and default else default  # --help must not print a key from the env
        kwargs: dict[str, Any] = {"default": default, "dest": flag.target.replace(".", "__"),
                                  "help": f"{flag.help} (env {flag.env}; default: {shown})"}
        if flag.type is _parse_bool:
            parser.add_argument(f"--{flag.name}", action=argparse.BooleanOptionalAction, **kwargs)
        else:
            parser.add_argument(f"--{flag.name}", type=flag.type, choices=flag.choices,
                                metavar=None if flag.choices else flag.name.upper().replace("-", "_"), **kwargs)
    parser.set_defaults(env_errors=env_errors)


def settings_from_args(args: argparse.Namespace) -> ServeSettings:
    """ServeSettings from parsed flags; ValueError for a bad value (from the environment too)."""
    if args.env_errors:
        raise ValueError("; ".join(args.env_errors))
    engine_kwargs: dict[str, Any] = {}
    serve_kwargs: dict[str, Any] = {}
    for flag in FLAGS:
        value = getattr(args, flag.target.replace(".", "__"))
        if flag.target.startswith(_ENGINE):
            engine_kwargs[flag.target[len(_ENGINE):]] = value
        else:
            serve_kwargs[flag.target] = value
    model = str(args.model)
    serve_kwargs["served_model_name"] = serve_kwargs["served_model_name"] or model
    if serve_kwargs["lora_modules"]:
        engine_kwargs["enable_lora"] = True
        if serve_kwargs["served_model_name"] in dict(serve_kwargs["lora_modules"]):
            raise ValueError("a LoRA adapter cannot have the served model's name")
    if serve_kwargs["max_queue_len"] < 1:
        raise ValueError("--max-queue-len must be >= 1")
    if serve_kwargs["headless"] != (engine_kwargs["node_rank"] > 0):
        raise ValueError("--headless is for the nodes after the first (--node-rank >= 1), and they need it")
    return ServeSettings(engine=EngineConfig(model=model, **engine_kwargs), **serve_kwargs)


def settings_or_exit(args: argparse.Namespace, command: str) -> ServeSettings:
    """settings_from_args, a bad value ending the command with its message."""
    try:
        return settings_from_args(args)
    except ValueError as exc:
        raise SystemExit(f"pagoda {command}: {exc}") from None


def parse_serve_args(argv: list[str], environ: Mapping[str, str] | None = None) -> ServeSettings:
    """Settings from a command line (without `pagoda serve`); what tests and the CLI share."""
    parser = argparse.ArgumentParser(prog="pagoda serve")
    add_serve_arguments(parser, environ)
    try:
        return settings_from_args(parser.parse_args(argv))
    except ValueError as exc:
        parser.error(str(exc))
