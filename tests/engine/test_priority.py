"""The priority scheduling policy: waiting requests run in priority order (lower first), and
preemption takes the running request of the lowest priority, not the latest admitted."""

from __future__ import annotations

import pytest

from pagoda.engine.config import EngineConfig
from pagoda.engine.llm import LLM
from pagoda.engine.sampling_params import SamplingParams

PROMPT = [1, 17, 42, 99, 7, 256, 3, 88]


def run(llm: LLM) -> dict[str, object]:
    finals = {}
    while llm.engine.has_unfinished_requests():
        finals.update({o.request_id: o for o in llm.engine.step() if o.finished})
    return finals


def test_waiting_requests_run_in_priority_order(tiny_model) -> None:
    llm = LLM(str(tiny_model("llama")), dtype="float32", max_num_seqs=1, scheduling_policy="priority")
    params = SamplingParams(max_tokens=4, ignore_eos=True)
    llm.engine.add_request("first", PROMPT, params, priority=9)
    llm.engine.step()  # "first" runs before the others arrive
    for request_id, priority in [("low", 5), ("normal", 0), ("urgent", -3), ("normal-later", 0)]:
        llm.engine.add_request(request_id, PROMPT, params, priority=priority)
    finals = run(llm)
    order = sorted(finals, key=lambda r: finals[r].metrics.first_scheduled_time)
    assert order == ["first", "urgent", "normal", "normal-later", "low"]


@pytest.mark.parametrize(("policy", "preempted"), [("priority", "low"), ("fcfs", "high")])
def test_preemption_takes_the_lowest_priority(tiny_model, policy: str, preempted: str) -> None:
    """Two requests whose KV does not fit together: FCFS preempts the one admitted last,
    the priority policy the one of lower priority, though it was admitted first."""
    llm = LLM(str(tiny_model("llama")), dtype="float32", block_size=4, num_kv_blocks=20, max_model_len=64,
              scheduling_policy=policy)
    params = SamplingParams(max_tokens=40, ignore_eos=True)
    llm.engine.add_request("low", PROMPT, params, priority=5 if policy == "priority" else 0)
    llm.engine.add_request("high", PROMPT, params, priority=0)
    finals = run(llm)
    assert {r: finals[r].metrics.num_preemptions > 0 for r in finals} == {
        "low": preempted == "low", "high": preempted == "high"}
    assert all(len(o.outputs[0].token_ids) == 40 for o in finals.values())


def test_priority_needs_the_policy(tiny_model) -> None:
    llm = LLM(str(tiny_model("llama")), dtype="float32")
    with pytest.raises(ValueError, match="priority scheduling policy"):
        llm.engine.add_request("r", PROMPT, SamplingParams(), priority=1)
    with pytest.raises(ValueError, match="scheduling_policy"):
        EngineConfig(model="m", scheduling_policy="lottery")
