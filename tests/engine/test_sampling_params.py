import math

import pytest

from pagoda.engine.sampling_params import MAX_LOGPROBS, SamplingParams

BAD_VALUES = [
    ("n", 0),
    ("n", 1.5),
    ("temperature", -0.1),
    ("temperature", math.inf),
    ("temperature", math.nan),
    ("temperature", "hot"),
    ("top_p", 0.0),
    ("top_p", 1.01),
    ("top_p", math.nan),
    ("top_k", -2),
    ("top_k", 2.5),
    ("min_p", -0.01),
    ("min_p", 1.5),
    ("presence_penalty", -2.01),
    ("presence_penalty", 2.01),
    ("frequency_penalty", -3.0),
    ("frequency_penalty", 2.5),
    ("repetition_penalty", 0.0),
    ("repetition_penalty", -1.0),
    ("repetition_penalty", math.inf),
    ("max_tokens", 0),
    ("max_tokens", -5),
    ("min_tokens", -1),
    ("logprobs", -1),
    ("logprobs", MAX_LOGPROBS + 1),
    ("prompt_logprobs", -1),
    ("prompt_logprobs", MAX_LOGPROBS + 1),
    ("seed", 1.5),
    ("seed", "42"),
    ("seed", True),
    ("seed", 2**64),
    ("stop", ""),
    ("stop", ["ok", ""]),
    ("stop", [3]),
    ("stop_token_ids", [1, "2"]),
    ("logit_bias", {5: 100.5}),
    ("logit_bias", {5: -101}),
    ("logit_bias", {"5": 1.0}),
]


@pytest.mark.parametrize(("field", "value"), BAD_VALUES)
def test_bad_value_refused_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**{field: value})


def test_min_tokens_above_max_tokens_refused():
    with pytest.raises(ValueError, match=r"min_tokens must be in \[0, 4\]"):
        SamplingParams(max_tokens=4, min_tokens=5)


def test_message_states_the_range_and_value():
    with pytest.raises(ValueError, match=r"^top_p must be in \(0, 1\], got 1\.5$"):
        SamplingParams(top_p=1.5)
    with pytest.raises(ValueError, match=r"^temperature must be >= 0, got -1$"):
        SamplingParams(temperature=-1)


GOOD_VALUES = [
    ("n", 4),
    ("temperature", 0.0),
    ("temperature", 2.5),
    ("top_p", 1e-6),
    ("top_p", 1.0),
    ("top_k", -1),
    ("top_k", 0),
    ("top_k", 50),
    ("min_p", 0.0),
    ("min_p", 1.0),
    ("presence_penalty", -2.0),
    ("frequency_penalty", 2.0),
    ("repetition_penalty", 0.5),
    ("max_tokens", None),
    ("max_tokens", 1),
    ("min_tokens", 16),
    ("logprobs", 0),
    ("logprobs", MAX_LOGPROBS),
    ("prompt_logprobs", 0),
    ("seed", 0),
    ("seed", -7),
    ("logit_bias", {0: -100.0, 7: 100}),
]


@pytest.mark.parametrize(("field", "value"), GOOD_VALUES)
def test_good_value_accepted(field, value):
    assert getattr(SamplingParams(**{field: value}), field) == value


def test_defaults_match_vllm():
    p = SamplingParams()
    assert (p.n, p.temperature, p.top_p, p.top_k, p.min_p) == (1, 1.0, 1.0, 0, 0.0)
    assert (p.presence_penalty, p.frequency_penalty, p.repetition_penalty) == (0.0, 0.0, 1.0)
    assert p.max_tokens == 16 and p.min_tokens == 0 and p.seed is None
    assert p.logprobs is None and p.prompt_logprobs is None and p.logit_bias is None
    assert p.skip_special_tokens and not p.ignore_eos and not p.include_stop_str_in_output


@pytest.mark.parametrize(
    ("stop", "expected"),
    [(None, []), ("###", ["###"]), (["a", "bc"], ["a", "bc"]), (("x",), ["x"])],
)
def test_stop_normalized_to_list(stop, expected):
    assert SamplingParams(stop=stop).stop == expected


def test_stop_token_ids_normalized_to_list():
    assert SamplingParams().stop_token_ids == []
    assert SamplingParams(stop_token_ids=(3, 4)).stop_token_ids == [3, 4]


@pytest.mark.parametrize(
    ("field", "value"),
    [("logit_bias", {100: 1.0}), ("logit_bias", {-1: 1.0}), ("stop_token_ids", [5, 100])],
)
def test_validate_for_vocab_refuses_out_of_range_ids(field, value):
    params = SamplingParams(**{field: value})
    with pytest.raises(ValueError, match=rf"{field}.*\[0, 100\)"):
        params.validate_for_vocab(100)


def test_validate_for_vocab_accepts_in_range_ids():
    SamplingParams(logit_bias={0: 1.0, 99: -1.0}, stop_token_ids=[99]).validate_for_vocab(100)


def test_flags():
    assert SamplingParams(temperature=0).greedy
    assert not SamplingParams(temperature=0.5).greedy
    assert not SamplingParams().needs_penalties
    assert SamplingParams(repetition_penalty=1.1).needs_penalties
    assert SamplingParams(presence_penalty=0.1).needs_penalties
    assert SamplingParams(frequency_penalty=-0.1).needs_penalties
    assert not SamplingParams(top_k=-1).needs_truncation
    assert SamplingParams(top_k=5).needs_truncation
    assert SamplingParams(top_p=0.9).needs_truncation
    assert SamplingParams(min_p=0.1).needs_truncation
