"""Models with recurrent layers (Mamba-2, Gated DeltaNet): each recurrence's two forms agree, state
slots live and die with their sequences, prefix-cache hits resume from state snapshots, and whole
models match transformers (every scheduling regime is in test_hf_parity's matrix; here the variants,
tensor parallelism and the engine's rules for such models)."""

from __future__ import annotations

import json

import pytest
import torch

from pagoda.engine.block_manager import BlockManager
from pagoda.engine.llm import LLM
from pagoda.engine.sampling_params import SamplingParams
from pagoda.engine.sequence import Sequence
from pagoda.kernels import recurrent
from tests.engine.hf_reference import engine_token_ids, hf_greedy, hf_greedy_uncached
from tests.engine.test_hf_parity import PROMPTS, REGIMES

GREEDY = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)


def _scan_inputs(length: int, heads: int = 6, groups: int = 3, head_dim: int = 4, state: int = 5):
    torch.manual_seed(length)
    x = torch.randn(length, heads, head_dim)
    dt = torch.nn.functional.softplus(torch.randn(length, heads))
    A = -torch.rand(heads) * 2
    B, C = torch.randn(length, groups, state), torch.randn(length, groups, state)
    D = torch.randn(heads)
    h0 = torch.randn(heads, head_dim, state)
    return x, dt, A, B, C, D, h0


@pytest.mark.parametrize(("length", "chunk"), [(1, 4), (7, 4), (8, 4), (13, 5), (20, 32)])
def test_chunked_scan_equals_the_recurrence(length: int, chunk: int) -> None:
    """ssd_prefill (chunks of matrix products) from a non-zero state gives every token's output and
    the final state that the token-by-token recurrence (ssd_decode) gives."""
    x, dt, A, B, C, D, h0 = _scan_inputs(length)
    y, final = recurrent.ssd_prefill(x, dt, A, B, C, D, h0, chunk)
    state, ys = h0[None], []
    for t in range(length):
        out, state = recurrent.ssd_decode(x[t : t + 1], dt[t : t + 1], A, B[t : t + 1], C[t : t + 1], D, state)
        ys.append(out[0])
    torch.testing.assert_close(y, torch.stack(ys), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(final, state[0], rtol=1e-4, atol=1e-4)


def _check_stepwise(chunked: tuple[torch.Tensor, torch.Tensor], q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    g: torch.Tensor, beta: torch.Tensor, state: torch.Tensor) -> None:
    """A chunked form's (outputs, final state) equal the token-by-token delta rule's (gated_delta_decode)."""
    states, ys = state[None], []
    for t in range(v.shape[0]):
        out, states = recurrent.gated_delta_decode(q[t : t + 1], k[t : t + 1], v[t : t + 1], g[t : t + 1],
                                                   beta[t : t + 1], states)
        ys.append(out[0])
    torch.testing.assert_close(chunked[0], torch.stack(ys), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(chunked[1], states[0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("length", "chunk", "key_heads"), [(1, 4, 2), (9, 4, 2), (16, 8, 4), (21, 64, 1)])
def test_chunked_delta_rule_equals_the_recurrence(length: int, chunk: int, key_heads: int) -> None:
    """gated_delta_prefill (a triangular solve per chunk) from a non-zero state equals the token-by-token
    delta rule (gated_delta_decode), value heads sharing key heads 1, 2 or 4 to one."""
    torch.manual_seed(length)
    heads = 4
    q, k = torch.randn(length, key_heads, 8), torch.randn(length, key_heads, 8)
    v, g, beta = torch.randn(length, heads, 6), -torch.rand(length, heads), torch.rand(length, heads)
    state = torch.randn(heads, 8, 6)
    _check_stepwise(recurrent.gated_delta_prefill(q, k, v, g, beta, state, chunk), q, k, v, g, beta, state)


@pytest.mark.parametrize(("length", "chunk"), [(1, 4), (9, 4), (16, 8), (21, 32)])
def test_chunked_kimi_delta_rule_equals_the_recurrence(length: int, chunk: int) -> None:
    """kda_prefill (a decay per key channel) from a non-zero state equals the token-by-token rule; with
    strong decays (up to e^-6 a token) the chunk's relative decays stay finite."""
    torch.manual_seed(length)
    heads, key_dim = 3, 8
    q, k, v = torch.randn(length, heads, key_dim), torch.randn(length, heads, key_dim), torch.randn(length, heads, 6)
    g, beta = -torch.rand(length, heads, key_dim) * 6, torch.rand(length, heads) * 2
    state = torch.randn(heads, key_dim, 6)
    _check_stepwise(recurrent.kda_prefill(q, k, v, g, beta, state, chunk), q, k, v, g, beta, state)
    # Per-channel decays that are all alike are Gated DeltaNet's per-head decay.
    same, _ = recurrent.kda_prefill(q, k, v, g[..., :1].expand_as(g), beta, state, chunk)
    torch.testing.assert_close(same, recurrent.gated_delta_prefill(q, k, v, g[..., 0], beta, state, chunk)[0],
                               rtol=1e-4, atol=1e-4)


def test_causal_conv_prefill_equals_decode_steps() -> None:
    """A chunk through conv_prefill from a carried state equals one conv_decode step per token."""
    torch.manual_seed(0)
    channels, kernel = 6, 4
    weight, bias = torch.randn(channels, kernel), torch.randn(channels)
    x, state = torch.randn(9, channels), torch.randn(channels, kernel - 1)
    out, new_state = recurrent.conv_prefill(x, state, weight, bias)
    carried, outs = state[None], []
    for t in range(x.shape[0]):
        step, carried = recurrent.conv_decode(x[t : t + 1], carried, weight, bias)
        outs.append(step[0])
    torch.testing.assert_close(out, torch.stack(outs))
    torch.testing.assert_close(new_state, carried[0])
    torch.testing.assert_close(new_state, x[-(kernel - 1):].t())


def test_state_slots_are_held_with_the_blocks() -> None:
    """A sequence takes a slot at its first allocation and gives it back when freed (finished or
    preempted); with every slot held, allocation fails as when blocks run out."""
    manager = BlockManager(num_blocks=16, block_size=4, enable_prefix_caching=False, state_slots=2)
    a, b, c = (Sequence(i, f"r{i}", 0, list(range(5)), SamplingParams()) for i in range(3))
    assert manager.allocate(a, 5) and manager.allocate(b, 5)
    assert {a.state_slot, b.state_slot} == {0, 1}
    free_blocks = manager.num_free_blocks
    assert not manager.allocate(c, 5) and c.state_slot is None and not c.block_tables
    assert manager.num_free_blocks == free_blocks
    assert manager.allocate(a, 1) and a.state_slot in (0, 1)  # a later step keeps its slot
    slot = b.state_slot
    manager.free(b)
    assert b.state_slot is None
    assert manager.allocate(c, 5) and c.state_slot == slot


@pytest.mark.parametrize("regime", REGIMES)
def test_bamba_matches_transformers_full_forward(tiny_model, regime: str) -> None:
    """Bamba in every scheduling regime, against transformers' full forward pass (its cached decoding of
    Bamba departs from that after a few tokens, ours does not)."""
    path = tiny_model("bamba")
    outs = LLM(str(path), dtype="float32", **REGIMES[regime]).generate(PROMPTS, GREEDY)
    for out in outs:
        assert out.outputs[0].token_ids == hf_greedy_uncached(path, out.prompt_token_ids, 12), out.prompt


def _with_config(path, tmp_path, **changes):
    """A model directory beside `path` sharing its files, its config.json changed (None: key removed)."""
    hub = tmp_path / "hub"
    hub.mkdir()
    for item in path.iterdir():
        if item.name != "config.json":
            (hub / item.name).symlink_to(item)
    config = json.loads((path / "config.json").read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key)
        else:
            config[key] = value
    (hub / "config.json").write_text(json.dumps(config))
    return hub


@pytest.mark.parametrize("variant", [
    # Granite 4.0's dense models (granite-4.0-h-micro): a shared MLP and no experts.
    {"num_local_experts": 0},
    # Attention with rotary (position_embedding_type "rope"), one group of heads, two chunks per prompt at most.
    {"position_embedding_type": "rope", "mamba_n_groups": 1, "mamba_chunk_size": 16},
])
def test_granite_hybrid_variants_match_transformers(tiny_model, variant: dict) -> None:
    path = tiny_model("granitemoehybrid", **variant)
    outs = LLM(str(path), dtype="float32", max_num_batched_tokens=7, block_size=4).generate(PROMPTS, GREEDY)
    for out in outs:
        assert out.outputs[0].token_ids == hf_greedy(path, out.prompt_token_ids, 12), out.prompt


def test_hub_layer_names_are_read(tiny_model, tmp_path) -> None:
    """Hub configs name the kinds "mamba" and "attention" (transformers 5 writes linear_attention,
    full_attention), and an infinite time-step limit as JSON's Infinity."""
    path = tiny_model("granitemoehybrid")
    hub = _with_config(path, tmp_path, layer_types=["mamba", "attention", "mamba"], time_step_limit=[0.0, float("inf")])
    outs = LLM(str(hub), dtype="float32").generate(PROMPTS[:3], GREEDY)
    for out in outs:
        assert out.outputs[0].token_ids == hf_greedy(path, out.prompt_token_ids, 12)


@pytest.mark.parametrize(("arch", "pattern"), [("nemotron_h", "M-*-M-"), ("nemotron_h_moe", "ME*EME")])
def test_nemotron_h_hub_config_pattern(tiny_model, tmp_path, arch: str, pattern: str) -> None:
    """Nemotron-H's hub configs lay the blocks out as hybrid_override_pattern (M: Mamba, -: MLP,
    *: attention, E: experts) with num_hidden_layers."""
    path = tiny_model(arch)
    hub = _with_config(path, tmp_path, layers_block_type=None, hybrid_override_pattern=pattern, num_hidden_layers=6)
    outs = LLM(str(hub), dtype="float32").generate(PROMPTS[:3], GREEDY)
    for out in outs:
        assert out.outputs[0].token_ids == hf_greedy(path, out.prompt_token_ids, 12)


@pytest.mark.parametrize("variant", [{"mamba_rms_norm": False}, {"mamba_norm_before_gate": False}])
def test_falcon_h1_gate_variants_match_transformers(tiny_model, variant: dict) -> None:
    """Falcon-H1's mixer without its norm (y * silu(z)), and with the norm after the gate (Mamba-2's)."""
    path = tiny_model("falcon_h1", **variant)
    outs = LLM(str(path), dtype="float32", max_num_batched_tokens=7, block_size=4).generate(PROMPTS, GREEDY)
    for out in outs:
        assert out.outputs[0].token_ids == hf_greedy(path, out.prompt_token_ids, 12), out.prompt


@pytest.mark.parametrize("variant", [{"rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}},
                                     {"linear_allow_neg_eigval": False}])
def test_olmo_hybrid_variants_match_transformers(tiny_model, variant: dict) -> None:
    """OLMo Hybrid's attention layers with rotary (its released checkpoints have none), and its delta rule
    with beta = sigmoid(b) (not 2 sigmoid(b))."""
    path = tiny_model("olmo_hybrid", **variant)
    outs = LLM(str(path), dtype="float32", max_num_batched_tokens=7, block_size=4).generate(PROMPTS, GREEDY)
    for out in outs:
        assert out.outputs[0].token_ids == hf_greedy(path, out.prompt_token_ids, 12), out.prompt


def test_mamba2_has_no_kv_cache_and_no_position_limit(tiny_model) -> None:
    """Without attention there is no KV cache (blocks only count tokens) and no position limit: the
    context defaults to 2048 tokens, as vLLM's where a config names none, and may be set past it."""
    path = tiny_model("mamba2")
    assert LLM(str(path), dtype="float32").engine.max_model_len == 2048
    llm = LLM(str(path), dtype="float32", max_model_len=8192, max_num_seqs=4)
    assert llm.engine.runner.kv_cache.numel() == 0 and llm.engine.max_model_len == 8192
    prompt = list(range(3, 200))
    out = llm.generate([{"prompt_token_ids": prompt}], GREEDY)[0]
    assert out.outputs[0].token_ids == hf_greedy(path, prompt, 12)


def test_nemotron_latent_experts_match_transformers(tiny_model) -> None:
    """Experts in a latent space (moe_latent_size) between two projections."""
    path = tiny_model("nemotron_h_moe", moe_latent_size=32)
    outs = LLM(str(path), dtype="float32", max_num_batched_tokens=7, block_size=4).generate(PROMPTS, GREEDY)
    for out in outs:
        assert out.outputs[0].token_ids == hf_greedy(path, out.prompt_token_ids, 12), out.prompt


def test_qwen3_next_hub_config_without_layer_types(tiny_model, tmp_path) -> None:
    """Qwen3-Next's hub config gives only full_attention_interval (every 4th layer attends)."""
    path = tiny_model("qwen3_next")
    hub = _with_config(path, tmp_path, layer_types=None, full_attention_interval=4)
    outs = LLM(str(hub), dtype="float32").generate(PROMPTS[:3], GREEDY)
    for out in outs:
        assert out.outputs[0].token_ids == hf_greedy(path, out.prompt_token_ids, 12)


def test_kimi_linear_hub_config(tiny_model, tmp_path) -> None:
    """Kimi Linear's hub config names its layers in `linear_attn_config` (1-based kda_layers and
    full_attn_layers, the KDA heads) and its dense MLPs by first_k_dense_replace."""
    path = tiny_model("kimi_linear")
    linear = {"kda_layers": [1, 2, 4], "full_attn_layers": [3], "num_heads": 4, "head_dim": 16,
              "short_conv_kernel_size": 4}
    hub = _with_config(path, tmp_path, layer_types=None, mlp_layer_types=None, linear_num_heads=None,
                       linear_head_dim=None, linear_conv_kernel_dim=None, linear_attn_config=linear,
                       first_k_dense_replace=1)
    outs = LLM(str(hub), dtype="float32").generate(PROMPTS[:3], GREEDY)
    for out in outs:
        assert out.outputs[0].token_ids == hf_greedy(path, out.prompt_token_ids, 12)


@pytest.mark.parametrize(("arch", "tp"), [("qwen3_5", 1), ("granitemoehybrid", 1), ("mamba2", 1), ("lfm2", 1),
                                          ("qwen3_5", 2)])
def test_prefix_cache_resumes_recurrent_states(tiny_model, arch: str, tp: int) -> None:
    """A prompt's recurrent states at its last full block, and at each block its decoding completes, are
    kept as snapshots: a later prompt that extends the prompt, repeats it, or carries on after its answer
    (a chat's next turn) resumes at the deepest one, its KV blocks and states both reused, and still
    matches transformers; without the snapshots' states (a cache whose restores are dropped) the answers
    differ."""
    path = tiny_model(arch)
    first = list(range(3, 40))  # 37 tokens: the snapshot is at 36 (9 blocks of 4)
    answer = hf_greedy(path, first, 12)  # decoding completes blocks at 40 and 48: snapshots there too
    turns = [first, first + [7, 8, 9, 10, 11, 12], first, first + answer + [7, 8]]
    llm = LLM(str(path), dtype="float32", block_size=4, max_num_batched_tokens=16, tensor_parallel_size=tp)
    stats = llm.engine.block_manager.stats
    try:
        for prompt, cached in zip(turns, (0, 36, 36, 48)):
            hits = stats.hits
            out = llm.generate([{"prompt_token_ids": prompt}], GREEDY)[0]
            assert out.outputs[0].token_ids == hf_greedy(path, prompt, 12)
            assert stats.hits - hits == cached
    finally:
        llm.engine.shutdown()
    if tp > 1:
        return
    broken = LLM(str(path), dtype="float32", block_size=4, max_num_batched_tokens=16)
    broken.engine.block_manager.states.restore = lambda snapshot, slot: None
    outs = [broken.generate([{"prompt_token_ids": prompt}], GREEDY)[0].outputs[0].token_ids for prompt in turns]
    assert outs[1] != hf_greedy(path, turns[1], 12) or outs[2] != hf_greedy(path, turns[2], 12)


def test_snapshots_are_evicted_least_recently_used_first() -> None:
    """Snapshot slots follow the live ones; a full pool evicts the least recently used snapshot, and a
    snapshot saved this step is not readable before the step ran."""
    from pagoda.engine.state_cache import StateCache

    cache = StateCache(live=2, snapshots=2)
    cache.save(0, block_hash=11)
    assert cache.snapshot_of(11) is None  # pending until the step that saves it ran
    cache.save(1, block_hash=22)
    assert cache.drain() == ([], [(0, 3), (1, 4)])
    assert cache.snapshot_of(11) == 3  # now the most recently used
    cache.save(0, block_hash=33)  # evicts 22's snapshot
    assert cache.snapshot_of(22) is None and cache.saves == [(0, 4)]
    cache.drain()
    assert (cache.snapshot_of(11), cache.snapshot_of(33)) == (3, 4)
    cache.reset()
    assert cache.snapshot_of(11) is None and sorted(cache.free_snapshots) == [3, 4]


def test_speculation_is_refused(tiny_model) -> None:
    """Drafts would have to be rolled back out of the recurrent states."""
    with pytest.raises(ValueError, match="speculative decoding is not supported"):
        LLM(str(tiny_model("granitemoehybrid")), dtype="float32",
            speculative_config={"method": "ngram", "num_speculative_tokens": 2})


def test_state_memory_bounds_concurrency(tiny_model) -> None:
    """Recurrent states take at most half of the cache budget: a small one holds 4 sequences' states and
    4 snapshots (of 24 KB each here), so 4 of 7 prompts run at once and the rest wait for a slot."""
    path = tiny_model("qwen3_5")
    llm = LLM(str(path), dtype="float32", kv_cache_memory_bytes=512 << 10, max_model_len=256)
    runner = llm.engine.runner
    assert (runner.num_state_slots, runner.num_snapshot_slots) == (4, 4)
    assert runner.state_bytes <= (512 << 10) // 2
    for out in llm.generate(PROMPTS, GREEDY):
        assert out.outputs[0].token_ids == hf_greedy(path, out.prompt_token_ids, 12), out.prompt
    with pytest.raises(ValueError, match="recurrent states take"):
        LLM(str(path), dtype="float32", kv_cache_memory_bytes=32 << 10)


def test_more_requests_than_slots_and_parallel_samples(tiny_model) -> None:
    """Two slots for seven prompts (and n=3 samples of one): sequences queue for slots, every one
    starts from zero states whatever its slot held before, and greedy samples agree."""
    path = tiny_model("granitemoehybrid")
    llm = LLM(str(path), dtype="float32", max_num_seqs=2, block_size=4)
    outs = llm.generate(PROMPTS, GREEDY)
    for out in outs:
        assert out.outputs[0].token_ids == hf_greedy(path, out.prompt_token_ids, 12), out.prompt
    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True, n=3)
    samples = llm.generate([PROMPTS[1]], params)[0].outputs
    assert [s.token_ids for s in samples] == [hf_greedy(path, outs[1].prompt_token_ids, 12)] * 3
    assert sorted(llm.engine.block_manager.states.free_slots) == [0, 1]


@pytest.mark.parametrize(("arch", "overrides", "tp"), [
    ("granitemoehybrid", {"mamba_n_groups": 1}, 2), ("granitemoehybrid", {}, 2),
    pytest.param("granitemoehybrid", {"mamba_n_groups": 1}, 4, marks=pytest.mark.slow),
    ("qwen3_5", {}, 2), ("qwen3_next", {}, 2), ("nemotron_h", {}, 2), ("nemotron_h_moe", {"moe_latent_size": 32}, 2),
    ("mamba2", {}, 2), ("falcon_h1", {}, 2), ("lfm2", {}, 2), ("lfm2_moe", {}, 2), ("olmo_hybrid", {}, 2),
    ("kimi_linear", {}, 2),
])
def test_tensor_parallel_hybrid_matches_transformers(tiny_model, arch: str, overrides: dict, tp: int) -> None:
    """Mamba: heads split over the ranks; B and C split with their groups (2 groups over 2 ranks) or held
    by every rank of a group (1 group), whose gated norm then sums its squares across ranks. Gated
    DeltaNet: key heads split, each rank with their value heads (Qwen3-Next's grouped rows too)."""
    path = tiny_model(arch, **overrides)
    prompts = [list(range(3, 3 + n)) for n in (5, 17, 30)]
    llm = LLM(str(path), dtype="float32", tensor_parallel_size=tp, block_size=4, max_num_batched_tokens=16)
    for prompt, tokens in zip(prompts, engine_token_ids(llm, prompts, GREEDY)):
        assert tokens == hf_greedy(path, prompt, 12)


def test_graph_padding_rows_touch_only_the_spare_slot() -> None:
    """A decode step padded to a CUDA graph's size (StaticDecodeInputs) gives the real rows the eager
    result and writes only the spare slot, so no sequence's states change under padding."""
    from pagoda.engine.attention import AttentionMetadata
    from pagoda.engine.cuda_graphs import StaticDecodeInputs
    from pagoda.engine.layers.mamba import Mamba2Mixer
    from pagoda.engine.layers.recurrent import bind_recurrent_state
    from pagoda.engine.model_config import MambaConfig

    torch.manual_seed(0)
    cfg = MambaConfig(num_heads=4, head_dim=8, num_groups=2, state_size=6, conv_kernel=4, chunk_size=8,
                      conv_bias=True, proj_bias=False, norm_eps=1e-6)
    mixer = Mamba2Mixer(16, cfg)
    for param in mixer.parameters():
        param.data.normal_(0.0, 0.3)
    bind_recurrent_state(mixer, 4, torch.float32, torch.float32, torch.device("cpu"))  # slots 0..2, spare 3
    mixer.conv_state.normal_()
    mixer.state.normal_()
    x = torch.randn(2, 16)
    meta = AttentionMetadata(
        slot_mapping=torch.tensor([0, 1]), query_start_loc=torch.arange(3, dtype=torch.int32),
        seq_lens=torch.tensor([5, 9], dtype=torch.int32), block_tables=torch.zeros(2, 3, dtype=torch.int32),
        num_decodes=2, max_query_len=1, max_seq_len=9, query_lens_host=[1, 1], seq_lens_host=[5, 9],
        state_slots=torch.tensor([2, 0]), state_slots_host=[2, 0])
    before = (mixer.conv_state.clone(), mixer.state.clone())
    eager = mixer(x, meta)
    after = (mixer.conv_state.clone(), mixer.state.clone())
    mixer.conv_state.copy_(before[0])
    mixer.state.copy_(before[1])
    static = StaticDecodeInputs(max_batch=4, max_blocks_per_seq=3, max_seq_len=64, device=torch.device("cpu"),
                                spare_state_slot=3)
    static.fill(torch.arange(2), torch.tensor([4, 8]), meta, 4)
    padded = mixer(torch.cat([x, torch.randn(2, 16)]), static.meta(4))
    torch.testing.assert_close(padded[:2], eager)
    for state, expected, untouched in zip((mixer.conv_state, mixer.state), after, before):
        torch.testing.assert_close(state[:3], expected[:3])
        assert not torch.equal(state[3], untouched[3])  # the padding rows wrote the spare slot
