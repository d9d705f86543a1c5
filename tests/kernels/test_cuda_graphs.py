"""What CUDA-graph decode can be checked on a CPU: the size buckets, and that padded rows are inert.

Capture and replay need a GPU; the padding contract does not: a step padded
to a captured size must give its real rows the unpadded result and leave
the KV cache alone in the padded ones.
"""

from __future__ import annotations

import pytest
import torch

from pagoda.engine.attention import AttentionMetadata
from pagoda.engine.attention.triton_backend import TritonAttentionBackend
from pagoda.engine.cuda_graphs import StaticDecodeInputs, capture_sizes, decode_forward, padded_size
from tests.kernels.conftest import DEVICE, ON_GPU
from tests.kernels.numerics import assert_close
from tests.kernels.paged import make_paged_batch


@pytest.mark.parametrize(
    ("max_num_seqs", "expected"),
    [(1, [1]), (3, [1, 2, 3]), (8, [1, 2, 4, 8]), (20, [1, 2, 4, 8, 16, 20]), (256, [1, 2, 4, *range(8, 257, 8)])],
)
def test_capture_sizes(max_num_seqs: int, expected: list[int]) -> None:
    assert capture_sizes(max_num_seqs) == expected


def test_padded_size_is_the_smallest_bucket_that_fits() -> None:
    sizes = capture_sizes(40)
    assert [padded_size(n, sizes) for n in (1, 2, 3, 5, 8, 9, 33, 40)] == [1, 2, 4, 8, 8, 16, 40, 40]
    assert padded_size(41, sizes) is None


def test_eager_off_cuda_or_when_enforced() -> None:
    model = torch.nn.Identity()
    assert decode_forward(model, torch.device("cpu"), False, 8, 64, 16) is model
    assert decode_forward(model, torch.device("cuda"), True, 8, 64, 16) is model


def test_padded_rows_are_inert() -> None:
    g = torch.Generator().manual_seed(0)
    bs, kv_heads, head_dim, group = 4, 2, 32, 2
    seq_lens = [7, 13, 3]
    batch = make_paged_batch(seq_lens, kv_heads=kv_heads, head_dim=head_dim, block_size=bs, dtype=torch.float32, device=DEVICE, g=g)
    batch = batch.finite()
    slots = torch.tensor([int(batch.block_tables[i, (n - 1) // bs]) * bs + (n - 1) % bs for i, n in enumerate(seq_lens)])
    meta = AttentionMetadata(
        slot_mapping=slots.to(DEVICE),
        query_start_loc=torch.arange(4, dtype=torch.int32, device=DEVICE),
        seq_lens=batch.seq_lens_tensor(),
        block_tables=batch.block_tables,
        num_decodes=3, max_query_len=1, max_seq_len=13, query_lens_host=[1, 1, 1], seq_lens_host=seq_lens,
    )
    q = torch.randn(3, kv_heads * group, head_dim, generator=g).to(DEVICE)
    k, v = torch.randn(2, 3, kv_heads, head_dim, generator=g).to(DEVICE)
    backend = TritonAttentionBackend()
    eager_cache = (batch.k_cache.clone(), batch.v_cache.clone())
    eager = backend.forward(q, k, v, *eager_cache, meta, 0.2, None)

    static = StaticDecodeInputs(max_batch=8, max_blocks_per_seq=6, max_seq_len=64, device=DEVICE)
    static.block_tables[0].fill_(10**6)  # stale entries from earlier steps must never be followed
    ids, pos = torch.arange(3, device=DEVICE), torch.tensor(seq_lens, device=DEVICE) - 1
    static.fill(ids, pos, meta, 8)
    padded = static.meta(8)
    assert static.input_ids[:3].tolist() == [0, 1, 2] and static.slot_mappings[0][3:].eq(-1).all()
    pad = lambda t: torch.cat([t, torch.randn(5, *t.shape[1:], generator=g).to(DEVICE)])  # noqa: E731
    out = backend.forward(pad(q), pad(k), pad(v), batch.k_cache, batch.v_cache, padded, 0.2, None)
    assert_close(out[:3], eager)
    assert torch.equal(out[3:], torch.zeros_like(out[3:]))
    assert torch.equal(batch.k_cache, eager_cache[0]) and torch.equal(batch.v_cache, eager_cache[1])


def test_each_kv_cache_group_gets_its_own_static_tables() -> None:
    """Sliding-window groups (kv_cache_layout.py) replay with their own slots and block tables."""
    tables = [torch.tensor([[1, 2], [3, 4]], dtype=torch.int32), torch.tensor([[0, 5], [6, 7]], dtype=torch.int32)]
    slots = [torch.tensor([9, 17]), torch.tensor([21, 29])]
    metas = [AttentionMetadata(
        slot_mapping=s.to(DEVICE), query_start_loc=torch.arange(3, dtype=torch.int32, device=DEVICE),
        seq_lens=torch.tensor([6, 8], dtype=torch.int32, device=DEVICE), block_tables=t.to(DEVICE), num_decodes=2,
        max_query_len=1, max_seq_len=8, query_lens_host=[1, 1], seq_lens_host=[6, 8]) for s, t in zip(slots, tables)]
    metas[0].groups = metas
    static = StaticDecodeInputs(max_batch=4, max_blocks_per_seq=3, max_seq_len=64, device=DEVICE, num_groups=2)
    static.fill(torch.arange(2, device=DEVICE), torch.tensor([5, 7], device=DEVICE), metas[0], 4)
    padded = static.meta(4)
    for g in range(2):
        group = padded.for_group(g)
        assert group.slot_mapping.tolist() == slots[g].tolist() + [-1, -1]
        assert group.block_tables[:2, :2].tolist() == tables[g].tolist()
        assert group.seq_lens.data_ptr() == padded.seq_lens.data_ptr()  # one static tensor for all


@pytest.mark.skipif(not ON_GPU, reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("arch", ["llama", "qwen3", "qwen3_moe", "mixtral", "gemma3", "granitemoehybrid"])
def test_graph_replay_matches_eager_decoding(arch: str, tiny_model) -> None:
    """Same greedy tokens with decode graphs (including padded batch sizes) as launched kernel by kernel."""
    from pagoda.engine.cuda_graphs import DecodeCudaGraphs
    from pagoda.engine.llm import LLM
    from pagoda.engine.sampling_params import SamplingParams

    path = str(tiny_model(arch))
    prompts = ["Hello", "Once upon a time there was", "The quick brown fox", "東京は日本の首都です。", "def fib(n):"]
    params = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True)
    # Fixed cache sizes: two engines share the GPU, and each would otherwise claim 90% of it.
    graphed = LLM(path, max_num_seqs=16, num_kv_blocks=512)
    assert isinstance(graphed.engine.runner.forward, DecodeCudaGraphs)
    eager = LLM(path, max_num_seqs=16, num_kv_blocks=512, enforce_eager=True)
    for a, b in zip(graphed.generate(prompts, params), eager.generate(prompts, params)):
        assert a.outputs[0].token_ids == b.outputs[0].token_ids
