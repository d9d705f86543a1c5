"""Integer-quantized test checkpoints: a fixture model's projections written the way GPTQ, AWQ
and compressed-tensors tools write them, and the same model with those weights dequantized.

Hugging Face transformers serves these formats only through GPU-oriented packages, so the
engine is checked against transformers running the dequantized twin: the same real weights,
which the engine must read back out of the packed format. The packers here are written
element by element from each format's definition, independently of the engine's lazy readers
(`pagoda.engine.models.quant_formats`; AWQ's value order is shared, and pinned by AutoAWQ's own
code in tests/engine/data), so a misread layout shows up as different tokens.
"""

from __future__ import annotations

import pathlib
import re

import numpy as np
import torch

from pagoda.engine.fixtures import read_weights, write_variant
from pagoda.engine.layers.int_quant import quantize_int_groups
from pagoda.engine.models.quant_formats import AWQ_ORDER

# Dense and expert projections (Mixtral's experts call theirs w1, w3, w2); routers stay as they are.
_PROJECTION = re.compile(r"\.((q|k|v|o|gate|up|down|q_a|q_b|kv_b)_proj|kv_a_proj_with_mqa|experts\.\d+\.w[123])\.weight$")


def _pack(values: np.ndarray, bits: int, axis: int, order: tuple[int, ...] | None = None) -> torch.Tensor:
    """int32 words of unsigned `values` packed along `axis`: the i-th `bits` of a word hold the
    element at position order[i] (i by default) of the word's run."""
    per_word = 32 // bits
    v = np.moveaxis(values.astype(np.uint64), axis, -1)
    words = np.zeros((*v.shape[:-1], v.shape[-1] // per_word), dtype=np.uint64)
    for i in range(per_word):
        words |= v[..., (order[i] if order else i)::per_word] << np.uint64(i * bits)
    return torch.from_numpy(np.moveaxis(words, -1, axis).astype(np.uint32).view(np.int32).copy())


def _quantize(weight: torch.Tensor, bits: int, group_size: int, symmetric: bool, perm: torch.Tensor | None,
              scale_dtype: torch.dtype) -> tuple[np.ndarray, torch.Tensor, np.ndarray, torch.Tensor, torch.Tensor]:
    """(integers [N, K], scales [N, G] in scale_dtype, zeros [N, G], g_idx [K], dequantized weight):
    groups of consecutive columns, or of columns in `perm`'s order (GPTQ's act-order)."""
    n, k = weight.shape
    order = perm if perm is not None else torch.arange(k)
    q, scales, zeros = quantize_int_groups(weight[:, order], bits, group_size, symmetric)
    scales = scales.to(scale_dtype)
    size = k if group_size == -1 else group_size
    g_idx = torch.empty(k, dtype=torch.int32)
    g_idx[order] = (torch.arange(k) // size).to(torch.int32)
    ints = torch.empty_like(q)
    ints[:, order] = q
    dequantized = (ints.float() - zeros.float()[:, g_idx.long()]) * scales.float()[:, g_idx.long()]
    return ints.numpy(), scales, zeros.numpy(), g_idx, dequantized


def _tensors(name: str, method: str, ints: np.ndarray, scales: torch.Tensor, zeros: np.ndarray,
             g_idx: torch.Tensor, bits: int, symmetric: bool, act_order: bool, gptq_v1: bool) -> dict[str, torch.Tensor]:
    prefix = name.removesuffix(".weight")
    if method == "gptq":
        stored_zeros = (zeros.astype(np.int64) - (1 if gptq_v1 else 0)) & ((1 << bits) - 1)
        return {f"{prefix}.qweight": _pack(ints, bits, axis=1).t().contiguous(),  # [K / per_word, N]
                f"{prefix}.qzeros": _pack(stored_zeros.T, bits, axis=1),  # [G, N / per_word]
                f"{prefix}.scales": scales.t().contiguous(), f"{prefix}.g_idx": g_idx}
    if method == "awq":
        return {f"{prefix}.qweight": _pack(ints.T, bits, axis=1, order=AWQ_ORDER),  # [K, N / 8]
                f"{prefix}.qzeros": _pack(zeros.T, bits, axis=1, order=AWQ_ORDER),
                f"{prefix}.scales": scales.t().contiguous()}
    out = {f"{prefix}.weight_packed": _pack(ints, bits, axis=1), f"{prefix}.weight_scale": scales,
           f"{prefix}.weight_shape": torch.tensor(ints.shape, dtype=torch.int64)}
    if not symmetric:
        out[f"{prefix}.weight_zero_point"] = _pack(zeros, bits, axis=0)  # packed along N
    if act_order:
        out[f"{prefix}.weight_g_idx"] = g_idx
    return out


def _config(method: str, bits: int, group_size: int, symmetric: bool, act_order: bool, gptq_v1: bool) -> dict:
    if method == "gptq":
        return {"quant_method": "gptq", "bits": bits, "group_size": group_size, "desc_act": act_order,
                "sym": symmetric, "checkpoint_format": "gptq" if gptq_v1 else "gptq_v2", "static_groups": False,
                "true_sequential": True, "damp_percent": 0.01}
    if method == "awq":
        return {"quant_method": "awq", "bits": bits, "group_size": group_size, "zero_point": True,
                "version": "gemm", "modules_to_not_convert": None}
    weights = {"num_bits": bits, "type": "int", "symmetric": symmetric, "dynamic": False, "observer": "minmax",
               "strategy": "channel" if group_size == -1 else "group",
               "group_size": None if group_size == -1 else group_size, "actorder": "group" if act_order else None}
    return {"quant_method": "compressed-tensors", "format": "pack-quantized", "quantization_status": "compressed",
            "ignore": ["lm_head"], "kv_cache_scheme": None,
            "config_groups": {"group_0": {"targets": ["Linear"], "weights": weights, "input_activations": None,
                                          "output_activations": None, "format": "pack-quantized"}}}


def make_int_quant_model(
    model_dir: str | pathlib.Path, out_dir: str | pathlib.Path, dequantized_dir: str | pathlib.Path, method: str, *,
    bits: int = 4, group_size: int = 16, symmetric: bool = False, act_order: bool = False, gptq_v1: bool = True,
    seed: int = 0,
) -> pathlib.Path:
    """Writes the fixture model in `model_dir` as a `method` ("gptq", "awq" or "compressed-tensors")
    checkpoint in `out_dir`, and with its projections dequantized (a plain checkpoint) in
    `dequantized_dir`. GPTQ scales are fp16 as GPTQ tools write them; GPTQ projections without a
    bias get a zero one, as AutoGPTQ saves them; act-order uses one column order per input width,
    which projections of one input (q/k/v, gate/up) share as GPTQ's do."""
    generator = torch.Generator().manual_seed(seed)
    perms: dict[int, torch.Tensor] = {}
    tensors = read_weights(model_dir)
    packed, plain = {}, dict(tensors)
    for name, weight in tensors.items():
        if not _PROJECTION.search(name):
            packed[name] = weight
            continue
        k = weight.shape[1]
        perm = perms.setdefault(k, torch.randperm(k, generator=generator)) if act_order else None
        scale_dtype = torch.float16 if method in ("gptq", "awq") else weight.dtype
        ints, scales, zeros, g_idx, dequantized = _quantize(weight, bits, group_size, symmetric, perm, scale_dtype)
        packed.update(_tensors(name, method, ints, scales, zeros, g_idx, bits, symmetric, act_order, gptq_v1))
        bias = name.removesuffix("weight") + "bias"
        if method == "gptq" and bias not in tensors:
            packed[bias] = torch.zeros(weight.shape[0], dtype=weight.dtype)
        plain[name] = dequantized.to(weight.dtype)
    write_variant(model_dir, dequantized_dir, plain)
    return write_variant(model_dir, out_dir, packed,
                         quantization_config=_config(method, bits, group_size, symmetric, act_order, gptq_v1))


def make_bnb_model(model_dir: str | pathlib.Path, out_dir: str | pathlib.Path, dequantized_dir: str | pathlib.Path,
                   quant_type: str = "nf4", double_quant: bool = True) -> pathlib.Path:
    """The fixture model in `model_dir` as a bitsandbytes 4-bit checkpoint, written by transformers
    and bitsandbytes themselves (`load_in_4bit`, then `save_pretrained`): the format as its tools
    produce it; and in `dequantized_dir` the plain checkpoint of the weights bitsandbytes' own
    `dequantize_4bit` reads out of it. (transformers' 4-bit forward on the CPU rounds beyond fp32,
    so the twin, not the quantized model, is the reference to compare with.)"""
    import bitsandbytes.functional as bnb
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quant_type,
                                bnb_4bit_use_double_quant=double_quant, bnb_4bit_compute_dtype=torch.float32)
    model = AutoModelForCausalLM.from_pretrained(model_dir, quantization_config=config, dtype=torch.float32,
                                                 device_map="cpu")
    out_dir = pathlib.Path(out_dir)
    model.save_pretrained(out_dir)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"):
        if (pathlib.Path(model_dir) / name).exists() and not (out_dir / name).exists():
            (out_dir / name).write_bytes((pathlib.Path(model_dir) / name).read_bytes())
    plain = read_weights(model_dir)
    for name, module in model.named_modules():
        state = getattr(getattr(module, "weight", None), "quant_state", None)
        if state is not None:
            plain[f"{name}.weight"] = bnb.dequantize_4bit(module.weight.data, state).to(plain[f"{name}.weight"].dtype)
    write_variant(model_dir, dequantized_dir, plain)
    return out_dir


# GPT-OSS's stacked experts, [E, in, out] as transformers holds them.
_GPT_OSS_EXPERTS = re.compile(r"\.mlp\.experts\.(gate_up_proj|down_proj)$")
# E2M1's values by code, written out from the format's definition (1 sign, 2 exponent, 1 mantissa bits).
_E2M1 = [sign * (mantissa / 2 if exponent == 0 else (1 + mantissa / 2) * 2 ** (exponent - 1))
         for sign in (1.0, -1.0) for exponent in range(4) for mantissa in range(2)]


def _mxfp4_groups(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(blocks uint8 [..., G, 16], scales uint8 [..., G], dequantized weight) of `weight` [..., K]
    quantized along K in groups of 32 as the OCP MX spec says: a group's scale is 2 ** (floor(log2
    of its largest magnitude) - 2) (E2M1's largest exponent), each value the nearest E2M1 code of
    value / scale (saturating at 6)."""
    *lead, k = weight.shape
    groups = weight.float().reshape(*lead, k // 32, 32)
    amax = groups.abs().amax(dim=-1, keepdim=True).clamp_min(2.0**-100)
    exponent = torch.floor(torch.log2(amax)) - 2
    values = torch.tensor(_E2M1)
    codes = ((groups / 2.0**exponent)[..., None] - values).abs().argmin(dim=-1).to(torch.uint8)
    blocks = codes[..., 0::2] | (codes[..., 1::2] << 4)
    dequantized = (values[codes.long()] * 2.0**exponent).reshape(*lead, k)
    return blocks, (exponent[..., 0] + 127).to(torch.uint8), dequantized


def make_mxfp4_model(model_dir: str | pathlib.Path, out_dir: str | pathlib.Path,
                     dequantized_dir: str | pathlib.Path) -> pathlib.Path:
    """The GPT-OSS fixture in `model_dir` as OpenAI ships gpt-oss, its experts in MXFP4
    (`<stack>_blocks` [E, out, in / 32, 16], `<stack>_scales` [E, out, in / 32]; biases, attention,
    routers, embeddings and head as they were), and in `dequantized_dir` the plain checkpoint of the
    weights the MXFP4 stacks stand for."""
    tensors = read_weights(model_dir)
    packed, plain = {}, dict(tensors)
    for name, weight in tensors.items():
        if not _GPT_OSS_EXPERTS.search(name):
            packed[name] = weight
            continue
        blocks, scales, dequantized = _mxfp4_groups(weight.transpose(1, 2))  # [E, out, in]
        packed[f"{name}_blocks"], packed[f"{name}_scales"] = blocks, scales
        plain[name] = dequantized.transpose(1, 2).contiguous().to(weight.dtype)
    write_variant(model_dir, dequantized_dir, plain)
    not_converted = ["model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]
    return write_variant(model_dir, out_dir, packed,
                         quantization_config={"quant_method": "mxfp4", "modules_to_not_convert": not_converted})
