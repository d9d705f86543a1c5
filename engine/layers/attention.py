"""The attention layer: owns its slice of the paged KV cache, delegates the math to a backend."""

from __future__ import annotations

import torch
from torch import nn

from pagoda.engine.attention import AttentionBackend, AttentionMetadata
from pagoda.engine.distributed import tp_rank
from pagoda.engine.kv_cache_layout import KVCacheLayout, plan_kv_cache
from pagoda.engine.layers.rotary import RotaryEmbedding
from pagoda.engine.layers.weights import copy_into, read_shard
from pagoda.kernels.reference import FP8_CACHE_DTYPES, QKNorm


class Attention(nn.Module):
    def __init__(
        self, num_heads: int, num_kv_heads: int, head_dim: int, sliding_window: int | None = None,
        scale: float | None = None, softcap: float = 0.0, sinks: bool = False,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        # Softmax scale of q.k: 1/sqrt(head_dim) unless the model says otherwise (Gemma's query_pre_attn_scalar).
        self.scale = head_dim**-0.5 if scale is None else scale
        self.sliding_window = sliding_window
        self.softcap = softcap  # > 0: logits capped to softcap * tanh(logit / softcap) (Gemma 2)
        # GPT-OSS's learned per-head sink logits (this rank's heads): a key of value zero in every softmax,
        # which lets a head attend to nothing.
        self.sinks = nn.Parameter(torch.empty(num_heads), requires_grad=False) if sinks else None
        if self.sinks is not None:
            self.sinks.weight_loader = self._sinks_loader
        # Bound by the model runner once the cache is allocated (see bind_kv_cache).
        self.k_cache = torch.empty(0)
        self.v_cache = torch.empty(0)
        self.backend: AttentionBackend | None = None
        # An FP8 cache's per-layer scales, from the checkpoint (calibrated by its quantization tool):
        # the cache holds K / k_scale and V / v_scale, so values past FP8's range fit it.
        self.k_scale = 1.0
        self.v_scale = 1.0
        self.scaled_cache = False  # whether the bound cache is FP8, which the scales are for
        self.kv_group = 0  # the KV-cache group whose block tables this layer reads (kv_cache_layout.py)
        # The earlier layer whose cache this one reads instead of keeping its own (see share_kv_of).
        self.kv_owner: Attention | None = None
        # Whether images' tokens stay causal here though they see past themselves elsewhere (Gemma 4's
        # global layers).
        self.causal_only = False

    def share_kv_of(self, owner: Attention) -> None:
        """Read `owner`'s K/V instead of keeping any: Gemma 4's last layers attend over the keys and values
        an earlier layer of their kind computed, so they take no cache slot, and store nothing (their
        forward gets the owner's K/V of the step). A plain attribute, not a submodule: `owner` is in the
        model once."""
        object.__setattr__(self, "kv_owner", owner)

    @property
    def _scales(self) -> tuple[float, float]:
        """(k_scale, v_scale) of the cache this layer reads: a sharing layer's K/V are its owner's, scaled
        as the owner stored them; (1, 1) but for a scaled FP8 cache."""
        scales = self.kv_owner if self.kv_owner is not None else self
        return (scales.k_scale, scales.v_scale) if self.scaled_cache else (1.0, 1.0)

    @property
    def stores_rotated(self) -> bool:
        """Whether rotate_and_store may write this layer's K/V: it keeps its own, and unscaled."""
        return self.kv_owner is None and self._scales == (1.0, 1.0)

    def rotate_and_store(
        self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rotary: RotaryEmbedding,
        qk_norm: QKNorm | None, meta: AttentionMetadata,
    ) -> torch.Tensor:
        """q, k, v [T, H, D] (views of the projection) through the per-head norms and `rotary`, k and v into
        the cache, in one op (a layer's kernel count matters at decode sizes): the rotated q, to pass
        to forward with no k or v. Only where stores_rotated."""
        from pagoda.kernels import ops

        table, rows = rotary.table_rows(positions)
        return ops.rotate_and_store_kv(rows, q, k, v, table, rotary.rotary_dim, rotary.is_neox, self.k_cache,
                                       self.v_cache, meta.for_group(self.kv_group).slot_mapping, qk_norm)

    def forward(
        self, q: torch.Tensor, k: torch.Tensor | None, v: torch.Tensor | None, meta: AttentionMetadata
    ) -> torch.Tensor:
        """q: [T, Hq*D], k/v: [T, Hkv*D] -> [T, Hq*D]; no k and v: rotate_and_store has stored them.

        With a scaled FP8 cache, K and V are divided by their scales before they are stored, and
        the scales come back as factors outside the kernels: k_scale in the softmax scale (q.k is
        linear in k), v_scale on the output (a weighted sum of v), so no kernel knows of them."""
        t = q.shape[0]
        meta = meta.for_group(self.kv_group)
        if self.causal_only:
            meta = meta.causal()
        k_scale, v_scale = self._scales
        if k is not None:
            k = (k / k_scale if k_scale != 1.0 else k).view(t, self.num_kv_heads, self.head_dim)
            v = (v / v_scale if v_scale != 1.0 else v).view(t, self.num_kv_heads, self.head_dim)
        out = self.backend.forward(
            q.view(t, self.num_heads, self.head_dim),
            k,
            v,
            self.k_cache,
            self.v_cache,
            meta,
            self.scale * k_scale,
            self.sliding_window,
            self.softcap,
            self.sinks,
            store_kv=self.kv_owner is None and k is not None,
        )
        out = out.view(t, self.num_heads * self.head_dim)
        return out * v_scale if v_scale != 1.0 else out

    def _sinks_loader(self, param: nn.Parameter, src: object) -> None:
        copy_into(param.data, read_shard(src, 0, tp_rank() * self.num_heads, self.num_heads))


def _attention_layers(model: nn.Module) -> list[Attention]:
    """The attention layers that keep K/V in the cache (not those reading another's), in model order."""
    return [m for m in model.modules() if isinstance(m, Attention) and m.kv_owner is None]


def attention_windows(model: nn.Module) -> list[int | None]:
    """Each cache-keeping attention layer's sliding window (None: full attention), in model order."""
    return [layer.sliding_window for layer in _attention_layers(model)]


def kv_cache_row(model: nn.Module) -> tuple[int, int]:
    """(heads, dim) of one token's K (or V) in one layer slot of the cache: the layers' own where they
    all agree; else one head as wide as the widest layer's K, each narrower layer viewing its first
    entries (Gemma 4's global layers have fewer, wider heads than its sliding ones). A block of the
    shared pool must hold any group's layers, so each slot is sized for the widest (vLLM pads its
    page sizes alike)."""
    shapes = {(layer.num_kv_heads, layer.head_dim) for layer in _attention_layers(model)}
    if len(shapes) <= 1:
        return next(iter(shapes), (1, 1))
    return 1, max(heads * dim for heads, dim in shapes)


def _layer_view(plane: torch.Tensor, layer: Attention) -> torch.Tensor:
    """A layer's [blocks, block_size, heads, dim] view of its slot (`plane`), whose rows may be wider:
    strided over whole rows, so blocks and tokens still flatten into one slot index."""
    shape = (layer.num_kv_heads, layer.head_dim)
    if tuple(plane.shape[-2:]) == shape:
        return plane
    return plane.flatten(-2)[..., : shape[0] * shape[1]].unflatten(-1, shape)


def bind_kv_cache(model: nn.Module, kv_cache: torch.Tensor, backend: AttentionBackend,
                  layout: KVCacheLayout | None = None) -> int:
    """Hands each layer its group and the views kv_cache[0, slot] (K) and kv_cache[-1, slot] (V) of its
    slot in that group's blocks (`layout`; default: one group, layer i in slot i); returns the layer count.
    A cache of one plane (latent attention) gives K and V the same view; a layer sharing another's K/V
    gets that one's views and group."""
    layers = _attention_layers(model)
    layout = layout or plan_kv_cache([None] * len(layers))
    if layout.num_layers != len(layers) or kv_cache.shape[1] != layout.group_size:
        raise ValueError(f"KV cache of {kv_cache.shape[1]} layer slots and a layout of {layout.num_layers} layers "
                         f"do not fit the model's {len(layers)} layers")
    for i, layer in enumerate(layers):
        layer.kv_group, slot = layout.place(i)
        layer.k_cache, layer.v_cache = _layer_view(kv_cache[0, slot], layer), _layer_view(kv_cache[-1, slot], layer)
        layer.backend, layer.scaled_cache = backend, kv_cache.dtype in FP8_CACHE_DTYPES
    for layer in model.modules():
        if isinstance(layer, Attention) and layer.kv_owner is not None:
            owner = layer.kv_owner
            layer.kv_group, layer.k_cache, layer.v_cache = owner.kv_group, owner.k_cache, owner.v_cache
            layer.backend, layer.scaled_cache = backend, owner.scaled_cache
    return len(layers)


def kv_block_bytes(num_layers: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype, block_size: int,
                   planes: int = 2) -> int:
    """Bytes one KV-cache block holds: K and V (`planes` 2; 1: a latent that is both) of `block_size`
    tokens over `num_layers` layers."""
    return planes * num_layers * num_kv_heads * head_dim * torch.empty((), dtype=dtype).element_size() * block_size
