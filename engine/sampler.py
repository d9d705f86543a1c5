"""Batched sampling of one token per sequence for one engine step.

The engine hands over the last-position logits of every sequence that samples
this step, requests with different parameters mixed in one batch. Logits are
processed in this order (vLLM's semantics):

    structured-output mask -> allowed_token_ids -> logit_bias -> suppressed tokens (min_tokens, bad_words) -> repetition penalty -> presence and
    frequency penalties -> [greedy rows: argmax] -> temperature -> top-k ->
    top-p -> min-p -> sample

Work is vectorized over the rows that need each stage; Python loops over rows
only gather per-row parameters, sparse logit_bias entries and seeded draws.

Sampling uses the exponential race (Gumbel-max): the token is
``argmax(logits / T - log(E))`` with ``E ~ Exp(1)`` per vocabulary entry,
which equals a draw from ``softmax(logits / T)`` and needs no cumulative sums.
A seeded row draws its ``E`` from its own generator, exactly one vocab-sized
draw per step, so its tokens depend only on its seed and its own history,
never on what else is in the batch or where it sits.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import chain
from typing import Sequence

import torch

from pagoda.engine.sampling_params import SamplingParams
from pagoda.engine.step_inputs import device_tensor
from pagoda.kernels import ops


@dataclass
class SamplingRow:
    """One sequence that samples a token this step."""

    params: SamplingParams
    prompt_token_ids: Sequence[int]
    output_token_ids: Sequence[int]
    generator: torch.Generator | None
    """The request's own generator when ``params.seed`` is set; None otherwise."""
    suppressed_token_ids: Sequence[int] = ()
    """Tokens that must not be sampled now (eos and stop tokens before min_tokens)."""
    allowed_tokens: torch.Tensor | None = None
    """A structured output's packed bitmask (int32 words; bit t set: token t allowed); None: no constraint."""


def banned_next_tokens(bad_words: Sequence[Sequence[int]], output: Sequence[int]) -> list[int]:
    """The last token of each bad word whose other tokens the output ends with."""
    banned = []
    for word in bad_words:
        head = len(word) - 1
        if head == 0 or (len(output) >= head and list(output[len(output) - head:]) == list(word[:-1])):
            banned.append(word[-1])
    return banned


@dataclass
class SamplerOutput:
    token_ids: list[int]
    logprobs: list[float | None]
    """Raw-distribution logprob of each sampled token; None where not asked."""
    top_logprobs: list[list[tuple[int, float]] | None]
    """The ``params.logprobs`` most likely (token, logprob), best first; None where not asked."""


class _Batch:
    """Index lists and parameter columns of one call, gathered in a single pass
    over the rows so every later stage is a tensor operation."""

    def __init__(self, rows: Sequence[SamplingRow]) -> None:
        self.greedy: list[int] = []
        unseeded: list[int] = []
        seeded: list[int] = []
        self.penalized: list[int] = []
        self.logprob_rows: list[int] = []
        self.bias: tuple[list[int], list[int], list[float]] = ([], [], [])
        self.suppressed: tuple[list[int], list[int]] = ([], [])
        self.only: tuple[list[int], list[int]] = ([], [])
        self.constrained: list[int] = []
        for i, row in enumerate(rows):
            p = row.params
            if p.greedy:
                self.greedy.append(i)
            elif row.generator is None:
                unseeded.append(i)
            else:
                seeded.append(i)
            if p.needs_penalties:
                self.penalized.append(i)
            if p.logprobs is not None:
                self.logprob_rows.append(i)
            if p.logit_bias:
                self.bias[0].extend([i] * len(p.logit_bias))
                self.bias[1].extend(p.logit_bias.keys())
                self.bias[2].extend(p.logit_bias.values())
            if row.suppressed_token_ids:
                self.suppressed[0].extend([i] * len(row.suppressed_token_ids))
                self.suppressed[1].extend(row.suppressed_token_ids)
            if row.allowed_tokens is not None:
                self.constrained.append(i)
            if p.allowed_token_ids is not None:
                self.only[0].extend([i] * len(p.allowed_token_ids))
                self.only[1].extend(p.allowed_token_ids)
        # Unseeded rows first: they share one contiguous batched draw.
        self.num_unseeded = len(unseeded)
        self.random = unseeded + seeded
        self.generators = [rows[i].generator for i in seeded]

    @property
    def adjusts_logits(self) -> bool:
        return bool(self.penalized or self.bias[0] or self.suppressed[0] or self.constrained or self.only[0])


def unpack_bitmask(words: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Bool [..., vocab_size] from packed int32 words (bit b of word w: token 32 * w + b)."""
    shifts = torch.arange(32, dtype=torch.int32, device=words.device)
    bits = (words.unsqueeze(-1) >> shifts) & 1
    return bits.flatten(-2)[..., :vocab_size].bool()


def _flat_token_indices(
    token_lists: Sequence[Sequence[int]], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, token) index pairs of ragged token lists, for scatter-style ops."""
    lengths = torch.tensor([len(t) for t in token_lists], dtype=torch.long)
    rows = torch.repeat_interleave(torch.arange(len(token_lists)), lengths)
    tokens = torch.tensor(list(chain.from_iterable(token_lists)), dtype=torch.long)
    return rows.to(device), tokens.to(device)


def _column(values: Sequence[float], like: torch.Tensor) -> torch.Tensor:
    """Per-row parameters as an [R, 1] column that broadcasts over the vocab."""
    return device_tensor(values, like.dtype, like.device).unsqueeze(1)


def _apply_penalties(
    x: torch.Tensor, rows: Sequence[SamplingRow], idx: list[int]
) -> None:
    """Repetition (prompt + output tokens), presence and frequency (output
    tokens) penalties, in place on rows ``idx`` of ``x``."""
    index = device_tensor(idx, torch.long, x.device)
    sub = x.index_select(0, index)
    params = [rows[i].params for i in idx]

    counts = torch.zeros_like(sub)
    r, t = _flat_token_indices([rows[i].output_token_ids for i in idx], x.device)
    counts.index_put_((r, t), torch.ones_like(t, dtype=sub.dtype), accumulate=True)
    generated = counts > 0

    rep = _column([p.repetition_penalty for p in params], sub)
    # Rows without a repetition penalty skip their (possibly long) prompts.
    seen = generated.clone()
    r, t = _flat_token_indices(
        [rows[i].prompt_token_ids if p.repetition_penalty != 1.0 else () for i, p in zip(idx, params)],
        x.device,
    )
    seen[r, t] = True
    sub = torch.where(seen, torch.where(sub > 0, sub / rep, sub * rep), sub)

    presence = _column([p.presence_penalty for p in params], sub)
    frequency = _column([p.frequency_penalty for p in params], sub)
    sub -= presence * generated + frequency * counts
    x.index_copy_(0, index, sub)


def _adjust(logits: torch.Tensor, rows: Sequence[SamplingRow], batch: _Batch) -> torch.Tensor:
    """float32 logits after bias, suppression and penalties. May return
    ``logits`` itself when nothing applies; never modifies it."""
    if not batch.adjusts_logits:
        return logits.float()
    x = logits.to(torch.float32, copy=True)
    device = x.device
    if batch.constrained:
        index = torch.tensor(batch.constrained, device=device)
        words = torch.stack([rows[i].allowed_tokens for i in batch.constrained]).to(device)
        allowed = unpack_bitmask(words, x.shape[-1])
        x.index_copy_(0, index, x.index_select(0, index).masked_fill(~allowed, float("-inf")))
    if batch.only[0]:
        r, t = (device_tensor(v, torch.long, device) for v in batch.only)
        keep = torch.zeros_like(x, dtype=torch.bool)
        keep[r, t] = True
        index = torch.unique(r)
        x.index_copy_(0, index, x.index_select(0, index).masked_fill(~keep.index_select(0, index), float("-inf")))
    if batch.bias[0]:
        r, t, v = batch.bias
        x.index_put_(
            (device_tensor(r, torch.long, device), device_tensor(t, torch.long, device)),
            device_tensor(v, x.dtype, device),
            accumulate=True,
        )
    if batch.suppressed[0]:
        r, t = batch.suppressed
        x[device_tensor(r, torch.long, device), device_tensor(t, torch.long, device)] = float("-inf")
    if batch.penalized:
        _apply_penalties(x, rows, batch.penalized)
    return x


def apply_logit_adjustments(logits: torch.Tensor, rows: Sequence[SamplingRow]) -> torch.Tensor:
    """The logits greedy rows take the argmax of: float32, after logit_bias,
    suppressed tokens and penalties (before temperature and truncation).
    Never modifies ``logits``."""
    return _adjust(logits, rows, _Batch(rows))


def _truncate_(scaled: torch.Tensor, params: Sequence[SamplingParams]) -> None:
    """Set to -inf, in place, what top-k then top-p then min-p remove from the
    rows of ``scaled`` (one per entry of ``params``), with a single sort."""
    vocab = scaled.shape[-1]
    top_ks = [p.top_k if 0 < p.top_k < vocab else vocab for p in params]
    max_k = max(top_ks)
    if max_k < vocab:
        # Every row keeps at most max_k tokens: a partial sort suffices and
        # everything outside it is removed.
        sorted_logits, order = scaled.topk(max_k, dim=-1)
        scaled.fill_(float("-inf"))
    else:
        sorted_logits, order = scaled.sort(dim=-1, descending=True)
    ranks = torch.arange(max_k, device=scaled.device)
    sorted_logits.masked_fill_(ranks >= _column(top_ks, ranks), float("-inf"))
    # Top-p keeps the smallest prefix reaching the mass, renormalized after
    # top-k: a token stays while the mass strictly ahead of it is below top_p.
    probs = sorted_logits.softmax(dim=-1)
    top_p = _column([p.top_p if p.top_p < 1.0 else float("inf") for p in params], probs)
    drop = probs.cumsum(dim=-1) - probs >= top_p
    # Min-p compares to the best token, which top-k/top-p never remove, and a
    # probability ratio is a logit difference: no renormalization needed.
    min_p = _column([p.min_p for p in params], probs)
    drop |= sorted_logits < sorted_logits[:, :1] + min_p.log()
    sorted_logits.masked_fill_(drop, float("-inf"))
    scaled.scatter_(-1, order, sorted_logits)


class Sampler:
    """Samples one token per row; stateless apart from the shared generator."""

    def __init__(self, seed: int | None = None) -> None:
        """``seed`` seeds the generator of unseeded random rows; None uses
        torch's default generator of the logits' device (so torch.manual_seed
        governs it)."""
        self._seed = seed
        self._generators: dict[torch.device, torch.Generator] = {}
        self._host_generator: torch.Generator | None = None

    def _shared_generator(self, device: torch.device) -> torch.Generator | None:
        if self._seed is None:
            return None
        generator = self._generators.get(device)
        if generator is None:
            generator = torch.Generator(device=device)
            generator.manual_seed(self._seed)
            self._generators[device] = generator
        return generator

    def _noise_seed(self) -> int:
        """A fresh seed for gumbel_sample's counter-based noise, from a host generator seeded like the
        shared one (torch's default CPU generator when unseeded): no device round trip."""
        if self._seed is not None and self._host_generator is None:
            self._host_generator = torch.Generator().manual_seed(self._seed)
        return int(torch.randint(2**31 - 1, (1,), generator=self._host_generator))

    def __call__(self, logits: torch.Tensor, rows: list[SamplingRow]) -> SamplerOutput:
        if logits.dim() != 2 or logits.shape[0] != len(rows):
            raise ValueError(
                f"logits must be [num_rows={len(rows)}, vocab], got {tuple(logits.shape)}"
            )
        batch = _Batch(rows)
        tokens = self._tokens(logits, rows, batch)
        token_ids = tokens.tolist()
        logprobs, top_logprobs = _requested_logprobs(logits, rows, batch, tokens)
        return SamplerOutput(token_ids, logprobs, top_logprobs)

    def sample_tokens(self, logits: torch.Tensor, rows: list[SamplingRow]) -> torch.Tensor:
        """The tokens alone, left on the logits' device (no logprobs, nothing read back): what a step
        launched ahead of its predecessor's results samples (async scheduling)."""
        return self._tokens(logits, rows, _Batch(rows))

    def _tokens(self, logits: torch.Tensor, rows: list[SamplingRow], batch: _Batch) -> torch.Tensor:
        x = _adjust(logits, rows, batch)
        if not batch.random:
            return x.argmax(dim=-1)
        tokens = torch.empty(len(rows), dtype=torch.long, device=x.device)
        if batch.greedy:
            greedy = device_tensor(batch.greedy, torch.long, x.device)
            tokens[greedy] = x.index_select(0, greedy).argmax(dim=-1)
        random = device_tensor(batch.random, torch.long, x.device)
        tokens[random] = self._sample(x, rows, batch, random)
        return tokens

    def _sample(
        self, x: torch.Tensor, rows: Sequence[SamplingRow], batch: _Batch, random: torch.Tensor
    ) -> torch.Tensor:
        """Tokens of the random rows, in ``batch.random`` order."""
        params = [rows[i].params for i in batch.random]
        if not batch.generators and not any(p.needs_truncation for p in params):
            # Plain temperature sampling of unseeded rows (the common case): one pass over the logits.
            temperatures = device_tensor([p.temperature for p in params], torch.float32, x.device)
            return ops.gumbel_sample(x, random, temperatures, self._noise_seed())
        temperature = _column([p.temperature for p in params], x)
        scaled = x.index_select(0, random).div_(temperature)  # a copy: x may be the caller's

        truncated = [j for j, p in enumerate(params) if p.needs_truncation]
        if truncated:
            index = device_tensor(truncated, torch.long, x.device)
            sub = scaled.index_select(0, index)
            _truncate_(sub, [params[j] for j in truncated])
            scaled.index_copy_(0, index, sub)

        noise = torch.empty_like(scaled)
        if batch.num_unseeded:
            noise[: batch.num_unseeded].uniform_(generator=self._shared_generator(x.device))
        for j, generator in enumerate(batch.generators, start=batch.num_unseeded):
            if generator.device != x.device:
                raise ValueError(
                    f"seeded row generator is on {generator.device}, logits on {x.device}"
                )
            noise[j].uniform_(generator=generator)
        # E = -log(U) ~ Exp(1); uniform draws are several times cheaper than
        # exponential_ on CPU. U = 0 gives log(E) = inf: that token just loses.
        log_e = noise.log_().neg_().log_()
        return scaled.sub_(log_e).argmax(dim=-1)


def _requested_logprobs(
    logits: torch.Tensor, rows: Sequence[SamplingRow], batch: _Batch, tokens: torch.Tensor
) -> tuple[list[float | None], list[list[tuple[int, float]] | None]]:
    """Raw-distribution logprobs for the rows that asked, None elsewhere."""
    logprobs: list[float | None] = [None] * len(rows)
    top_logprobs: list[list[tuple[int, float]] | None] = [None] * len(rows)
    if not batch.logprob_rows:
        return logprobs, top_logprobs
    wanted = [rows[i].params.logprobs for i in batch.logprob_rows]
    index = device_tensor(batch.logprob_rows, torch.long, logits.device)
    values, tops = token_logprobs(
        logits.index_select(0, index), tokens.index_select(0, index), max(wanted)
    )
    for i, value, top, k in zip(batch.logprob_rows, values, tops, wanted):
        logprobs[i] = value
        top_logprobs[i] = top[:k]
    return logprobs, top_logprobs


def token_logprobs(
    logits: torch.Tensor, token_ids: torch.Tensor, num_top: int
) -> tuple[list[float], list[list[tuple[int, float]]]]:
    """Logprob of ``token_ids[i]`` under ``log_softmax(logits[i])`` and the
    ``num_top`` most likely (token, logprob) of each row, best first.

    Shared by output logprobs and prompt_logprobs (where ``token_ids`` are the
    next prompt tokens)."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    chosen = logprobs.gather(-1, token_ids.to(logprobs.device, torch.long).view(-1, 1))
    values = chosen.view(-1).tolist()
    num_top = min(num_top, logprobs.shape[-1])
    if num_top <= 0:
        return values, [[] for _ in values]
    top_values, top_ids = logprobs.topk(num_top, dim=-1)
    tops = [list(zip(ids, vals)) for ids, vals in zip(top_ids.tolist(), top_values.tolist())]
    return values, tops
