"""FP8 checkpoint formats, read into the one layout the linear layers hold
(`pagoda.engine.layers.fp8`: float8_e4m3fn weights and an fp32 grid of block scales).

- `quant_method: fp8` with a `weight_block_size` (transformers' fine-grained FP8: Qwen3-*-FP8,
  DeepSeek-V3): `weight_scale_inv`, one per block;
- `quant_method: fp8` without one (vLLM's and AutoFP8's original format): `weight_scale`, one per
  tensor, and `input_scale` where activations were calibrated (`activation_scheme: static`);
- compressed-tensors `float-quantized` (llm-compressor's FP8_DYNAMIC, FP8 and FP8_BLOCK schemes):
  `weight_scale` per channel ([N, 1]), per tensor or per block.

Activations stay in the model's dtype: the weights are dequantized inside the GEMM, so a
checkpoint's activation scheme (dynamic per token, or static `input_scale`s, which are dropped)
changes nothing here. That is how vLLM serves FP8 checkpoints on GPUs without FP8 tensor cores;
its numbers differ from W8A8's by the activations' rounding only. A checkpoint's KV-cache
scales (`k_scale`, `v_scale`) are the loader's: they serve an FP8 KV cache, FP8 weights or not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pagoda.engine.layers.fp8 import WHOLE

# Checkpoint tensors an FP8 checkpoint carries that weight-only serving does not use.
_DROPPED = ("input_scale",)


@dataclass(frozen=True)
class Fp8Config:
    """An FP8 checkpoint: the scale blocks (rows, columns) of its weights, with (1, WHOLE) for
    per-channel and per-tensor scales; the quant_method that wrote it; the name of its scales."""

    block: tuple[int, int]
    method: str = "fp8"
    scale_name: str = "weight_scale_inv"

    def canonical(self, name: str, src: Any) -> tuple[str, Any] | None:
        """(our name, source) of a checkpoint tensor: scales renamed to `weight_scale_inv`, activation
        scales None, any other tensor itself."""
        module, _, leaf = name.rpartition(".")
        if leaf in _DROPPED:
            return None
        if leaf == self.scale_name:
            return f"{module}.weight_scale_inv", src
        return name, src


def _block(value: Any) -> tuple[int, int]:
    if not (isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(b, int) and b > 0 for b in value)):
        raise ValueError(f"an FP8 weight block must be two positive integers, got {value!r}")
    return int(value[0]), int(value[1])


def fp8_config(quant: dict[str, Any]) -> Fp8Config:
    """`quant_method: fp8`: block-wise with dynamic activations, or per-tensor with either scheme."""
    scheme = quant.get("activation_scheme", "dynamic")
    if scheme not in ("dynamic", "static"):
        raise ValueError(f"fp8 activation_scheme {scheme!r} is not supported (supported: dynamic, static)")
    block = quant.get("weight_block_size")
    if block is None:
        return Fp8Config(block=(1, WHOLE), scale_name="weight_scale")
    if scheme == "static":  # vLLM refuses it too: block scales come with per-token-group activations
        raise ValueError("quantization 'fp8 with static activations and a weight_block_size' is not supported")
    return Fp8Config(block=_block(block))


def is_float_quantized(quant: dict[str, Any]) -> bool:
    """Whether a compressed-tensors config quantizes weights to floats (FP8), not integers."""
    groups = (quant.get("config_groups") or {}).values()
    return any((group.get("weights") or {}).get("type") == "float" for group in groups)


def compressed_tensors_fp8_config(quant: dict[str, Any]) -> Fp8Config:
    """compressed-tensors' 8-bit float weights, per channel, per tensor or per block, in its
    float-quantized (or naive-quantized) format, whatever the activations' scheme."""
    groups = list((quant.get("config_groups") or {}).values())
    what = "compressed-tensors float weights"
    formats = {group.get("format") or quant.get("format") for group in groups}
    if not formats <= {"float-quantized", "naive-quantized"}:
        raise ValueError(f"{what} in format {sorted(map(str, formats))} are not supported "
                         "(supported: float-quantized, naive-quantized)")
    schemes = {tuple(sorted((k, str(v)) for k, v in (group.get("weights") or {}).items())) for group in groups}
    if len(schemes) != 1:
        raise ValueError(f"{what} with several weight schemes are not supported")
    weights = groups[0]["weights"]
    if int(weights.get("num_bits", 8)) != 8 or weights.get("type") != "float" or not weights.get("symmetric", True):
        raise ValueError(f"{what} of {weights.get('num_bits')} bits, symmetric {weights.get('symmetric')}, are not "
                         "supported (supported: 8-bit e4m3, symmetric)")
    strategy = weights.get("strategy")
    if strategy in ("channel", "tensor"):
        block = (1, WHOLE)
    elif strategy == "block":
        block = _block(weights.get("block_structure"))
    else:
        raise ValueError(f"{what} with strategy {strategy!r} are not supported (supported: channel, tensor, block)")
    return Fp8Config(block=block, method="compressed-tensors", scale_name="weight_scale")
