"""bitsandbytes 4-bit checkpoints (transformers' `load_in_4bit`, NF4 or FP4, with or without double
quantization), read into the integer layout the linear layers hold (`pagoda.engine.layers.int_quant`).

A quantized projection's weight [N, K] is stored flattened: `weight`, uint8 [N * K / 2, 1], two
values a byte (the first in the high nibble); `weight.absmax`, one scale per block of 64 values
(so per row and group of 64 columns when K is a multiple of 64), itself 8-bit quantized under
double quantization (`nested_absmax` per 256 of them, `nested_quant_map`, and an offset in the
JSON `quant_state` tensor that also gives the shape); `weight.quant_map`, the 16 values the
4-bit integers index. Lazy views unpack and dequantize only the rows or groups a rank reads.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from pagoda.engine.layers.int_quant import IntQuantConfig, pack_along_rows
from pagoda.engine.layers.weights import read_full, source_shape
from pagoda.engine.models.quant_formats import two_slices

BLOCK = 64  # bitsandbytes' block size, the only one transformers writes
# A projection's tensors: the packed weight, and its quantization state's parts.
_TENSOR = re.compile(r"^(?P<module>.+)\.weight(?:\.(?P<part>absmax|quant_map|nested_absmax|nested_quant_map|"
                     r"quant_state\.bitsandbytes__(?:nf4|fp4)))?$")


def bitsandbytes_config(quant: dict[str, Any]) -> IntQuantConfig:
    """transformers' BitsAndBytesConfig of a pre-quantized 4-bit checkpoint."""
    if quant.get("load_in_8bit") or quant.get("_load_in_8bit"):
        raise ValueError("bitsandbytes 8-bit (LLM.int8) checkpoints are not supported (supported: 4-bit, "
                         "load_in_4bit with NF4 or FP4)")
    if not (quant.get("load_in_4bit") or quant.get("_load_in_4bit")):
        raise ValueError("a bitsandbytes quantization_config must say load_in_4bit")
    storage = quant.get("bnb_4bit_quant_storage", "uint8")
    if storage != "uint8":
        raise ValueError(f"bitsandbytes 4-bit weights stored as {storage!r} are not supported (supported: uint8)")
    return IntQuantConfig(method="bitsandbytes", bits=4, group_size=BLOCK, stored_zeros=False, codebook=True)


@dataclass
class _State:
    """One projection's quantization state, beside its packed weight and absmax."""

    shape: tuple[int, int]
    nested_absmax: torch.Tensor | None = None
    nested_code: torch.Tensor | None = None
    nested_block: int = 256
    offset: float = 0.0


class _Packed:
    """The packed weight as our int32 words [N, K / 8]: nibbles unpacked, high first, then repacked."""

    def __init__(self, src: Any, shape: tuple[int, int]) -> None:
        self.src, self.shape = src, shape

    def get_shape(self) -> list[int]:
        return [self.shape[0], self.shape[1] // 8]

    def __getitem__(self, index: Any) -> torch.Tensor:
        rows, words = two_slices(index, tuple(self.get_shape()))
        half = self.shape[1] // 2
        flat = self.src[rows.start * half : rows.stop * half, 0:1].reshape(-1, half).to(torch.int32)
        values = torch.stack([flat >> 4, flat & 15], dim=-1).view(flat.shape[0], -1)
        return pack_along_rows(values[:, words.start * 8 : words.stop * 8], 4)


class _Scales:
    """absmax as fp32 scales [N, K / 64]: dequantized from 8 bits (code[absmax] times its nested
    block's absmax, plus the offset) under double quantization."""

    def __init__(self, src: Any, state: _State) -> None:
        self.src, self.state = src, state

    def get_shape(self) -> list[int]:
        return [self.state.shape[0], self.state.shape[1] // BLOCK]

    def __getitem__(self, index: Any) -> torch.Tensor:
        rows, cols = two_slices(index, tuple(self.get_shape()))
        groups = self.get_shape()[1]
        flat = self.src[rows.start * groups : rows.stop * groups]
        state = self.state
        if state.nested_code is not None:
            position = torch.arange(rows.start * groups, rows.stop * groups) // state.nested_block
            flat = state.nested_code[flat.long()] * state.nested_absmax[position] + state.offset
        return flat.float().view(-1, groups)[:, cols]


@dataclass
class BitsAndBytesFormat:
    """How a bitsandbytes checkpoint's tensors map to the integer layout; `prepare` reads every
    projection's quantization state first (its JSON and nested tensors are small)."""

    config: IntQuantConfig
    states: dict[str, _State] = field(default_factory=dict)

    def prepare(self, files: list[Path]) -> None:
        for file in files:
            with safe_open(str(file), framework="pt") as f:
                for name in f.keys():
                    found = _TENSOR.match(name)
                    if found is None or found["part"] is None or not found["part"].startswith("quant_state"):
                        continue
                    info = json.loads(bytes(f.get_tensor(name).tolist()).decode())
                    module = found["module"]
                    if int(info.get("blocksize", BLOCK)) != BLOCK or len(info["shape"]) != 2:
                        raise ValueError(f"{name}: bitsandbytes blocks of {info.get('blocksize')} over a weight of "
                                         f"shape {info['shape']} are not supported (supported: 2-D, blocks of {BLOCK})")
                    if info["shape"][1] % BLOCK:
                        raise ValueError(f"{name}: {info['shape'][1]} input features are not whole blocks of {BLOCK}")
                    state = _State(shape=(int(info["shape"][0]), int(info["shape"][1])))
                    if "nested_blocksize" in info:
                        state.nested_absmax = f.get_tensor(f"{module}.weight.nested_absmax").float()
                        state.nested_code = f.get_tensor(f"{module}.weight.nested_quant_map").float()
                        state.nested_block = int(info["nested_blocksize"])
                        state.offset = float(info.get("nested_offset", 0.0))
                    self.states[module] = state

    def quantized_modules(self) -> dict[str, torch.dtype]:
        """Checkpoint name of every quantized projection's packed weight, and the dtype of its scales."""
        return {f"{module}.weight": torch.float32 for module in self.states}

    def canonical(self, name: str, src: Any) -> tuple[str, Any] | None:
        """(our name, source in our layout) of a checkpoint tensor; None for the state's own parts."""
        found = _TENSOR.match(name)
        state = self.states.get(found["module"]) if found else None
        if state is None:
            return name, src  # not a quantized projection (embeddings, norms, the LM head)
        module, part = found["module"], found["part"]
        if part is None:
            if src is not None and source_shape(src)[0] * 2 != state.shape[0] * state.shape[1]:
                raise ValueError(f"{name} of shape {source_shape(src)} does not hold a {state.shape} weight")
            return f"{module}.qweight", _Packed(src, state.shape)
        if part == "absmax":
            return f"{module}.scales", _Scales(src, state)
        if part == "quant_map":
            return f"{module}.codebook", read_full(src) if src is not None else src
        return None
