"""LoRA adapters: many fine-tunes of one base model, served in the same batch.

An adapter (PEFT's format: adapter_config.json + adapter_model.safetensors)
adds scale * B @ A to some of the model's projections. Merging it into the
weights would need a model copy per adapter; instead every projection keeps
the A and B of `max_loras` adapter slots stacked, and adds to each token the
delta of that token's own adapter:

    y += ((x @ A_all^T) * mask) @ B_all^T

A_all stacks the slots' A matrices (max_loras * max_rank rows), and the mask
keeps in each token's row only the rank columns of its slot (all zero for a
token of the base model). Any mix of adapters is two thin matmuls of fixed
shape per projection; an adapter of lower rank is padded with zeros. Fused
projections (q/k/v, gate/up) keep one A per part and add each part's delta
to its own columns of the output.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

# A part of a projection: (part id, first output column, number of columns).
# The id is what the model's packed_modules name it ("q", 0, ...), or None for the whole output.
Part = tuple[Any, int, int]

_PEFT_PREFIX = "base_model.model."


@dataclass(frozen=True)
class LoRARequest:
    """Which adapter a request runs with: served under `name`, read from the directory `path`."""

    name: str
    path: str


@dataclass(eq=False)
class LoRAAdapter:
    """An adapter's weights on the host, keyed by (our module name, part); B carries the scale."""

    name: str
    path: str
    rank: int
    weights: dict[tuple[str, Any], tuple[torch.Tensor, torch.Tensor]] = field(repr=False)

    @property
    def cache_salt(self) -> int:
        """Starts the prefix-cache hash chain: KV computed under one adapter is never reused by another."""
        return hash(("lora", self.name, self.path))


def _refuse(config: dict[str, Any], path: Path) -> None:
    unsupported = {
        "use_dora": "DoRA", "modules_to_save": "modules_to_save", "layers_to_transform": "layers_to_transform",
        "rank_pattern": "per-module ranks (rank_pattern)", "alpha_pattern": "per-module alphas (alpha_pattern)",
    }
    for key, what in unsupported.items():
        if config.get(key):
            raise ValueError(f"LoRA adapter {path}: {what} is not supported")
    if config.get("bias", "none") != "none":
        raise ValueError(f"LoRA adapter {path}: bias {config['bias']!r} is not supported (only 'none')")
    if config.get("fan_in_fan_out"):
        raise ValueError(f"LoRA adapter {path}: fan_in_fan_out is not supported")


def read_adapter(request: LoRARequest, packed_modules: dict[str, tuple[str, Any]]) -> LoRAAdapter:
    """Reads a PEFT adapter directory; ValueError, naming the problem, for anything it cannot serve.

    `packed_modules` maps checkpoint projection names to our fused ones (q_proj -> qkv_proj part "q").
    """
    path = Path(request.path)
    config_file, weights_file = path / "adapter_config.json", path / "adapter_model.safetensors"
    try:
        present = config_file.is_file() and weights_file.is_file()
    except OSError as exc:  # a name too long, a directory it may not read: the client's path, not our fault
        raise ValueError(f"LoRA adapter {str(path)[:200]}: {exc.strerror or exc}") from None
    if not present:
        raise ValueError(f"LoRA adapter {path}: expected adapter_config.json and adapter_model.safetensors")
    try:
        config = json.loads(config_file.read_text())
        rank, alpha = int(config["r"]), float(config.get("lora_alpha", config["r"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"LoRA adapter {path}: unreadable adapter_config.json ({exc})") from None
    if rank < 1:
        raise ValueError(f"LoRA adapter {path}: rank r must be >= 1")
    _refuse(config, path)
    scale = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
    tensors = load_file(str(weights_file))
    pairs: dict[tuple[str, Any], dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        name = key.removeprefix(_PEFT_PREFIX)
        module, kind = None, None
        for marker in (".lora_A.", ".lora_B."):
            if marker in name:
                module, kind = name.split(marker)[0], marker[1:-1]
        if module is None:
            raise ValueError(f"LoRA adapter {path}: tensor {key!r} is not a LoRA A or B matrix")
        parent, _, leaf = module.rpartition(".")
        ours, part = packed_modules.get(leaf, (leaf, None))
        pairs.setdefault((f"{parent}.{ours}", part), {})[kind] = tensor
    weights = {}
    for target, pair in pairs.items():
        if set(pair) != {"lora_A", "lora_B"}:
            raise ValueError(f"LoRA adapter {path}: {target[0]} lacks its lora_A or lora_B")
        a, b = pair["lora_A"], pair["lora_B"]
        if a.shape[0] != rank or b.shape[1] != rank:
            raise ValueError(f"LoRA adapter {path}: {target[0]} has shapes {tuple(a.shape)}, {tuple(b.shape)}, "
                             f"not rank {rank}")
        weights[target] = (a, b * scale)
    if not weights:
        raise ValueError(f"LoRA adapter {path}: no LoRA weights")
    return LoRAAdapter(request.name, str(path), rank, weights)


class LayerLoRA:
    """The slots of one projection: A [parts, slots, rank, in] and, per part, B [columns, slots, rank],
    each holding this rank's share (the projection's `lora_shard` says which)."""

    def __init__(self, slots: LoRASlots, module: nn.Module) -> None:
        self.slots = slots
        self.in_features = module.lora_in_features
        self.parts: list[Part] = module.lora_parts()
        self.shard = module.lora_shard
        n, r = slots.max_loras, slots.max_rank
        self.a = torch.zeros(len(self.parts), n, r, self.in_features, dtype=slots.dtype, device=slots.device)
        self.b = [torch.zeros(size, n, r, dtype=slots.dtype, device=slots.device) for _, _, size in self.parts]

    def part_index(self, part: Any) -> int | None:
        return next((i for i, (pid, _, _) in enumerate(self.parts) if pid == part), None)

    def load(self, slot: int, part: int, a: torch.Tensor | None, b: torch.Tensor | None) -> None:
        """Puts this rank's share of one part of an adapter in `slot`; None clears it (the adapter
        leaves this part alone)."""
        self.a[part, slot].zero_()
        self.b[part][:, slot].zero_()
        if a is not None and b is not None:
            a, b = self.shard(self.parts[part][0], a, b)
            self.a[part, slot, : a.shape[0]].copy_(a)
            self.b[part][:, slot, : b.shape[1]].copy_(b)

    def apply(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """y plus each token's adapter delta; y unchanged when no token of the step has an adapter."""
        mask = self.slots.mask
        if mask is None:
            return y
        width = self.slots.max_loras * self.slots.max_rank
        xa = nn.functional.linear(x, self.a.view(-1, self.in_features)).view(-1, len(self.parts), width)
        xa = xa * mask[:, None, :]
        for i, (_, offset, size) in enumerate(self.parts):
            y[:, offset : offset + size] += nn.functional.linear(xa[:, i], self.b[i].view(size, width))
        return y


class LoRASlots:
    """The device side of one rank: which adapter sits in which slot, and the current step's mask.

    With tensor parallelism the driver decides (`plan`) and loads its share; the step carries
    the loads and the per-token slots to the workers, which load theirs (`load`) and set the
    same mask (`set_mask`).
    """

    def __init__(self, model: nn.Module, max_loras: int, max_rank: int, dtype: torch.dtype,
                 device: torch.device) -> None:
        if max_loras < 1 or max_rank < 1:
            raise ValueError("max_loras and max_lora_rank must be >= 1")
        self.max_loras, self.max_rank, self.dtype, self.device = max_loras, max_rank, dtype, device
        self.layers: dict[str, LayerLoRA] = {}
        for name, module in model.named_modules():
            if hasattr(module, "lora_parts"):
                module.lora = self.layers[name] = LayerLoRA(self, module)
        self._resident: list[LoRAAdapter | None] = [None] * max_loras
        self._last_used = [0] * max_loras
        self._clock = 0
        self.mask: torch.Tensor | None = None  # [tokens, max_loras * max_rank] during a step with adapters

    def check(self, adapter: LoRAAdapter) -> None:
        """ValueError if the adapter does not fit this model and these slots."""
        if adapter.rank > self.max_rank:
            raise ValueError(f"LoRA adapter {adapter.name!r} has rank {adapter.rank}, above max_lora_rank "
                             f"{self.max_rank}")
        for (module, part), (a, b) in adapter.weights.items():
            layer = self.layers.get(module)
            if layer is None or layer.part_index(part) is None:
                raise ValueError(f"LoRA adapter {adapter.name!r} targets {module} ({part}), which takes no adapter "
                                 "here (supported: the attention and MLP projections)")
            try:
                layer.shard(part, a, b)
            except ValueError as exc:
                raise ValueError(f"LoRA adapter {adapter.name!r}: {module} {exc}") from None

    def load(self, slot: int, adapter: LoRAAdapter) -> None:
        """Puts an adapter (this rank's share of it) in `slot`."""
        for name, layer in self.layers.items():
            for i, (part, _, _) in enumerate(layer.parts):
                a, b = adapter.weights.get((name, part), (None, None))
                layer.load(slot, i, a, b)
        self._resident[slot] = adapter

    def plan(
        self, adapters: list[tuple[LoRAAdapter | None, int]], keep: frozenset[LoRAAdapter] = frozenset(),
    ) -> tuple[list[int], list[tuple[int, LoRAAdapter]]]:
        """A step's slots: (adapter or None, number of tokens) per scheduled sequence, in order, give
        the slot of every token (-1: none; an empty list when no token has an adapter) and the
        adapters this step loaded into slots: into the least recently used slot whose adapter is
        not in `keep` (those of running sequences this step leaves out), else the least recently
        used. The scheduler admits at most max_loras distinct adapters, so every one finds a slot."""
        if all(adapter is None for adapter, _ in adapters):
            return [], []
        self._clock += 1
        slots: dict[int, int] = {}
        loads: list[tuple[int, LoRAAdapter]] = []
        for adapter, _ in adapters:
            if adapter is None or id(adapter) in slots:
                continue
            slot = next((s for s, resident in enumerate(self._resident) if resident is adapter), None)
            if slot is None:
                free = [s for s in range(self.max_loras) if s not in slots.values()]
                slot = min(free, key=lambda s: (self._resident[s] in keep, self._last_used[s]))
                self.load(slot, adapter)
                loads.append((slot, adapter))
            slots[id(adapter)] = slot
            self._last_used[slot] = self._clock
        per_token = [slots[id(adapter)] if adapter is not None else -1 for adapter, n in adapters for _ in range(n)]
        return per_token, loads

    def set_mask(self, per_token: list[int]) -> None:
        """The step's mask from every token's slot; none (the LoRA path skipped) for an empty list."""
        if not per_token:
            self.mask = None
            return
        slots = torch.tensor(per_token, device=self.device)
        onehot = slots[:, None] == torch.arange(self.max_loras, device=self.device)[None, :]
        self.mask = onehot.to(self.dtype).repeat_interleave(self.max_rank, dim=1)

    def forget(self, adapter: LoRAAdapter) -> None:
        """Frees the slot of an adapter that is no longer served."""
        for slot, resident in enumerate(self._resident):
            if resident is adapter:
                self._resident[slot] = None
