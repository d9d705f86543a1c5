"""Integer-quantized checkpoint formats (GPTQ, AWQ, compressed-tensors' pack-quantized), read
into the one layout the linear layers hold (`pagoda.engine.layers.int_quant`).

Each format packs and orients its tensors its own way:
- GPTQ: qweight [K / per_word, N] packed along K; qzeros [G, N / per_word] packed along N, the
  original format storing zero - 1; scales [G, N]; g_idx [K];
- AWQ (GEMM): qweight and qzeros packed along N, the 4-bit values of a word in the order
  0, 2, 4, 6, 1, 3, 5, 7; scales [G, N];
- compressed-tensors: weight_packed [N, K / per_word] packed along K, values offset by
  2 ** (bits - 1); weight_scale [N, G]; weight_zero_point packed along N; weight_g_idx [K].
Tensors are wrapped in lazy views that unpack, repack or transpose only the slice a rank reads,
so tensor parallelism still reads each rank's shard alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from pagoda.engine.layers.int_quant import SUPPORTED_BITS, IntQuantConfig, pack_along_rows
from pagoda.engine.layers.weights import source_shape

# AWQ's GEMM packing: the value in a word's i-th 4 bits is that of column AWQ_ORDER[i] of its eight.
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)


def two_slices(index: Any, shape: tuple[int, ...]) -> tuple[slice, slice]:
    """(rows, columns) as concrete slices, from `[:]` or a (rows, columns) index."""
    parts = index if isinstance(index, tuple) else (index,)
    parts = parts + (slice(None),) * (2 - len(parts))
    return tuple(slice(*part.indices(size)[:2]) for part, size in zip(parts, shape))  # type: ignore[return-value]


class _Transposed:
    """A 2-D source read as its transpose."""

    def __init__(self, src: Any) -> None:
        self.src = src

    def get_shape(self) -> list[int]:
        return list(reversed(source_shape(self.src)))

    def __getitem__(self, index: Any) -> torch.Tensor:
        rows, cols = two_slices(index, tuple(self.get_shape()))
        return self.src[cols, rows].t()


class _Unpacked:
    """The unsigned integers of a source packed along its columns, (value + offset) & mask each;
    `order` places the values of a word that are not stored lowest bits first (AWQ)."""

    def __init__(self, src: Any, bits: int, offset: int = 0, order: tuple[int, ...] | None = None) -> None:
        self.src, self.bits, self.offset = src, bits, offset
        self.per_word = 32 // bits
        # The bit position, in units of `bits`, of the word's j-th column.
        self.position = torch.tensor(
            [order.index(j) for j in range(self.per_word)] if order else range(self.per_word), dtype=torch.int32)

    def get_shape(self) -> list[int]:
        rows, words = source_shape(self.src)
        return [rows, words * self.per_word]

    def __getitem__(self, index: Any) -> torch.Tensor:
        rows, cols = two_slices(index, tuple(self.get_shape()))
        first, last = cols.start // self.per_word, -(-cols.stop // self.per_word)
        words = self.src[rows, first:last].to(torch.int32)
        values = (words.unsqueeze(-1) >> (self.position * self.bits)) & ((1 << self.bits) - 1)
        values = (values.reshape(words.shape[0], -1) + self.offset) & ((1 << self.bits) - 1)
        begin = cols.start - first * self.per_word
        return values[:, begin : begin + cols.stop - cols.start]


class _Packed:
    """Unsigned integers of a source packed along its columns, lowest bits first (our layout)."""

    def __init__(self, src: Any, bits: int) -> None:
        self.src, self.bits, self.per_word = src, bits, 32 // bits

    def get_shape(self) -> list[int]:
        rows, cols = source_shape(self.src)
        return [rows, cols // self.per_word]

    def __getitem__(self, index: Any) -> torch.Tensor:
        rows, words = two_slices(index, tuple(self.get_shape()))
        return pack_along_rows(self.src[rows, words.start * self.per_word : words.stop * self.per_word], self.bits)


_SAFETENSORS_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32}


@dataclass
class CheckpointFormat:
    """How one format names and lays out a quantized projection's tensors; `prepare` finds the
    quantized projections (checkpoints keep some layers, e.g. the LM head, at full precision)."""

    config: IntQuantConfig
    # Checkpoint name of each quantized projection's packed weight -> the dtype of its scales.
    modules: dict[str, torch.dtype] = field(default_factory=dict)

    def prepare(self, files: list[Path]) -> None:
        suffix = "weight_scale" if self.config.method == "compressed-tensors" else "scales"
        for file in files:
            with safe_open(str(file), framework="pt") as f:
                scale_dtypes = {name.rpartition(".")[0]: f.get_slice(name).get_dtype()
                                for name in f.keys() if name.endswith("." + suffix)}
                for name in f.keys():
                    converted = self.canonical(name, None)
                    if converted is None or not converted[0].endswith(".qweight"):
                        continue
                    stored = scale_dtypes.get(name.rpartition(".")[0])
                    if stored not in _SAFETENSORS_DTYPES:
                        raise ValueError(f"checkpoint tensor {name!r}: no floating-point {suffix} beside it")
                    self.modules[name] = _SAFETENSORS_DTYPES[stored]

    def quantized_modules(self) -> dict[str, torch.dtype]:
        """Checkpoint name of every quantized projection's packed weight, and the dtype of its scales."""
        return self.modules

    def canonical(self, name: str, src: Any) -> tuple[str, Any] | None:
        """(our name, source in our layout) of a checkpoint tensor; None for one we do not need;
        the tensor itself when it is not part of a quantized projection."""
        module, _, leaf = name.rpartition(".")
        cfg, bits = self.config, self.config.bits
        if cfg.method == "compressed-tensors":
            mapping = {
                "weight_packed": lambda: ("qweight", src),
                "weight_scale": lambda: ("scales", src),
                # Packed along N; the stored values are offset like the weights', which makes them
                # zero points in our unsigned domain.
                "weight_zero_point": lambda: ("zeros", _Transposed(_Unpacked(_Transposed(src), bits))),
                "weight_g_idx": lambda: ("g_idx", src) if cfg.act_order else None,
                "weight_shape": lambda: None,
            }
        elif cfg.method == "gptq":
            mapping = {
                "qweight": lambda: ("qweight", _Transposed(src)),
                "qzeros": lambda: ("zeros", _Transposed(_Unpacked(src, bits, cfg.zero_offset))),
                "scales": lambda: ("scales", _Transposed(src)),
                "g_idx": lambda: ("g_idx", src) if cfg.act_order else None,
            }
        else:  # awq
            mapping = {
                "qweight": lambda: ("qweight", _Packed(_Transposed(_Unpacked(src, bits, order=AWQ_ORDER)), bits)),
                "qzeros": lambda: ("zeros", _Transposed(_Unpacked(src, bits, order=AWQ_ORDER))),
                "scales": lambda: ("scales", _Transposed(src)),
            }
        if leaf not in mapping:
            return name, src
        converted = mapping[leaf]()
        return None if converted is None else (f"{module}.{converted[0]}", converted[1])


def _bits(value: Any, method: str) -> int:
    bits = int(value)
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"{method} with {bits}-bit weights is not supported (supported: {SUPPORTED_BITS} bits)")
    return bits


def _group_size(value: Any, method: str) -> int:
    size = int(value if value is not None else -1)
    if size != -1 and size < 1:
        raise ValueError(f"{method} group_size must be positive or -1 (one group per row), got {size}")
    return size


def gptq_config(quant: dict[str, Any]) -> IntQuantConfig:
    """GPTQ (AutoGPTQ, GPTQModel, optimum), original `gptq` or `gptq_v2` checkpoint format."""
    fmt = quant.get("checkpoint_format", "gptq")
    if fmt not in ("gptq", "gptq_v2"):
        raise ValueError(f"gptq checkpoint_format {fmt!r} is not supported (supported: gptq, gptq_v2)")
    if quant.get("dynamic"):
        raise ValueError("gptq with per-module `dynamic` overrides is not supported")
    return IntQuantConfig(method="gptq", bits=_bits(quant.get("bits", 4), "gptq"),
                          group_size=_group_size(quant.get("group_size", -1), "gptq"),
                          act_order=bool(quant.get("desc_act", False)), zero_offset=1 if fmt == "gptq" else 0)


def awq_config(quant: dict[str, Any]) -> IntQuantConfig:
    """AutoAWQ's GEMM format (the usual AWQ checkpoint), with zero points."""
    version = str(quant.get("version", "gemm")).lower()
    if version != "gemm":
        raise ValueError(f"awq version {version!r} is not supported (supported: gemm)")
    if not quant.get("zero_point", True):
        raise ValueError("awq without zero points is not supported")
    return IntQuantConfig(method="awq", bits=_bits(quant.get("bits", quant.get("w_bit", 4)), "awq"),
                          group_size=_group_size(quant.get("group_size", quant.get("q_group_size", 128)), "awq"))


def compressed_tensors_config(quant: dict[str, Any]) -> IntQuantConfig:
    """compressed-tensors' `pack-quantized` weight-only schemes (llm-compressor's W4A16 and W8A16)."""
    groups = list((quant.get("config_groups") or {}).values())
    formats = {group.get("format") or quant.get("format") for group in groups}
    weights = [group.get("weights") or {} for group in groups]
    what = "compressed-tensors"
    if formats != {"pack-quantized"}:
        raise ValueError(f"{what} format {sorted(map(str, formats))} is not supported (supported: pack-quantized)")
    if any(group.get("input_activations") or group.get("output_activations") for group in groups):
        raise ValueError(f"{what} with quantized activations is not supported (supported: weight-only, "
                         "such as W4A16 and W8A16)")
    if len({tuple(sorted((k, str(v)) for k, v in w.items())) for w in weights}) != 1:
        raise ValueError(f"{what} with several weight schemes is not supported")
    scheme = weights[0]
    if scheme.get("type", "int") != "int" or scheme.get("strategy") not in ("group", "channel"):
        raise ValueError(f"{what} weights of type {scheme.get('type')!r} and strategy {scheme.get('strategy')!r} "
                         "are not supported (supported: int, group or channel)")
    actorder = scheme.get("actorder")
    if actorder not in (None, "group", "weight", "static", False):
        raise ValueError(f"{what} actorder {actorder!r} is not supported")
    size = -1 if scheme["strategy"] == "channel" else _group_size(scheme.get("group_size"), what)
    return IntQuantConfig(method=what, bits=_bits(scheme.get("num_bits", 4), what), group_size=size,
                          act_order=actorder == "group", stored_zeros=not scheme.get("symmetric", True))


INT_METHODS = {"gptq": gptq_config, "awq": awq_config, "compressed-tensors": compressed_tensors_config}
