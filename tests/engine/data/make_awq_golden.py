"""Writes awq_golden.safetensors: AWQ tensors, the weight AutoAWQ's own code dequantizes from them,
and the GPTQ (exllama, original format) qweight and qzeros AutoAWQ's own converter makes of them.

They pin pagoda's AWQ and GPTQ readers to the upstream definitions of both layouts. AutoAWQ's
packing utilities import nothing but torch, so they are loaded from its source distribution:

    pip download --no-deps --no-binary :all: autoawq==0.2.9 && tar xzf autoawq-0.2.9.tar.gz
    python tests/engine/data/make_awq_golden.py autoawq-0.2.9/awq/utils/packing_utils.py

The AWQ tensors are packed by AutoAWQ's packing rule (WQLinear_GEMM.from_linear: the value of
column order[i] of each eight in bits 4i..4i+3, order 0, 2, 4, 6, 1, 3, 5, 7), restated here.
"""

from __future__ import annotations

import importlib.util
import pathlib
import sys

import torch
from safetensors.torch import save_file

ORDER = [0, 2, 4, 6, 1, 3, 5, 7]
K, N, GROUP, BITS = 64, 32, 16, 4


def _awq_pack(ints: torch.Tensor) -> torch.Tensor:
    packed = torch.zeros(ints.shape[0], ints.shape[1] // 8, dtype=torch.int32)
    for col in range(ints.shape[1] // 8):
        for i in range(8):
            packed[:, col] |= ints[:, col * 8 + ORDER[i]] << (i * BITS)
    return packed


def main(packing_utils: str) -> None:
    spec = importlib.util.spec_from_file_location("awq_packing_utils", packing_utils)
    upstream = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(upstream)
    g = torch.Generator().manual_seed(0)
    ints = torch.randint(0, 16, (K, N), generator=g, dtype=torch.int32)
    zeros = torch.randint(1, 16, (K // GROUP, N), generator=g, dtype=torch.int32)  # v1 GPTQ cannot store zero 0
    scales = (torch.rand(K // GROUP, N, generator=g) * 0.02 + 0.001).to(torch.float16)
    qweight, qzeros = _awq_pack(ints), _awq_pack(zeros)
    weight = upstream.dequantize_gemm(qweight, qzeros, scales, BITS, GROUP)  # [K, N]
    gptq_qweight, gptq_qzeros = upstream.unpack_reorder_pack(qweight, qzeros, BITS)
    save_file({"awq.qweight": qweight, "awq.qzeros": qzeros, "awq.scales": scales,
               "gptq.qweight": gptq_qweight.contiguous(), "gptq.qzeros": gptq_qzeros.contiguous(),
               "dequantized": weight.float().contiguous()},
              str(pathlib.Path(__file__).with_name("awq_golden.safetensors")))


if __name__ == "__main__":
    main(sys.argv[1])
