"""Builds a model from a Hugging Face directory: config -> module -> safetensors weights.

Weights stream tensor by tensor from (possibly sharded) safetensors files,
each parameter's `weight_loader` reading only the part its rank owns.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import nn

from pagoda.engine.config import CHECKPOINT_QUANTIZATIONS, ONLINE_QUANTIZATIONS
from pagoda.engine.layers.fp8 import ONLINE_BLOCK
from pagoda.engine.layers.int_quant import IntQuantConfig
from pagoda.engine.layers.attention import Attention
from pagoda.engine.layers.weights import default_weight_loader, read_full
from pagoda.engine.model_config import ModelConfig
from pagoda.engine.models.fp8_formats import Fp8Config
from pagoda.engine.models.bnb_format import BitsAndBytesFormat
from pagoda.engine.models.mxfp4 import Mxfp4Format
from pagoda.engine.models.quant_formats import CheckpointFormat
from pagoda.engine.models.registry import model_class

IntCheckpointFormat = CheckpointFormat | BitsAndBytesFormat | Mxfp4Format
_CODEBOOK_FORMATS = {"bitsandbytes": BitsAndBytesFormat, "mxfp4": Mxfp4Format}


def int_checkpoint_format(config: IntQuantConfig) -> IntCheckpointFormat:
    """The reader of an integer-quantized checkpoint's tensors."""
    return _CODEBOOK_FORMATS.get(config.method, CheckpointFormat)(config)


# Tensors some checkpoints carry that are recomputed here, never loaded.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq", "embeddings.position_ids")


def checkpoint_files(path: Path) -> list[Path]:
    """The safetensors files of a model directory, sharded (via the index) or single."""
    index = path / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        return [path / name for name in sorted(set(weight_map.values()))]
    single = path / "model.safetensors"
    if single.exists():
        return [single]
    found = sorted(path.glob("*.safetensors"))
    if not found:
        raise ValueError(f"no safetensors weights in {path} (only safetensors checkpoints are supported)")
    return found


def iter_checkpoint(path: Path) -> Iterator[tuple[str, Any]]:
    """(name, lazy slice) for every tensor; slices read from disk only when indexed."""
    for file in checkpoint_files(path):
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():
                yield name, f.get_slice(name)


def _with_prefix(model: nn.Module, name: str) -> str:
    """A checkpoint name as our modules spell it (decoder-only checkpoints lack the `model.` prefix)."""
    prefix = getattr(model, "checkpoint_prefix", "")
    return name if name.startswith(prefix) else prefix + name


def _module_of(model: nn.Module, name: str) -> nn.Module | None:
    """Our module that holds a checkpoint tensor (None when there is none)."""
    target, _ = model.checkpoint_target(_with_prefix(model, name))
    try:
        return model.get_submodule(target.rpartition(".")[0])
    except AttributeError:
        return None


def _projection(model: nn.Module, ours: str, name: str, capability: str, what: str) -> nn.Module:
    """Our module holding quantized checkpoint tensor `name` (`ours` as we spell it); ValueError
    unless it can hold `what` weights (has `capability`)."""
    module = _module_of(model, ours)
    if not hasattr(module, capability):
        raise ValueError(f"checkpoint tensor {name!r}: {what} weights are served for attention, MLP and expert "
                         "projections only (not for embeddings or heads)")
    return module


def use_int_weights(model: nn.Module, path: Path, fmt: IntCheckpointFormat) -> None:
    """Makes every projection the checkpoint stores as packed integers hold them (checkpoints keep
    some layers, e.g. the LM head, at full precision), with scales in the dtype the format gives."""
    ignored = getattr(model, "ignored_checkpoint_prefixes", ())
    fmt.prepare(checkpoint_files(path))
    for name, scale_dtype in fmt.quantized_modules().items():
        if name.startswith(ignored):
            continue
        module = _projection(model, fmt.canonical(name, None)[0], name, "use_int_quant", fmt.config.method)
        if module.int_quant is None:
            module.use_int_quant(fmt.config, scale_dtype)


def use_fp8_weights(model: nn.Module, path: Path, config: Fp8Config) -> None:
    """Makes FP8 every projection the checkpoint stores in FP8: those with scales beside them
    (checkpoints keep some layers, e.g. the LM head, at full precision)."""
    ignored = getattr(model, "ignored_checkpoint_prefixes", ())
    for file in checkpoint_files(path):
        with safe_open(str(file), framework="pt") as f:
            names = list(f.keys())
        for name in names:
            if not name.endswith("." + config.scale_name) or name.startswith(ignored):
                continue
            module = _projection(model, config.canonical(name, None)[0], name, "use_fp8", "FP8")
            if module.fp8_block is None:
                module.use_fp8(config.block)


# Where quantization tools write an FP8 KV cache's per-layer scales (under a layer's attention
# module), and which of K and V each sets: llm-compressor's k_scale and v_scale, AutoFP8's one
# kv_scale for both.
_KV_SCALES = {"k_scale": "k", "v_scale": "v", "kv_scale": "kv"}


def _set_kv_cache_scale(model: nn.Module, name: str, src: Any) -> bool:
    """Hands a checkpoint's KV-cache scale to its layer's Attention (False: `name` is not one)."""
    leaf = next((leaf for leaf in _KV_SCALES if name.endswith("." + leaf)), None)
    if leaf is None:
        return False
    value = read_full(src)
    if value.numel() != 1:
        raise ValueError(f"checkpoint tensor {name!r}: KV-cache scales per head or channel are not supported "
                         "(supported: one scale per layer)")
    attention_path = _with_prefix(model, name[: -len(leaf) - 1])
    fused = model.checkpoint_target(attention_path + ".q_proj.weight")[0]  # our path to the same module
    attention = next(m for m in model.get_submodule(fused.rsplit(".", 2)[0]).modules() if isinstance(m, Attention))
    for which in _KV_SCALES[leaf]:
        setattr(attention, f"{which}_scale", float(value))
    return True


def load_weights(model: nn.Module, path: Path, fmt: IntCheckpointFormat | Fp8Config | None = None) -> None:
    """Places every checkpoint tensor (read through `fmt` for a quantized checkpoint)."""
    params = dict(model.named_parameters(remove_duplicate=False))
    generates = getattr(model, "generates", True)
    tied = bool(getattr(model.config, "tie_word_embeddings", False)) and generates
    loaded: set[str] = set()
    ignored = getattr(model, "ignored_checkpoint_prefixes", ())
    for name, src in iter_checkpoint(path):
        if name.startswith(ignored):  # parts of the checkpoint this model does not serve (a vision tower)
            continue
        if _set_kv_cache_scale(model, name, src):
            continue
        if fmt is not None:
            converted = fmt.canonical(name, src)
            if converted is None:
                continue
            name, src = converted
        name = _with_prefix(model, name)
        if name.endswith(_IGNORED_SUFFIXES) or (tied and name.startswith("lm_head.")):
            continue
        target, shard = model.checkpoint_target(name)
        param = params.get(target)
        if param is None and isinstance(fmt, CheckpointFormat) and name.endswith(".bias"):
            continue  # GPTQ tools save a (zero) bias for every projection, with a bias or not
        if param is None:
            raise ValueError(f"checkpoint tensor {name!r} has no counterpart in {type(model).__name__}")
        loader = getattr(param, "weight_loader", default_weight_loader)
        if shard is None:
            loader(param, src)
        else:
            loader(param, src, shard)
        loaded.add(target)
    if tied:
        loaded.add("lm_head.weight")
    missing = sorted(set(params) - loaded)
    if missing:
        raise ValueError(f"checkpoint {path} lacks weights for: {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")


def build_model(cfg: ModelConfig, device: torch.device, quantization: str | None = None) -> nn.Module:
    """Instantiates the registered class for the config on `device` and loads its weights;
    `quantization="fp8"` turns a full-precision checkpoint's projections into FP8 once loaded, and
    "bitsandbytes" into NF4."""
    stored = cfg.quantization.method if cfg.quantization is not None else None
    if stored is not None and quantization is not None:
        if stored not in (quantization, CHECKPOINT_QUANTIZATIONS.get(quantization)):
            raise ValueError(f"quantization={quantization!r} does not fit the checkpoint, which is already quantized "
                             f"({stored}): leave it unset or name the checkpoint's format")
        quantization = None
    if quantization in CHECKPOINT_QUANTIZATIONS and quantization not in ONLINE_QUANTIZATIONS:
        raise ValueError(f"quantization={quantization!r} names the checkpoint's format, but {cfg.path} is not quantized")
    fmt = int_checkpoint_format(cfg.quantization) if isinstance(cfg.quantization, IntQuantConfig) else cfg.quantization
    old = torch.get_default_dtype()
    torch.set_default_dtype(cfg.dtype)
    try:
        with torch.device(device):
            model = model_class(cfg.architecture)(cfg)
            if isinstance(fmt, Fp8Config):
                use_fp8_weights(model, cfg.path, fmt)
            elif fmt is not None:
                use_int_weights(model, cfg.path, fmt)
    finally:
        torch.set_default_dtype(old)
    load_weights(model, cfg.path, fmt)
    for module in list(model.modules()):  # layers that derive what they compute with from the loaded weights
        if hasattr(module, "finish_loading"):
            module.finish_loading()
    if quantization == "fp8":
        for module in model.modules():
            if hasattr(module, "quantize_loaded") and module.fp8_block is None:
                module.quantize_loaded(ONLINE_BLOCK)
    elif quantization == "bitsandbytes":  # the attention and dense MLP projections; experts stay as loaded
        for module in model.modules():
            if hasattr(module, "quantize_loaded_nf4") and module.int_quant is None:
                module.quantize_loaded_nf4()
    return model.eval()
