"""Compiles every Triton kernel for Hopper (sm_90) on a machine without a GPU, and reads ptxas' resource report.

The interpreter proves what the kernels compute, not that they compile:
typing of control flow, constexpr rules and shape constraints are only
checked by the compiler. Triton ships ptxas, so the full pipeline down to a
cubin runs on the CPU. Launches are recorded from the real host wrappers
(called on CPU tensors, with each kernel swapped for a recorder), so the
argument lists compiled are exactly those the wrappers pass.

Run as `python -m tests.kernels.sm90`: it must import the kernels in compiled
mode, hence outside the interpreted test process.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.backends.nvidia import compiler as nvidia_compiler
from triton.compiler import ASTSource

import pagoda.kernels.triton as kernels
from pagoda.engine.layers.fp8 import WHOLE
from pagoda.kernels.reference import ClampedSwiglu, IntExperts, QKNorm, RowNorm
from pagoda.kernels.triton import (activation, fp8_linear, int_gemm, kv_cache, moe, norm, paged_decode,
                                   paged_prefill, rotary, sampling, skinny_gemm)

TARGET = GPUTarget("cuda", 90, 32)
_POINTER = {torch.float8_e4m3fn: "*fp8e4nv", torch.float8_e5m2: "*fp8e5", torch.uint8: "*u8", torch.bfloat16: "*bf16", torch.float16: "*fp16", torch.float32: "*fp32", torch.int32: "*i32", torch.int64: "*i64"}


class _Recorder:
    """Stands in for a @triton.jit kernel: `kernel[grid](*args, **kwargs)` is recorded, not launched."""

    def __init__(self, fn: triton.JITFunction, sink: list) -> None:
        self.fn, self.sink = fn, sink

    def __getitem__(self, grid: Any) -> Callable[..., None]:
        return lambda *args, **kwargs: self.sink.append((self.fn, args, kwargs))


def _signature(fn: triton.JITFunction, args: tuple, kwargs: dict) -> tuple[dict, dict, dict, dict]:
    """Types, constexprs and the 16-divisibility hints Triton's JIT derives from a launch's arguments.

    The hints matter: they are what lets the compiler prove 16-byte
    alignment and issue vector loads, so leaving them out would report the
    register pressure of scalar code the real launches never run.
    """
    options = {k: kwargs.pop(k) for k in ("num_warps", "num_stages") if k in kwargs}
    values = {**dict(zip(fn.arg_names, args)), **kwargs}
    signature, constexprs, attrs = {}, {}, {}
    for i, (name, param) in enumerate(zip(fn.arg_names, fn.params)):
        value = values[name]
        if param.is_constexpr:
            signature[name], constexprs[(i,)] = "constexpr", value
            continue
        if isinstance(value, torch.Tensor):
            signature[name] = _POINTER[value.dtype]
            aligned = True  # PyTorch allocations are at least 16-byte aligned
        elif isinstance(value, float):
            signature[name], aligned = "fp32", False
        else:
            signature[name] = "i32" if -(2**31) <= int(value) < 2**31 else "i64"
            aligned = int(value) % 16 == 0
        if aligned:
            attrs[(i,)] = [["tt.divisibility", 16]]
    return signature, constexprs, attrs, options


def _ptxas_report(ptx: str) -> dict[str, int]:
    """Registers and spill bytes per thread, from ptxas -v (the compiler's own resource report)."""
    ptxas = nvidia_compiler.get_ptxas(TARGET.arch).path  # the one Triton itself assembles with
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "k.ptx"
        src.write_text(ptx)
        out = subprocess.run([ptxas, "-arch=sm_90a", "-v", str(src), "-o", str(Path(tmp) / "k.o")],
                             capture_output=True, text=True, check=True).stderr
    numbers = lambda pattern: sum(int(x) for x in re.findall(pattern, out))  # noqa: E731
    return {"registers": numbers(r"Used (\d+) registers"),
            "spill_bytes": numbers(r"(\d+) bytes spill stores") + numbers(r"(\d+) bytes spill loads")}


def representative_launches() -> list[tuple[str, triton.JITFunction, tuple, dict]]:
    """The wrappers called on the shapes the served models use; one record per kernel launch."""
    records: list = []
    modules = {activation: "_act_and_mul_kernel", kv_cache: "_store_kv_kernel", norm: "_rms_norm_kernel",
               paged_decode: "_decode_kernel", rotary: "_rotary_kernel", paged_prefill: "_prefill_kernel",
               moe: "_moe_gemm_kernel", fp8_linear: "_fp8_linear_kernel", int_gemm: "_int_linear_kernel",
               sampling: "_gumbel_argmax_kernel", skinny_gemm: "_fused_linear_kernel"}
    originals = {m: getattr(m, n) for m, n in modules.items()}
    originals[paged_decode, "merge"] = paged_decode._merge_kernel
    for module, name in modules.items():
        setattr(module, name, _Recorder(originals[module], records))
    paged_decode._merge_kernel = _Recorder(originals[paged_decode, "merge"], records)
    labels: list[str] = []

    def call(label: str, f: Callable[[], Any]) -> None:
        before = len(records)
        f()
        labels.extend(f"{label}/{i}" for i in range(len(records) - before))

    try:
        for dtype, heads, kv_heads, d, window in [(torch.bfloat16, 32, 8, 128, None), (torch.float16, 14, 2, 64, 4096),
                                                  (torch.float32, 8, 8, 80, None)]:
            tag = f"{str(dtype).removeprefix('torch.')}-d{d}-g{heads // kv_heads}"
            cache = torch.empty(8, 16, kv_heads, d, dtype=dtype)
            tables = torch.zeros(4, 2, dtype=torch.int32)
            lens = torch.ones(4, dtype=torch.int32)
            q = torch.empty(4, heads, d, dtype=dtype)
            call(f"decode-split-{tag}", lambda: kernels.paged_attention_decode(
                q, cache, cache, tables, lens, 32, 0.1, window, num_splits=4))
            call(f"decode-{tag}", lambda: kernels.paged_attention_decode(q, cache, cache, tables, lens, 32, 0.1, num_splits=1))
            call(f"decode-merge-kernel-{tag}", lambda: kernels.paged_attention_decode(
                q, cache, cache, tables, lens, 32, 0.1, window, num_splits=4, fused_merge=False))
            starts = torch.arange(5, dtype=torch.int32)
            call(f"prefill-{tag}", lambda: kernels.paged_attention_prefill_varlen(
                q, cache, cache, tables, starts, lens, 1, 0.1, window))
            call(f"store-{tag}", lambda: kernels.store_kv_cache(q[:, :kv_heads], q[:, :kv_heads], cache, cache, lens.long()))
            call(f"rotary-{tag}", lambda: kernels.rotary_embedding(
                lens.long(), q, q[:, :kv_heads], torch.empty(64, d), d // (2 if d == 80 else 1), d != 64))
        # An FP8 cache (kv_cache_dtype fp8) under bf16 activations: Llama-3-8B's heads.
        cache = torch.empty(8, 16, 8, 128, dtype=torch.float8_e4m3fn)
        tables, lens = torch.zeros(4, 2, dtype=torch.int32), torch.ones(4, dtype=torch.int32)
        q = torch.empty(4, 32, 128, dtype=torch.bfloat16)
        call("decode-fp8cache", lambda: kernels.paged_attention_decode(q, cache, cache, tables, lens, 32, 0.1, num_splits=4))
        # Gemma 2 9B's soft-capped logits (head_dim 256, 16 heads over 8 KV heads), decode and prefill.
        gemma = torch.empty(8, 16, 8, 256, dtype=torch.bfloat16)
        q2 = torch.empty(4, 16, 256, dtype=torch.bfloat16)
        call("decode-softcap", lambda: kernels.paged_attention_decode(
            q2, gemma, gemma, tables, lens, 32, 0.0625, 4096, softcap=50.0, num_splits=4))
        call("prefill-softcap", lambda: kernels.paged_attention_prefill_varlen(
            q2, gemma, gemma, tables, torch.arange(5, dtype=torch.int32), lens, 1, 0.0625, 4096, softcap=50.0))
        # Gemma 3's images attending to themselves both ways: per-token key limits (head_dim 256, 16 over 8 heads).
        call("prefill-key-limits", lambda: kernels.paged_attention_prefill_varlen(
            q2, gemma, gemma, tables, torch.arange(5, dtype=torch.int32), lens, 1, 0.0625, 4096,
            key_limits=torch.zeros(4, dtype=torch.int32)))
        # DeepSeek-V3's latent attention at tensor-parallel 8: 16 query heads over one 576-wide latent.
        latent = torch.empty(8, 16, 1, 576, dtype=torch.bfloat16)
        q3 = torch.empty(4, 16, 576, dtype=torch.bfloat16)
        call("decode-mla", lambda: kernels.paged_attention_decode(q3, latent, latent, tables, lens, 32, 0.1, num_splits=4))
        call("prefill-mla", lambda: kernels.paged_attention_prefill_varlen(
            q3, latent, latent, tables, torch.arange(5, dtype=torch.int32), lens, 1, 0.1))
        # GPT-OSS-120B's attention sinks (64 query heads over 8 KV heads of 64, window 128).
        oss = torch.empty(8, 16, 8, 64, dtype=torch.bfloat16)
        q4, sinks = torch.empty(4, 64, 64, dtype=torch.bfloat16), torch.empty(64)
        call("decode-sinks", lambda: kernels.paged_attention_decode(
            q4, oss, oss, tables, lens, 32, 0.125, 128, sinks=sinks, num_splits=4))
        call("prefill-sinks", lambda: kernels.paged_attention_prefill_varlen(
            q4, oss, oss, tables, torch.arange(5, dtype=torch.int32), lens, 1, 0.125, 128, sinks=sinks))
        call("prefill-fp8cache", lambda: kernels.paged_attention_prefill_varlen(
            q, cache, cache, tables, torch.arange(5, dtype=torch.int32), lens, 1, 0.1))
        call("store-fp8cache", lambda: kernels.store_kv_cache(q[:, :8], q[:, :8], cache, cache, lens.long()))
        call("rotate_and_store-fp8cache", lambda: kernels.rotate_and_store_kv(
            lens.long(), q, q[:, :8], q[:, :8], torch.empty(64, 128), 128, True, cache, cache, lens.long()))
        # Qwen3-0.6B's per-head q/k norms fused in (16 query heads over 8 KV heads of 128).
        qwen = torch.empty(8, 16, 8, 128, dtype=torch.bfloat16)
        q5, norm_w = torch.empty(4, 16, 128, dtype=torch.bfloat16), torch.empty(128, dtype=torch.bfloat16)
        call("rotate_and_store-qk_norm", lambda: kernels.rotate_and_store_kv(
            lens.long(), q5, q5[:, :8], q5[:, :8], torch.empty(64, 128), 128, True, qwen, qwen, lens.long(),
            QKNorm(norm_w, norm_w, 1e-6)))
        x = torch.empty(4, 2048, dtype=torch.bfloat16)
        w = torch.empty(2048, dtype=torch.bfloat16)
        call("rms_norm", lambda: kernels.rms_norm(x, w, 1e-6))
        call("fused_add_rms_norm", lambda: kernels.fused_add_rms_norm(x, x, w, 1e-6))
        call("silu_and_mul", lambda: kernels.silu_and_mul(torch.empty(4, 2 * 8192, dtype=torch.bfloat16)))
        call("gelu_tanh_and_mul", lambda: kernels.gelu_tanh_and_mul(torch.empty(4, 2 * 6912, dtype=torch.bfloat16)))
        # Llama-3.2-1B's four projections at decode sizes, each with what surrounds it in the layer.
        for dtype in (torch.bfloat16, torch.float32):
            tag = str(dtype).removeprefix("torch.")
            rows = torch.empty(16, 2048, dtype=dtype)
            norm_w = RowNorm(torch.empty(2048, dtype=dtype), 1e-5)
            call(f"fused_linear-qkv-{tag}", lambda: kernels.fused_linear(
                rows, torch.empty(3072, 2048, dtype=dtype), torch.empty(3072, dtype=dtype), norm=norm_w))
            call(f"fused_linear-o-{tag}", lambda: kernels.fused_linear(
                rows, torch.empty(2048, 2048, dtype=dtype), residual=rows))
            call(f"fused_linear-down-{tag}", lambda: kernels.fused_linear(
                torch.empty(1, 16384, dtype=dtype), torch.empty(2048, 8192, dtype=dtype), gated=True,
                residual=rows[:1]))
        # Temperature sampling over Qwen3's 151936-token vocabulary.
        call("gumbel_sample", lambda: kernels.gumbel_sample(torch.empty(256, 151936), torch.arange(256), torch.ones(256), 1))
        # Llama-3-8B's down projection in FP8 blocks of 128, at decode and prefill tile sizes.
        for tokens in (1, 64):
            call(f"fp8_linear-t{tokens}", lambda: kernels.fp8_block_linear(
                torch.empty(tokens, 14336, dtype=torch.bfloat16), torch.empty(4096, 14336, dtype=torch.float8_e4m3fn),
                torch.empty(32, 112), (128, 128)))
            call(f"fp8_linear-channel-t{tokens}", lambda: kernels.fp8_block_linear(
                torch.empty(tokens, 14336, dtype=torch.bfloat16), torch.empty(4096, 14336, dtype=torch.float8_e4m3fn),
                torch.empty(4096, 1), (1, WHOLE)))
        # The same in 4-bit GPTQ (groups of 128, fp16 scales), with and without act-order; and 8-bit channel-wise.
        for tokens in (1, 64):
            for g_idx in (None, torch.zeros(14336, dtype=torch.int32)):
                call(f"int4_linear-t{tokens}{'-act_order' if g_idx is not None else ''}", lambda: kernels.int_linear(
                    torch.empty(tokens, 14336, dtype=torch.bfloat16), torch.empty(4096, 14336 // 8, dtype=torch.int32),
                    torch.empty(4096, 112, dtype=torch.float16), torch.empty(4096, 112, dtype=torch.uint8), g_idx, 4, 128))
        call("int8_linear-t1", lambda: kernels.int_linear(
            torch.empty(1, 14336, dtype=torch.bfloat16), torch.empty(4096, 14336 // 4, dtype=torch.int32),
            torch.empty(4096, 1, dtype=torch.bfloat16), torch.empty(4096, 1, dtype=torch.uint8), None, 8, 14336))
        # bitsandbytes NF4: blocks of 64 with fp32 absmax, values through the 16-entry codebook.
        for tokens in (1, 64):
            call(f"nf4_linear-t{tokens}", lambda: kernels.int_linear(
                torch.empty(tokens, 14336, dtype=torch.bfloat16), torch.empty(4096, 14336 // 8, dtype=torch.int32),
                torch.empty(4096, 224), torch.empty(4096, 224, dtype=torch.uint8), None, 4, 64,
                codebook=torch.empty(16)))
        # Qwen3-30B-A3B's expert shapes (8 of its 128 experts), at decode and at prefill tile sizes.
        for dtype, tokens in [(torch.bfloat16, 4), (torch.bfloat16, 300), (torch.float32, 4)]:
            w13, w2 = torch.empty(8, 2 * 768, 2048, dtype=dtype), torch.empty(8, 2048, 768, dtype=dtype)
            ids = torch.arange(tokens * 8).view(tokens, 8) % 8
            call(f"moe-{str(dtype).removeprefix('torch.')}-t{tokens}", lambda: kernels.fused_moe(
                torch.empty(tokens, 2048, dtype=dtype), w13, w2, torch.ones(tokens, 8), ids))
        fp8 = torch.float8_e4m3fn
        call("moe-fp8-t4", lambda: kernels.fused_moe(
            torch.empty(4, 2048, dtype=torch.bfloat16), torch.empty(8, 2 * 768, 2048, dtype=fp8),
            torch.empty(8, 2048, 768, dtype=fp8), torch.ones(4, 8), torch.arange(32).view(4, 8) % 8,
            torch.empty(8, 12, 16), torch.empty(8, 16, 6), (128, 128)))
        int4 = IntExperts(torch.empty(8, 2 * 768, 16, dtype=torch.float16), torch.empty(8, 2 * 768, 16, dtype=torch.uint8),
                          torch.empty(8, 2048, 6, dtype=torch.float16), torch.empty(8, 2048, 6, dtype=torch.uint8),
                          4, 128, 128)
        for tokens in (4, 300):
            call(f"moe-int4-t{tokens}", lambda: kernels.fused_moe(
                torch.empty(tokens, 2048, dtype=torch.bfloat16), torch.empty(8, 2 * 768, 2048 // 8, dtype=torch.int32),
                torch.empty(8, 2048, 768 // 8, dtype=torch.int32), torch.ones(tokens, 8),
                torch.arange(tokens * 8).view(tokens, 8) % 8, int_experts=int4))
        # GPT-OSS-120B's MXFP4 experts (8 of its 128; 2880 wide): FP4 codes, bf16 power-of-two scales per 32,
        # biases and the clamped SwiGLU.
        mxfp4 = IntExperts(torch.empty(8, 2 * 2880, 90, dtype=torch.bfloat16), None,
                           torch.empty(8, 2880, 90, dtype=torch.bfloat16), None, 4, 32, 32, torch.empty(16))
        biases = (torch.empty(8, 2 * 2880, dtype=torch.bfloat16), torch.empty(8, 2880, dtype=torch.bfloat16))
        for tokens in (4, 300):
            call(f"moe-mxfp4-t{tokens}", lambda: kernels.fused_moe(
                torch.empty(tokens, 2880, dtype=torch.bfloat16), torch.empty(8, 2 * 2880, 2880 // 8, dtype=torch.int32),
                torch.empty(8, 2880, 2880 // 8, dtype=torch.int32), torch.ones(tokens, 4),
                torch.arange(tokens * 4).view(tokens, 4) % 8, int_experts=mxfp4, biases=biases,
                clamped=ClampedSwiglu(1.702, 7.0)))
    finally:
        for module, name in modules.items():
            setattr(module, name, originals[module])
        paged_decode._merge_kernel = originals[paged_decode, "merge"]
    return [(label, fn, args, kwargs) for label, (fn, args, kwargs) in zip(labels, records)]


def main() -> int:
    report = {}
    for label, fn, args, kwargs in representative_launches():
        signature, constexprs, attrs, options = _signature(fn, args, dict(kwargs))
        compiled = triton.compile(ASTSource(fn, signature, constexprs, attrs), target=TARGET, options=options)
        report[label] = {"kernel": fn.__name__, "shared_bytes": compiled.metadata.shared, **_ptxas_report(compiled.asm["ptx"])}
    json.dump(report, sys.stdout, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
