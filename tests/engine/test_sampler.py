import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pagoda.engine.sampler import (
    Sampler,
    SamplingRow,
    apply_logit_adjustments,
    token_logprobs,
)
from pagoda.engine.sampling_params import SamplingParams

DEVICES = [
    "cpu",
    pytest.param(
        "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")
    ),
]


def make_row(params, prompt=(), output=(), suppressed=(), device="cpu"):
    """A row as the engine builds it: a fresh generator seeded with params.seed."""
    generator = None
    if params.seed is not None:
        generator = torch.Generator(device=device)
        generator.manual_seed(params.seed)
    return SamplingRow(params, list(prompt), list(output), generator, list(suppressed))


def step_logits(step, vocab, salt=0):
    """Deterministic per-step logits, standing in for the model."""
    g = torch.Generator().manual_seed(1000 * salt + step)
    return torch.randn(vocab, generator=g) * 2


# --- seeded reproducibility -------------------------------------------------

VOCAB = 64
TARGET = SamplingParams(seed=1234, top_k=40, top_p=0.95, presence_penalty=0.3)


def companions():
    return [
        make_row(SamplingParams(seed=7)),
        make_row(SamplingParams()),
        make_row(SamplingParams(temperature=0)),
        make_row(SamplingParams(top_p=0.5, repetition_penalty=1.2), prompt=[1, 2, 3]),
        make_row(SamplingParams(seed=99, min_p=0.1)),
        make_row(SamplingParams(temperature=0.5, logit_bias={3: 2.0})),
    ]


def run_target(position, others, sampler, device, steps=8):
    """Sample ``steps`` tokens for TARGET placed at ``position`` among ``others``."""
    target = make_row(TARGET, prompt=[5, 6], device=device)
    for row in others:
        if row.generator is not None:
            row.generator = torch.Generator(device=device).manual_seed(row.params.seed)
    rows = others[:position] + [target] + others[position:]
    for step in range(steps):
        logits = torch.stack(
            [step_logits(step, VOCAB, salt=0 if r is target else 1 + i) for i, r in enumerate(rows)]
        ).to(device)
        out = sampler(logits, rows)
        for row, token in zip(rows, out.token_ids):
            row.output_token_ids.append(token)
    return target.output_token_ids


@pytest.mark.parametrize("device", DEVICES)
def test_seed_gives_same_tokens_whatever_the_batch(device):
    alone = run_target(0, [], Sampler(seed=0), device)
    assert alone == run_target(0, companions(), Sampler(seed=1), device)
    assert alone == run_target(3, companions(), Sampler(seed=2), device)
    assert alone == run_target(6, companions(), Sampler(), device)
    assert alone == run_target(2, companions()[:3], Sampler(seed=0), device)


def test_different_seeds_give_different_tokens():
    def tokens(seed):
        row = make_row(SamplingParams(seed=seed))
        sampler = Sampler()
        for step in range(10):
            out = sampler(torch.zeros(1, 1000), [row])
            row.output_token_ids.append(out.token_ids[0])
        return row.output_token_ids

    assert tokens(1) == tokens(1)
    assert tokens(1) != tokens(2)


def test_unseeded_rows_follow_the_sampler_seed():
    rows = [make_row(SamplingParams()) for _ in range(4)]
    logits = torch.zeros(4, 1000)
    assert Sampler(seed=5)(logits, rows).token_ids == Sampler(seed=5)(logits, rows).token_ids
    assert Sampler(seed=5)(logits, rows).token_ids != Sampler(seed=6)(logits, rows).token_ids


# --- support restriction ------------------------------------------------------

SUPPORT_LOGITS = torch.tensor(
    [0.9, -2.5, 2.4, -0.3, 3.0, -1.4, 0.3, 1.8, -0.8, 1.2, -1.9, -3.0]
)


def allowed_tokens(logits, temperature, top_k, top_p, min_p):
    """token -> probability after top-k, then top-p on the renormalized rest,
    then min-p, renormalized; computed in float64 on plain Python lists."""
    scaled = [v / temperature for v in logits.tolist()]
    peak = max(scaled)
    probs = [math.exp(v - peak) for v in scaled]
    probs = [p / sum(probs) for p in probs]
    order = sorted(range(len(probs)), key=lambda t: -probs[t])
    if top_k > 0:
        order = order[:top_k]
    mass = sum(probs[t] for t in order)
    kept, ahead = [], 0.0
    for t in order:
        if top_p < 1.0 and ahead >= top_p:
            break
        assert top_p == 1.0 or abs(ahead - top_p) > 0.01, "token on the top_p boundary"
        kept.append(t)
        ahead += probs[t] / mass
    kept = [t for t in kept if probs[t] >= min_p * probs[order[0]]]
    total = sum(probs[t] for t in kept)
    return {t: probs[t] / total for t in kept}


CONFIGS = [
    dict(temperature=1.0, top_k=4, top_p=1.0, min_p=0.0),
    dict(temperature=0.8, top_k=0, top_p=0.7, min_p=0.0),
    dict(temperature=1.3, top_k=-1, top_p=1.0, min_p=0.1),
    dict(temperature=1.0, top_k=6, top_p=0.9, min_p=0.05),
    dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0),
]


# When every truncating row has a top_k the sampler takes a partial sort.
TOP_K_CONFIGS = [c for c in CONFIGS if c["top_k"] > 0] + [
    dict(temperature=0.7, top_k=3, top_p=0.8, min_p=0.0),
    dict(temperature=2.0, top_k=8, top_p=1.0, min_p=0.3),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seeded", [False, True])
@pytest.mark.parametrize("configs", [CONFIGS, TOP_K_CONFIGS], ids=["sort", "topk"])
def test_truncation_restricts_support(device, seeded, configs):
    draws = 600
    rows = [
        make_row(
            SamplingParams(**config, seed=n * len(configs) + c if seeded else None),
            device=device,
        )
        for n in range(draws)
        for c, config in enumerate(configs)
    ]
    logits = SUPPORT_LOGITS.expand(len(rows), -1).to(device)
    tokens = Sampler(seed=0)(logits, rows).token_ids
    for c, config in enumerate(configs):
        allowed = allowed_tokens(SUPPORT_LOGITS, **config)
        # at 2% a token is missed in 600 draws with probability e^-12
        noticeable = {t for t, p in allowed.items() if p >= 0.02}
        sampled = set(tokens[c :: len(configs)])
        assert noticeable <= sampled <= set(allowed), config
        truncating = config["top_k"] > 0 or config["top_p"] < 1 or config["min_p"] > 0
        assert truncating == (len(allowed) < len(SUPPORT_LOGITS)), config


# --- logit adjustments --------------------------------------------------------


def reference_adjust(logits, row):
    """Per-token Python transcription of bias -> suppression -> penalties."""
    p = row.params
    seen = set(row.prompt_token_ids) | set(row.output_token_ids)
    out = []
    for token, value in enumerate(logits.tolist()):
        value += (p.logit_bias or {}).get(token, 0.0)
        if token in row.suppressed_token_ids:
            value = -math.inf
        if token in seen:
            value = value / p.repetition_penalty if value > 0 else value * p.repetition_penalty
        count = row.output_token_ids.count(token)
        value -= p.presence_penalty * (count > 0) + p.frequency_penalty * count
        out.append(value)
    return torch.tensor(out)


def assert_adjusted_as_reference(logits, rows):
    before = logits.clone()
    adjusted = apply_logit_adjustments(logits, rows)
    assert torch.equal(logits, before), "caller's logits modified"
    for i, row in enumerate(rows):
        expected = reference_adjust(logits[i].float(), row)
        torch.testing.assert_close(adjusted[i].cpu(), expected, rtol=1e-6, atol=1e-6)


def test_penalties_bias_and_suppression_exact():
    vocab = 20
    rows = [
        make_row(SamplingParams(repetition_penalty=1.5), prompt=[0, 1, 2], output=[3, 3, 4]),
        make_row(SamplingParams(presence_penalty=0.7, frequency_penalty=0.4), prompt=[5], output=[5, 6, 6, 6]),
        make_row(
            SamplingParams(repetition_penalty=0.8, presence_penalty=-1.0, frequency_penalty=2.0),
            prompt=[7, 8, 8],
            output=[8, 9, 9],
        ),
        make_row(SamplingParams(), prompt=[1, 2], output=[1, 1]),
        make_row(
            SamplingParams(logit_bias={0: 3.0, 11: -4.5}, repetition_penalty=1.3),
            prompt=[11],
            output=[0],
            suppressed=[12, 13],
        ),
    ]
    logits = torch.randn(len(rows), vocab, generator=torch.Generator().manual_seed(0)) * 3
    assert_adjusted_as_reference(logits, rows)
    # the untouched row really is untouched, the others really changed
    adjusted = apply_logit_adjustments(logits, rows)
    assert torch.equal(adjusted[3], logits[3])
    assert all(not torch.equal(adjusted[i], logits[i]) for i in (0, 1, 2, 4))


row_strategy = st.builds(
    lambda rep, pres, freq, prompt, output, bias, suppressed: make_row(
        SamplingParams(
            repetition_penalty=rep,
            presence_penalty=pres,
            frequency_penalty=freq,
            logit_bias=bias or None,
        ),
        prompt,
        output,
        suppressed,
    ),
    st.sampled_from([1.0, 0.5, 1.3, 2.0]),
    st.sampled_from([0.0, -1.5, 0.5, 2.0]),
    st.sampled_from([0.0, -0.5, 1.0]),
    st.lists(st.integers(0, 15), max_size=12),
    st.lists(st.integers(0, 15), max_size=12),
    st.dictionaries(st.integers(0, 15), st.floats(-100, 100), max_size=3),
    st.lists(st.integers(0, 15), max_size=3),
)


@settings(max_examples=40, deadline=None)
@given(rows=st.lists(row_strategy, min_size=1, max_size=6), seed=st.integers(0, 2**16))
def test_adjustments_match_reference_for_any_batch(rows, seed):
    logits = torch.randn(len(rows), 16, generator=torch.Generator().manual_seed(seed)) * 4
    assert_adjusted_as_reference(logits, rows)


@pytest.mark.parametrize("device", DEVICES)
def test_greedy_is_argmax_of_adjusted_logits(device):
    logits = torch.tensor(
        [[5.0, 4.9, 1.0, 0.0], [5.0, 4.0, 1.0, 0.0], [5.0, 4.9, 1.0, 0.0], [0.0, 1.0, 3.0, 2.0]]
    )
    rows = [
        make_row(SamplingParams(temperature=0, presence_penalty=0.5), output=[0]),
        make_row(SamplingParams(temperature=0, logit_bias={3: 6.0})),
        make_row(SamplingParams(temperature=0, repetition_penalty=1.1), prompt=[0]),
        make_row(SamplingParams(temperature=0), suppressed=[2]),
    ]
    tokens = Sampler()(logits.to(device), rows).token_ids
    assert tokens == apply_logit_adjustments(logits, rows).argmax(-1).tolist()
    assert tokens == [1, 3, 1, 3]  # every adjustment moved the argmax


def test_greedy_fast_path_matches_argmax_and_accepts_bf16():
    logits = torch.randn(8, 100, generator=torch.Generator().manual_seed(3)).bfloat16()
    rows = [make_row(SamplingParams(temperature=0)) for _ in range(8)]
    assert Sampler()(logits, rows).token_ids == logits.float().argmax(-1).tolist()


@pytest.mark.parametrize("device", DEVICES)
def test_suppressed_and_negative_bias_never_sampled(device):
    logits = torch.tensor([[4.0, 3.5, 3.0, 0.0, -1.0, 0.5]]).expand(2000, -1).to(device)
    rows = [
        make_row(SamplingParams(seed=n if n % 2 else None), suppressed=[0, 1], device=device)
        if n < 1000
        else make_row(SamplingParams(logit_bias={0: -100.0, 2: -100.0}))
        for n in range(2000)
    ]
    tokens = Sampler(seed=0)(logits, rows).token_ids
    assert not {0, 1} & set(tokens[:1000])
    assert {2, 3, 5} <= set(tokens[:1000])
    assert not {0, 2} & set(tokens[1000:])


def test_positive_bias_dominates():
    rows = [make_row(SamplingParams(logit_bias={4: 100.0})) for _ in range(500)]
    logits = torch.randn(500, 10, generator=torch.Generator().manual_seed(1)) * 3
    assert set(Sampler(seed=0)(logits, rows).token_ids) == {4}


def test_empty_batch():
    out = Sampler()(torch.zeros(0, 10), [])
    assert out.token_ids == [] and out.logprobs == [] and out.top_logprobs == []


def test_logits_shape_checked():
    with pytest.raises(ValueError, match="logits"):
        Sampler()(torch.zeros(2, 10), [make_row(SamplingParams())])


# --- logprobs -----------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_logprobs_come_from_raw_distribution(device):
    vocab = 50
    logits = torch.randn(5, vocab, generator=torch.Generator().manual_seed(2)) * 3
    rows = [
        make_row(SamplingParams(logprobs=3, temperature=0.5, presence_penalty=1.0), output=[1, 2]),
        make_row(SamplingParams()),
        make_row(SamplingParams(logprobs=0, top_k=2)),
        make_row(SamplingParams(logprobs=20, temperature=0, logit_bias={7: 50.0})),
        make_row(SamplingParams(logprobs=5, seed=3), device=device),
    ]
    out = Sampler(seed=0)(logits.to(device), rows)
    raw = torch.log_softmax(logits.double(), dim=-1)
    assert out.logprobs[1] is None and out.top_logprobs[1] is None
    assert out.token_ids[3] == 7
    for i, asked in [(0, 3), (2, 0), (3, 20), (4, 5)]:
        token = out.token_ids[i]
        assert out.logprobs[i] == pytest.approx(raw[i, token].item(), abs=1e-5)
        top = out.top_logprobs[i]
        assert len(top) == asked
        values = [v for _, v in top]
        assert values == sorted(values, reverse=True)
        expected = raw[i].topk(asked)
        assert [t for t, _ in top] == expected.indices.tolist()
        assert values == pytest.approx(expected.values.tolist(), abs=1e-5)


def test_token_logprobs_for_prompt_positions():
    logits = torch.randn(6, 30, generator=torch.Generator().manual_seed(4)).bfloat16()
    next_tokens = torch.tensor([3, 0, 29, 7, 7, 12])
    values, tops = token_logprobs(logits, next_tokens, 4)
    raw = torch.log_softmax(logits.double(), dim=-1)
    assert values == pytest.approx(raw[torch.arange(6), next_tokens].tolist(), abs=1e-5)
    for i, top in enumerate(tops):
        assert [t for t, _ in top] == raw[i].topk(4).indices.tolist()
    assert token_logprobs(logits, next_tokens, 0)[1] == [[]] * 6


# --- distribution -------------------------------------------------------------

# chi-square critical value for 5 degrees of freedom at p = 0.001
CHI2_CRITICAL_DF5 = 20.515


@pytest.mark.parametrize("seeded", [False, True])
@pytest.mark.parametrize("temperature", [0.6, 1.5])
def test_frequencies_match_tempered_softmax(seeded, temperature):
    draws = 6000
    logits = torch.tensor([1.0, 0.2, -0.5, 2.0, 0.0, 1.4])
    rows = [
        make_row(SamplingParams(temperature=temperature, seed=n if seeded else None))
        for n in range(draws)
    ]
    tokens = torch.tensor(Sampler(seed=0)(logits.expand(draws, -1), rows).token_ids)
    observed = torch.bincount(tokens, minlength=6).double()
    expected = torch.softmax(logits.double() / temperature, dim=-1) * draws
    chi2 = ((observed - expected) ** 2 / expected).sum().item()
    assert chi2 < CHI2_CRITICAL_DF5, (observed.tolist(), expected.tolist())


# --- allowed_token_ids and bad_words ------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_allowed_token_ids_mask_every_other_token(device):
    vocab = 32
    logits = torch.randn(3, vocab, device=device) * 3
    rows = [make_row(SamplingParams(temperature=0, allowed_token_ids=[4, 9]), device=device),
            make_row(SamplingParams(), device=device),
            make_row(SamplingParams(seed=5, allowed_token_ids=[1, 2, 30]), device=device)]
    adjusted = apply_logit_adjustments(logits, rows)
    assert torch.isinf(adjusted[0]).sum() == vocab - 2 and torch.isfinite(adjusted[0, [4, 9]]).all()
    assert torch.equal(adjusted[1], logits[1].float())  # a row without the option is untouched
    sampler = Sampler()
    for _ in range(20):
        out = sampler(logits, rows)
        assert out.token_ids[0] == max((4, 9), key=lambda t: logits[0, t].item())
        assert out.token_ids[2] in (1, 2, 30)


def test_banned_next_tokens():
    from pagoda.engine.sampler import banned_next_tokens

    words = [[7], [3, 4], [1, 2, 5]]
    assert banned_next_tokens(words, []) == [7]
    assert banned_next_tokens(words, [9, 3]) == [7, 4]
    assert banned_next_tokens(words, [1, 2]) == [7, 5]
    assert banned_next_tokens(words, [2, 1]) == [7]
