"""GPT-OSS beyond the every-family parity tests: MXFP4 checkpoints as OpenAI ships them, expert
parallelism (the experts' output bias added once over the ranks)."""

from __future__ import annotations

import pathlib

import pytest

from pagoda.engine.int_quant_fixtures import make_mxfp4_model
from pagoda.engine.llm import LLM
from pagoda.engine.sampling_params import SamplingParams
from tests.engine.hf_reference import engine_token_ids, hf_greedy

PROMPTS = ["Hello, my name is", "The quick brown fox jumps over the lazy dog. Once upon a time", "東京 🚀"]
MAX_TOKENS = 10
GREEDY = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)


@pytest.fixture(scope="module")
def mxfp4_model(tmp_path_factory: pytest.TempPathFactory, tiny_model) -> tuple[pathlib.Path, pathlib.Path]:
    """(MXFP4 checkpoint, the base model it quantizes); experts 96 wide, three groups of 32, so two ranks
    split the middle group (the second rank's columns begin 16 into it), as gpt-oss's 2880 do over 4 or 8."""
    base = tiny_model("gpt_oss", intermediate_size=96)
    root = tmp_path_factory.mktemp("gpt-oss-mxfp4")
    return make_mxfp4_model(base, root / "mxfp4", root / "dequantized"), base


@pytest.mark.parametrize("options", [{}, {"tensor_parallel_size": 2},
                                     {"tensor_parallel_size": 2, "enable_expert_parallel": True}], ids=str)
def test_mxfp4_checkpoint_matches_transformers(mxfp4_model: tuple[pathlib.Path, pathlib.Path], options: dict) -> None:
    """transformers dequantizes the MXFP4 stacks itself (on a CPU); we hold them as 4-bit codes with
    power-of-two group scales, and must pick the same tokens, which differ from the base model's."""
    path, base = mxfp4_model
    llm = LLM(str(path), dtype="float32", block_size=4, **options)
    if not options:
        experts = llm.engine.runner.model.model.layers[0].mlp.experts
        assert not hasattr(experts, "w13") and experts.w13_qweight.dtype.is_signed and experts.int_codebook is not None
        assert experts.w13_zeros is None, "a codebook needs no zero points"
    prompts = [llm.tokenizer.encode(p) for p in PROMPTS]
    got = engine_token_ids(llm, prompts, GREEDY)
    want = [hf_greedy(path, ids, MAX_TOKENS) for ids in prompts]
    assert got == want
    assert want != [hf_greedy(base, ids, MAX_TOKENS) for ids in prompts], "MXFP4 must change the tokens"


def test_expert_parallelism(tiny_model) -> None:
    """Each rank holds half of the (full-precision) experts; the down projection's bias of an expert
    is added by the rank that runs it, once."""
    path = tiny_model("gpt_oss")
    llm = LLM(str(path), dtype="float32", tensor_parallel_size=2, enable_expert_parallel=True, block_size=4)
    prompts = [llm.tokenizer.encode(p) for p in PROMPTS]
    assert engine_token_ids(llm, prompts, GREEDY) == [hf_greedy(path, ids, MAX_TOKENS) for ids in prompts]
