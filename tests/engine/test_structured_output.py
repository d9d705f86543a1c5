"""Structured outputs: whatever the (random-weight) model prefers, the text
is a sentence of the constraint, and the sequence ends when the sentence does."""

from __future__ import annotations

import json
import re

import pytest
import torch

from pagoda.engine.llm import LLM
from pagoda.engine.sampler import unpack_bitmask
from pagoda.engine.sampling_params import SamplingParams, StructuredOutput

PROMPTS = ["Hello, my name is", "The quick brown fox", "Un café crème"]
SCHEMA = {"type": "object", "additionalProperties": False, "required": ["ok", "size", "color"],
          "properties": {"ok": {"type": "boolean"}, "size": {"type": "integer", "minimum": 0, "maximum": 99},
                         "color": {"enum": ["red", "green", "blue"]}}}


@pytest.fixture(scope="module")
def llm(tiny_model) -> LLM:
    return LLM(str(tiny_model("llama")), dtype="float32", block_size=4)


def _texts(llm: LLM, spec: StructuredOutput, **params) -> list[str]:
    sampling = SamplingParams(structured_output=spec, max_tokens=64, **params)
    outputs = llm.generate(PROMPTS, sampling)
    assert all(c.finish_reason == "stop" for out in outputs for c in out.outputs), \
        [(c.text, c.finish_reason) for out in outputs for c in out.outputs]
    return [c.text for out in outputs for c in out.outputs]


def test_unconstrained_output_is_not_json(llm: LLM) -> None:
    """The premise: without the constraint the random model writes no JSON."""
    text = llm.generate(PROMPTS[0], SamplingParams(temperature=0, max_tokens=32, ignore_eos=True))[0].outputs[0].text
    with pytest.raises(ValueError):
        json.loads(text)


@pytest.mark.parametrize("params", [{"temperature": 0}, {"temperature": 1.0, "seed": 7, "n": 2},
                                    {"temperature": 0, "ignore_eos": True}], ids=["greedy", "sampled", "ignore-eos"])
def test_json_schema(llm: LLM, params: dict) -> None:
    for text in _texts(llm, StructuredOutput(json=SCHEMA), **params):
        value = json.loads(text)
        assert set(value) == {"ok", "size", "color"} and isinstance(value["ok"], bool)
        assert 0 <= value["size"] <= 99 and value["color"] in {"red", "green", "blue"}


def test_regex_choice_and_grammar(llm: LLM) -> None:
    for text in _texts(llm, StructuredOutput(regex=r"[0-9]{3}-[a-z]{2}"), temperature=0.8, seed=1):
        assert re.fullmatch(r"[0-9]{3}-[a-z]{2}", text), text
    choices = ["yes", "no", "maybe not"]
    assert set(_texts(llm, StructuredOutput(choice=choices), temperature=1.0, seed=3)) <= set(choices)
    grammar = 'root ::= "(" digit ("+" digit)* ")"\ndigit ::= [0-9]'
    for text in _texts(llm, StructuredOutput(grammar=grammar), temperature=0):
        assert re.fullmatch(r"\([0-9](\+[0-9])*\)", text), text


def test_json_object_parses(llm: LLM) -> None:
    """Any JSON object: the random model may not close it within the budget,
    but what it writes is always a prefix of one, and a closed one parses."""
    outputs = llm.generate(PROMPTS, SamplingParams(structured_output=StructuredOutput(json_object=True),
                                                   temperature=0, max_tokens=48))
    for c in (out.outputs[0] for out in outputs):
        assert c.text.lstrip().startswith("{")
        if c.finish_reason == "stop":
            assert isinstance(json.loads(c.text), dict)


def test_constrained_and_free_requests_share_a_batch(llm: LLM) -> None:
    free = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    alone = llm.generate(PROMPTS[1], free)[0].outputs[0].token_ids
    mixed = llm.generate([PROMPTS[0], PROMPTS[1]], [SamplingParams(structured_output=StructuredOutput(json=SCHEMA),
                                                                   temperature=0, max_tokens=64), free])
    assert mixed[1].outputs[0].token_ids == alone
    json.loads(mixed[0].outputs[0].text)
    assert not llm.engine.has_unfinished_requests()
    assert llm.engine.block_manager.num_free_blocks == llm.engine.block_manager.num_usable


@pytest.mark.parametrize("spec,message", [
    ({"json": {"type": "object", "properties": {"a": {"type": "nonsense"}}}}, "structured output json is invalid"),
    ({"regex": "([a-z"}, "structured output regex is invalid"),
    ({"grammar": "root ::= undefined_rule"}, "structured output grammar is invalid"),
    # Found by the fuzzer: an empty grammar raised StopIteration, which hung the server's request.
    ({"grammar": ""}, "structured output grammar is invalid"),
])
def test_invalid_constraints_are_refused_with_the_reason(llm: LLM, spec: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        llm.generate(PROMPTS[0], SamplingParams(structured_output=StructuredOutput(**spec)))
    assert not llm.engine.has_unfinished_requests()


def test_exactly_one_constraint() -> None:
    with pytest.raises(ValueError, match="exactly one of"):
        StructuredOutput(regex="a", choice=["a"])
    with pytest.raises(ValueError, match="exactly one of"):
        StructuredOutput()
    with pytest.raises(ValueError, match="non-empty list"):
        StructuredOutput(choice=[])


def test_unpack_bitmask() -> None:
    words = torch.tensor([[0b101 | -2**31, 0], [0, 1]], dtype=torch.int32)  # bits 0, 2, 31 / bit 32
    mask = unpack_bitmask(words, 40)
    assert mask.shape == (2, 40)
    assert mask[0].nonzero().flatten().tolist() == [0, 2, 31] and mask[1].nonzero().flatten().tolist() == [32]
