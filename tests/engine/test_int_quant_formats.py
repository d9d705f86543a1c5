"""The readers of integer-quantized checkpoint formats against upstream definitions of each layout:
AutoAWQ's own dequantization and its AWQ-to-GPTQ converter (golden tensors, see
data/make_awq_golden.py), compressed-tensors' packer and transformers' reading of its checkpoints;
and a rank's shard read lazily equals the same rows and columns of the whole tensor."""

from __future__ import annotations

import pathlib

import pytest
import torch
from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32, unpack_from_int32
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from pagoda.engine.int_quant_fixtures import make_int_quant_model
from pagoda.engine.layers.int_quant import IntQuantConfig, pack_along_rows
from pagoda.engine.layers.weights import read_full, read_shard
from pagoda.engine.models.quant_formats import CheckpointFormat, awq_config, gptq_config
from pagoda.kernels import reference

GOLDEN = load_file(str(pathlib.Path(__file__).with_name("data") / "awq_golden.safetensors"))


def _dequantized(fmt: CheckpointFormat, tensors: dict[str, torch.Tensor], group_size: int) -> torch.Tensor:
    """The real weight [N, K] our reader makes of a projection's checkpoint tensors."""
    ours = {}
    for name, tensor in tensors.items():
        converted = fmt.canonical(f"layer.{name}", tensor)
        if converted is not None:
            ours[converted[0].removeprefix("layer.")] = read_full(converted[1])
    zeros = ours.get("zeros", torch.full_like(ours["scales"], 1 << (fmt.config.bits - 1), dtype=torch.uint8))
    return reference.int_dequantize(ours["qweight"].to(torch.int32), ours["scales"], zeros.to(torch.uint8),
                                    ours.get("g_idx"), fmt.config.bits, group_size)


def test_awq_reads_as_autoawq_dequantizes() -> None:
    fmt = CheckpointFormat(awq_config({"quant_method": "awq", "bits": 4, "group_size": 16, "version": "gemm"}))
    tensors = {leaf: GOLDEN[f"awq.{leaf}"] for leaf in ("qweight", "qzeros", "scales")}
    torch.testing.assert_close(_dequantized(fmt, tensors, 16), GOLDEN["dequantized"].t(), rtol=1e-3, atol=1e-5)


def test_gptq_reads_what_autoawq_converts_to_gptq() -> None:
    """AutoAWQ's converter writes the original GPTQ format (exllama's: zero - 1 stored)."""
    fmt = CheckpointFormat(gptq_config({"quant_method": "gptq", "bits": 4, "group_size": 16}))
    tensors = {"qweight": GOLDEN["gptq.qweight"], "qzeros": GOLDEN["gptq.qzeros"], "scales": GOLDEN["awq.scales"]}
    torch.testing.assert_close(_dequantized(fmt, tensors, 16), GOLDEN["dequantized"].t(), rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("bits", [4, 8])
def test_compressed_tensors_packing_is_the_library_s(bits: int) -> None:
    """Weights packed along K and zero points along N, both offset by 2 ** (bits - 1), as
    compressed-tensors packs them; our reader unpacks them as it does."""
    g = torch.Generator().manual_seed(bits)
    offset = 1 << (bits - 1)
    ints = torch.randint(0, 1 << bits, (24, 64), generator=g)
    zeros = torch.randint(0, 1 << bits, (24, 4), generator=g)
    library_weights = pack_to_int32((ints - offset).to(torch.int8), bits)
    library_zeros = pack_to_int32((zeros - offset).to(torch.int8), bits, packed_dim=0)
    assert torch.equal(pack_along_rows(ints, bits), library_weights)
    cfg = IntQuantConfig(method="compressed-tensors", bits=bits, group_size=16, stored_zeros=True)
    _, our_zeros = CheckpointFormat(cfg).canonical("p.weight_zero_point", library_zeros)
    assert torch.equal(read_full(our_zeros), zeros.to(torch.int32))
    assert torch.equal(reference.int_unpack(library_weights, bits) - offset,
                       unpack_from_int32(library_weights, bits, ints.shape).to(torch.int32))


@pytest.mark.parametrize("options", [{"bits": 4, "group_size": 16}, {"bits": 8, "group_size": -1}], ids=str)
def test_transformers_reads_the_compressed_tensors_fixtures_as_their_dequantized_twins(tiny_model, tmp_path,
                                                                                      options) -> None:
    """transformers (through compressed-tensors) decompresses the fixture checkpoint into exactly the
    weights of its twin, so the twin is what the format means (symmetric schemes: transformers
    5 cannot load asymmetric pack-quantized checkpoints, whose zero points it expects unpacked)."""
    packed = make_int_quant_model(tiny_model("llama"), tmp_path / "q", tmp_path / "dq", "compressed-tensors",
                                  symmetric=True, **options)
    ids = torch.tensor([[17, 42, 99, 7, 256, 3]])
    logits = [AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)(ids).logits for path in (packed, tmp_path / "dq")]
    torch.testing.assert_close(logits[0], logits[1], rtol=0, atol=0)


@pytest.mark.parametrize("method", ["gptq", "awq", "compressed-tensors"])
def test_a_shard_reads_as_the_same_part_of_the_whole(tiny_model, tmp_path, method: str) -> None:
    """Rows from any offset (column parallel) and word or group columns (row parallel), read lazily."""
    packed = make_int_quant_model(tiny_model("llama"), tmp_path / "q", tmp_path / "dq", method, symmetric=False,
                                  group_size=16)
    fmt = CheckpointFormat(IntQuantConfig(method=method, bits=4, group_size=16, zero_offset=int(method == "gptq")))
    checked = 0
    for name, tensor in load_file(str(packed / "model.safetensors")).items():
        if ".layers.0.mlp.down_proj." not in name or (converted := fmt.canonical(name, tensor)) is None:
            continue
        ours, src = converted
        if ours.endswith(("qweight", "scales", "zeros")):
            whole = read_full(src)
            assert torch.equal(read_shard(src, 0, 24, 16), whole[24:40]), ours
            assert torch.equal(read_shard(src, 1, 1, 2), whole[:, 1:3]), ours
            checked += 1
    assert checked == 3
