"""Random paged-KV batches for the attention tests, built so that wrong reads show up as NaN.

Every cache slot no sequence owns is NaN, including the tail of each
partially filled last block, and block tables are padded with a block that
is entirely NaN: a kernel that reads (and uses) a key past a sequence's
length, or follows a padding entry, produces NaN.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class PagedBatch:
    k_cache: torch.Tensor  # [num_blocks, block_size, Hkv, D]
    v_cache: torch.Tensor
    block_tables: torch.Tensor  # [S, max_blocks] int32
    seq_lens: list[int]

    def finite(self) -> PagedBatch:
        """The same batch with unowned slots zeroed, for the reference, which gathers (then masks) them."""
        def zeroed(cache: torch.Tensor) -> torch.Tensor:  # via fp32: FP8 tensors have no nan_to_num
            return cache.float().nan_to_num().to(cache.dtype)

        return PagedBatch(zeroed(self.k_cache), zeroed(self.v_cache), self.block_tables, self.seq_lens)

    def seq_lens_tensor(self) -> torch.Tensor:
        return torch.tensor(self.seq_lens, dtype=torch.int32, device=self.k_cache.device)


def make_paged_batch(
    seq_lens: list[int],
    *,
    kv_heads: int,
    head_dim: int,
    block_size: int,
    dtype: torch.dtype,
    device: torch.device,
    g: torch.Generator,
    shared_prefix_blocks: int = 0,
    extra_table_columns: int = 1,
) -> PagedBatch:
    """Sequence 1 shares its first `shared_prefix_blocks` physical blocks with sequence 0 (a prefix-cache hit)."""
    per_seq = [-(-n // block_size) for n in seq_lens]
    shared = shared_prefix_blocks
    if shared:
        assert len(seq_lens) > 1 and min(seq_lens[:2]) >= shared * block_size, "both sequences must cover the shared prefix"
    num_blocks = sum(per_seq) - shared + 1
    ids = torch.randperm(num_blocks, generator=g).tolist()
    pad_block = ids.pop()
    tables: list[list[int]] = []
    for i, n in enumerate(per_seq):
        own = ids[: n - (shared if i == 1 else 0)]
        del ids[: len(own)]
        tables.append((tables[0][:shared] if i == 1 else []) + own)
    width = max(per_seq) + extra_table_columns
    padded = [t + [pad_block] * (width - len(t)) for t in tables]

    nan = float("nan")
    k_cache = torch.full((num_blocks, block_size, kv_heads, head_dim), nan, dtype=dtype)
    v_cache = torch.full_like(k_cache, nan)
    for table, n in zip(tables, seq_lens):
        pos = torch.arange(n)
        blocks, offs = torch.tensor(table)[pos // block_size], pos % block_size
        fresh = k_cache[blocks, offs].isnan()  # shared prefix blocks are written once, by sequence 0
        k_cache[blocks, offs] = torch.where(fresh, torch.randn(n, kv_heads, head_dim, generator=g).to(dtype), k_cache[blocks, offs])
        v_cache[blocks, offs] = torch.where(fresh, torch.randn(n, kv_heads, head_dim, generator=g).to(dtype), v_cache[blocks, offs])
    return PagedBatch(
        k_cache.to(device), v_cache.to(device), torch.tensor(padded, dtype=torch.int32, device=device), list(seq_lens)
    )
