"""The Triton backend against the reference backend on mixed steps: store, decode and varlen prefill together."""

from __future__ import annotations

import itertools

import pytest
import torch

from pagoda.engine.attention import AttentionMetadata, select_backend
from pagoda.engine.attention.torch_backend import TorchAttentionBackend
from pagoda.engine.attention.triton_backend import TritonAttentionBackend
from tests.kernels.conftest import DEVICE
from tests.kernels.numerics import assert_close
from tests.kernels.paged import make_paged_batch

pytestmark = pytest.mark.usefixtures("poisoned")


def test_select_backend_by_device() -> None:
    assert isinstance(select_backend(torch.device("cuda")), TritonAttentionBackend)
    assert isinstance(select_backend(torch.device("cpu")), TorchAttentionBackend)


@pytest.mark.parametrize(("dtype", "group", "window"), [(torch.float32, 2, None), (torch.bfloat16, 4, None), (torch.float16, 1, 7)])
def test_mixed_step_matches_reference_backend(dtype: torch.dtype, group: int, window: int | None) -> None:
    g = torch.Generator().manual_seed(group)
    bs, kv_heads, head_dim = 4, 2, 32
    # Two decodes, then a fresh prefill (sequence 2) and an extension (sequence 3) whose cached prefix is
    # sequence 2's first two blocks: blocks this very step writes, so the backend must store before attending.
    seq_lens = [13, 6, 2 * bs + 3, 2 * bs + 5]
    q_lens = [1, 1, 2 * bs + 3, 5]
    batch = make_paged_batch(
        seq_lens[2:] + seq_lens[:2], kv_heads=kv_heads, head_dim=head_dim, block_size=bs, dtype=dtype,
        device=DEVICE, g=g, shared_prefix_blocks=2,
    )
    tables = torch.cat([batch.block_tables[2:], batch.block_tables[:2]])
    slots = [
        int(tables[i, p // bs]) * bs + p % bs
        for i, (q_len, n) in enumerate(zip(q_lens, seq_lens))
        for p in range(n - q_len, n)
    ]
    slot_mapping = torch.tensor(slots, device=DEVICE)
    k_flat = batch.k_cache.view(-1, kv_heads, head_dim)
    v_flat = batch.v_cache.view(-1, kv_heads, head_dim)
    # The step's new K/V are what the cache holds at their slots; the caches start without them.
    k_new, v_new = k_flat[slot_mapping].clone(), v_flat[slot_mapping].clone()
    k_flat[slot_mapping] = float("nan")
    v_flat[slot_mapping] = float("nan")
    meta = AttentionMetadata(
        slot_mapping=slot_mapping,
        query_start_loc=torch.tensor([0, *itertools.accumulate(q_lens)], dtype=torch.int32, device=DEVICE),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=DEVICE),
        block_tables=tables,
        num_decodes=2,
        max_query_len=max(q_lens),
        max_seq_len=max(seq_lens),
        query_lens_host=q_lens,
        seq_lens_host=seq_lens,
    )
    q = torch.randn(sum(q_lens), kv_heads * group, head_dim, generator=g).to(DEVICE, dtype)
    finite = batch.finite()
    ref = TorchAttentionBackend().forward(q, k_new, v_new, finite.k_cache, finite.v_cache, meta, 0.2, window)
    out = TritonAttentionBackend().forward(q, k_new, v_new, batch.k_cache, batch.v_cache, meta, 0.2, window)
    assert_close(out, ref)
    assert torch.equal(batch.k_cache.nan_to_num(), finite.k_cache)
    assert torch.equal(batch.v_cache.nan_to_num(), finite.v_cache)
