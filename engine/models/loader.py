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

from pagoda.engine.layers.fp8 import ONLINE_BLOCK
from pagoda.engine.layers.weights import default_weight_loader
from pagoda.engine.model_config import ModelConfig
from pagoda.engine.models.registry import model_class

# Tensors some checkpoints carry that are recomputed here, never loaded.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


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


def use_fp8_weights(model: nn.Module, path: Path, block: tuple[int, int]) -> None:
    """Makes FP8 every projection the checkpoint stores in FP8: those with a `weight_scale_inv`
    (checkpoints keep some layers, e.g. the LM head, at full precision)."""
    ignored = getattr(model, "ignored_checkpoint_prefixes", ())
    for file in checkpoint_files(path):
        with safe_open(str(file), framework="pt") as f:
            names = list(f.keys())
        for name in names:
            if not name.endswith(".weight_scale_inv") or name.startswith(ignored):
                continue
            target, _ = model.checkpoint_target(_with_prefix(model, name))
            module_name = target.rpartition(".")[0]
            try:
                module = model.get_submodule(module_name)
            except AttributeError:
                module = None
            if not hasattr(module, "use_fp8"):
                raise ValueError(f"checkpoint tensor {name!r}: FP8 weights are served for attention, MLP and "
                                 "expert projections only (not for embeddings or heads)")
            if module.fp8_block is None:
                module.use_fp8(block)


def load_weights(model: nn.Module, path: Path) -> None:
    params = dict(model.named_parameters(remove_duplicate=False))
    generates = getattr(model, "generates", True)
    tied = bool(getattr(model.config, "tie_word_embeddings", False)) and generates
    loaded: set[str] = set()
    ignored = getattr(model, "ignored_checkpoint_prefixes", ())
    for name, src in iter_checkpoint(path):
        if name.startswith(ignored):  # parts of the checkpoint this model does not serve (a vision tower)
            continue
        name = _with_prefix(model, name)
        if name.endswith(_IGNORED_SUFFIXES) or (tied and name.startswith("lm_head.")):
            continue
        target, shard = model.checkpoint_target(name)
        param = params.get(target)
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
    `quantization="fp8"` turns a full-precision checkpoint's projections into FP8 once loaded."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(cfg.dtype)
    try:
        with torch.device(device):
            model = model_class(cfg.architecture)(cfg)
            if cfg.quantization is not None:
                use_fp8_weights(model, cfg.path, cfg.quantization.block)
    finally:
        torch.set_default_dtype(old)
    load_weights(model, cfg.path)
    if quantization == "fp8":
        for module in model.modules():
            if hasattr(module, "quantize_loaded") and module.fp8_block is None:
                module.quantize_loaded(ONLINE_BLOCK)
    return model.eval()
