"""LoRA adapters: an adapter served beside the base model gives what the model with the
adapter merged into its weights gives (ours and Hugging Face's), in batches that mix
adapters, with fewer slots than adapters, and without sharing KV blocks across adapters."""

from __future__ import annotations

import json
import pathlib
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from pagoda.engine.fixtures import make_tiny_lora
from pagoda.engine.llm import LLM
from pagoda.engine.lora import LoRARequest
from pagoda.engine.sampling_params import SamplingParams
from tests.engine.hf_reference import hf_greedy

PROMPTS = [[1, 17, 42, 99, 7, 256, 3, 88, 12, 5, 61], [1, 300, 4, 4, 19], [1, 17, 42, 99, 7, 256, 3, 88, 12, 9]]
GREEDY = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True, logprobs=0)


def merge(model_dir: pathlib.Path, adapter_dir: pathlib.Path, out_dir: pathlib.Path) -> pathlib.Path:
    """The model with the adapter's scale * B @ A added to its weights: what serving it must equal."""
    shutil.copytree(model_dir, out_dir)
    weights = load_file(str(model_dir / "model.safetensors"))
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    scale = config["lora_alpha"] / config["r"]
    adapter = load_file(str(adapter_dir / "adapter_model.safetensors"))
    for key, a in adapter.items():
        if ".lora_A." in key:
            module = key.removeprefix("base_model.model.").split(".lora_A.")[0]
            b = adapter[key.replace(".lora_A.", ".lora_B.")]
            weights[f"{module}.weight"] = weights[f"{module}.weight"] + scale * (b @ a)
    save_file(weights, str(out_dir / "model.safetensors"))
    return out_dir


@pytest.fixture(scope="module")
def setup(tiny_model, tmp_path_factory):
    base = tiny_model("llama")
    root = tmp_path_factory.mktemp("lora")
    full = make_tiny_lora(base, root / "full", rank=8, seed=1)
    attn = make_tiny_lora(base, root / "attn", rank=4, alpha=8.0, targets=("q_proj", "v_proj"), seed=2)
    return base, {"full": full, "attn": attn}, {"full": merge(base, full, root / "merged-full"),
                                                "attn": merge(base, attn, root / "merged-attn")}


def run(llm: LLM, adapter: LoRARequest | None) -> list[tuple[list[int], list[float]]]:
    outs = llm.generate(PROMPTS, GREEDY, lora_request=adapter)
    return [(o.outputs[0].token_ids, [lp[t].logprob for lp, t in zip(o.outputs[0].logprobs, o.outputs[0].token_ids)])
            for o in outs]


def assert_same(got: list, want: list) -> None:
    for (tokens, logprobs), (want_tokens, want_logprobs) in zip(got, want):
        assert tokens == want_tokens
        assert torch.allclose(torch.tensor(logprobs), torch.tensor(want_logprobs), atol=1e-4)


def test_adapter_equals_merged_weights(setup) -> None:
    base, adapters, merged = setup
    llm = LLM(str(base), dtype="float32", block_size=4, enable_lora=True, max_loras=2, max_lora_rank=8)
    plain = run(llm, None)  # first, so its prompt blocks sit in the prefix cache when the adapters come
    for name, path in adapters.items():
        reference = run(LLM(str(merged[name]), dtype="float32", block_size=4), None)
        got = run(llm, LoRARequest(name, str(path)))
        assert_same(got, reference)
        assert [t for t, _ in got] != [t for t, _ in plain], "the adapter changes the outputs"
        assert got[0][0] == hf_greedy(merged[name], PROMPTS[0], GREEDY.max_tokens)
    # The base model is unchanged by the adapters resident in the slots.
    assert_same(run(llm, None), plain)
    # One adapter per prompt, in one call.
    per_prompt = [LoRARequest("full", str(adapters["full"])), None, LoRARequest("attn", str(adapters["attn"]))]
    outs = llm.generate(PROMPTS, GREEDY, lora_request=per_prompt)
    assert [o.outputs[0].token_ids for o in outs] == [
        run(llm, per_prompt[0])[0][0], plain[1][0], run(llm, per_prompt[2])[2][0]]


@pytest.mark.parametrize("max_loras", [1, 2])
def test_mixed_batches(setup, max_loras: int) -> None:
    """Base and both adapters interleaved in one batch give each request its own answer; with
    one slot, the scheduler runs one adapter at a time and still finishes everything."""
    base, adapters, merged = setup
    expected = {None: run(LLM(str(base), dtype="float32", block_size=4), None)}
    for name in adapters:
        expected[name] = run(LLM(str(merged[name]), dtype="float32", block_size=4), None)
    llm = LLM(str(base), dtype="float32", block_size=4, enable_lora=True, max_loras=max_loras, max_lora_rank=8)
    engine = llm.engine
    requests = {}
    for i, name in enumerate([None, "full", "attn", "full", None, "attn"] * 2):
        lora = LoRARequest(name, str(adapters[name])) if name else None
        prompt = i % len(PROMPTS)
        engine.add_request(f"r{i}", PROMPTS[prompt], GREEDY, lora_request=lora)
        requests[f"r{i}"] = (name, prompt)
    finals = {}
    most_adapters = 0
    while engine.has_unfinished_requests():
        running = {seq.lora for seq in engine.scheduler.running if seq.lora is not None}
        most_adapters = max(most_adapters, len(running))
        for out in engine.step():
            if out.finished:
                finals[out.request_id] = out
        assert len({seq.lora for seq in engine.scheduler.running if seq.lora is not None}) <= max_loras
    assert most_adapters <= max_loras
    for request_id, (name, prompt) in requests.items():
        c = finals[request_id].outputs[0]
        logprobs = [lp[t].logprob for lp, t in zip(c.logprobs, c.token_ids)]
        assert_same([(c.token_ids, logprobs)], [expected[name][prompt]])
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_usable


def test_bad_adapters_are_refused(setup, tmp_path) -> None:
    base, adapters, _ = setup
    llm = LLM(str(base), dtype="float32", block_size=4, enable_lora=True, max_loras=1, max_lora_rank=4)
    with pytest.raises(ValueError, match="rank 8, above max_lora_rank 4"):
        llm.generate(PROMPTS[0], GREEDY, lora_request=LoRARequest("full", str(adapters["full"])))
    with pytest.raises(ValueError, match="adapter_config.json and adapter_model.safetensors"):
        llm.generate(PROMPTS[0], GREEDY, lora_request=LoRARequest("none", str(tmp_path)))
    embed = tmp_path / "embed"
    shutil.copytree(adapters["attn"], embed)
    tensors = load_file(str(embed / "adapter_model.safetensors"))
    tensors["base_model.model.model.embed_tokens.lora_A.weight"] = torch.zeros(4, 416)
    tensors["base_model.model.model.embed_tokens.lora_B.weight"] = torch.zeros(64, 4)
    save_file(tensors, str(embed / "adapter_model.safetensors"))
    with pytest.raises(ValueError, match="embed_tokens .* takes no adapter"):
        llm.generate(PROMPTS[0], GREEDY, lora_request=LoRARequest("embed", str(embed)))
    dora = tmp_path / "dora"
    shutil.copytree(adapters["attn"], dora)
    config = json.loads((dora / "adapter_config.json").read_text())
    (dora / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    with pytest.raises(ValueError, match="DoRA is not supported"):
        llm.generate(PROMPTS[0], GREEDY, lora_request=LoRARequest("dora", str(dora)))
    assert not llm.engine.has_unfinished_requests() and not llm.engine.loras
    # One name, one adapter; removal is refused while in use.
    attn = LoRARequest("attn", str(adapters["attn"]))
    llm.engine.add_lora(attn)
    with pytest.raises(ValueError, match="already served from"):
        llm.engine.add_lora(LoRARequest("attn", str(adapters["full"])))
    llm.engine.add_request("busy", PROMPTS[0], GREEDY, lora_request=attn)
    with pytest.raises(ValueError, match="in use"):
        llm.engine.remove_lora("attn")
    while llm.engine.has_unfinished_requests():
        llm.engine.step()
    llm.engine.remove_lora("attn")
    assert not llm.engine.loras


def test_lora_needs_enabling(setup) -> None:
    base, adapters, _ = setup
    llm = LLM(str(base), dtype="float32", block_size=4)
    with pytest.raises(ValueError, match="not enabled"):
        llm.generate(PROMPTS[0], GREEDY, lora_request=LoRARequest("full", str(adapters["full"])))


@pytest.mark.parametrize("tp", [2, 4])
def test_adapters_under_tensor_parallelism(setup, tp: int) -> None:
    """Each rank holds its share of every adapter (B's rows of column-parallel projections, A's
    columns of row-parallel ones, k/v rows of replicated KV heads at tp=4); workers load the
    adapters the driver placed, from the step it ships them."""
    base, adapters, merged = setup
    per_prompt = [LoRARequest("full", str(adapters["full"])), None, LoRARequest("attn", str(adapters["attn"]))]
    llm = LLM(str(base), dtype="float32", block_size=4, tensor_parallel_size=tp, enable_lora=True, max_loras=2,
              max_lora_rank=8)
    try:
        outs = llm.generate(PROMPTS, GREEDY, lora_request=per_prompt)
    finally:
        llm.engine.shutdown()
    references = {"full": run(LLM(str(merged["full"]), dtype="float32", block_size=4), None),
                  "attn": run(LLM(str(merged["attn"]), dtype="float32", block_size=4), None),
                  None: run(LLM(str(base), dtype="float32", block_size=4), None)}
    for i, (out, lora) in enumerate(zip(outs, per_prompt)):
        c = out.outputs[0]
        logprobs = [lp[t].logprob for lp, t in zip(c.logprobs, c.token_ids)]
        assert_same([(c.token_ids, logprobs)], [references[lora.name if lora else None][i]])


def test_slots_of_running_adapters_are_kept(setup, tmp_path) -> None:
    """A new adapter takes the least recently used slot whose adapter no running sequence needs,
    not the slot of an adapter whose sequences only sat this step out (they would reload it)."""
    base, adapters, _ = setup
    llm = LLM(str(base), dtype="float32", block_size=4, enable_lora=True, max_loras=2, max_lora_rank=8)
    full = llm.engine.add_lora(LoRARequest("full", str(adapters["full"])))
    attn = llm.engine.add_lora(LoRARequest("attn", str(adapters["attn"])))
    third = llm.engine.add_lora(LoRARequest("third", str(make_tiny_lora(base, tmp_path / "third", rank=2, seed=3))))
    slots = llm.engine.runner.lora
    per_token, loads = slots.plan([(full, 2), (None, 1), (attn, 1)])
    assert per_token == [0, 0, -1, 1] and [(s, a.name) for s, a in loads] == [(0, "full"), (1, "attn")]
    slots.plan([(attn, 1)])  # "full" is now the least recently used
    _, loads = slots.plan([(third, 1)], keep=frozenset({full}))
    assert [(s, a.name) for s, a in loads] == [(1, "third")]  # not full's slot 0: its sequences still run
    _, loads = slots.plan([(attn, 1)], keep=frozenset())
    assert [(s, a.name) for s, a in loads] == [(0, "attn")]  # nothing to keep: least recently used
    assert slots.plan([(None, 3)]) == ([], [])
