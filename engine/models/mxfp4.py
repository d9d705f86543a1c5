"""MXFP4 checkpoints (OCP microscaling FP4: OpenAI's gpt-oss-20b and gpt-oss-120b experts), read into the
integer layout the fused experts hold (`pagoda.engine.layers.int_quant`) with FP4's values as its codebook.

A quantized expert stack `<proj>_blocks` is uint8 [E, N, K / 32, 16]: per (expert, output row) and group
of 32 input columns, 16 bytes of two E2M1 values each, the even column in the low nibble; `<proj>_scales`
is uint8 [E, N, K / 32], each group's E8M0 scale, 2 ** (s - 127). Four consecutive bytes, read as a
little-endian int32, are exactly a word of our layout (eight 4-bit integers, the first lowest), so the
weights load as they are, 4.25 bits a weight on disk and 4.5 in memory (bf16 scales, which hold every
power of two FP4 scales take). Attention, routers, embeddings and the head stay at full precision.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from pagoda.engine.layers.int_quant import IntQuantConfig

GROUP = 32
SCALE_DTYPE = torch.bfloat16
# An expert stack's two tensors.
_TENSOR = re.compile(r"^(?P<stack>.+\.experts\.\w+?)_(?P<part>blocks|scales)$")


def mxfp4_config(quant: dict[str, Any]) -> IntQuantConfig:
    """The quantization_config of an MXFP4 checkpoint (quant_method "mxfp4")."""
    return IntQuantConfig(method="mxfp4", bits=4, group_size=GROUP, stored_zeros=False, codebook=True)


def words_of_blocks(blocks: torch.Tensor) -> torch.Tensor:
    """uint8 [..., G, 16] -> int32 [..., G * 4]: the same bytes as words of eight 4-bit integers."""
    return blocks.contiguous().view(*blocks.shape[:-2], -1).view(torch.int32)


def scales_of_exponents(exponents: torch.Tensor) -> torch.Tensor:
    """E8M0 bytes -> 2 ** (e - 127) in bf16 (exact: bf16 has fp32's exponent range)."""
    return torch.ldexp(torch.ones(exponents.shape), exponents.to(torch.int32) - 127).to(SCALE_DTYPE)


@dataclass
class Mxfp4Format:
    """The checkpoint format: which stacks are quantized, and their tensors in our layout."""

    config: IntQuantConfig
    modules: dict[str, torch.dtype] = field(default_factory=dict)

    def prepare(self, files: list[Path]) -> None:
        for file in files:
            with safe_open(str(file), framework="pt") as f:
                self.modules.update({name: SCALE_DTYPE for name in f.keys()
                                     if (m := _TENSOR.match(name)) and m["part"] == "blocks"})

    def quantized_modules(self) -> dict[str, torch.dtype]:
        """Checkpoint name of every quantized stack's blocks, and the dtype of its scales."""
        return self.modules

    def canonical(self, name: str, src: Any) -> tuple[str, Any] | None:
        """`<stack>_blocks` -> `<stack>.qweight` (words), `<stack>_scales` -> `<stack>.scales` (bf16);
        anything else as it is."""
        match = _TENSOR.match(name)
        if match is None:
            return name, src
        if match["part"] == "blocks":
            return f"{match['stack']}.qweight", None if src is None else words_of_blocks(src[:])
        return f"{match['stack']}.scales", None if src is None else scales_of_exponents(src[:])
