"""Beam search, on top of the engine as vLLM runs it.

Each step asks the engine for one token of every live beam with its
2 x beam_width most likely continuations (their raw-distribution logprobs);
the prefix cache makes a beam's re-submitted prefix nearly free. Of all
candidates of a prompt, the beam_width with the highest cumulative logprob
go on; a candidate ending in an end-of-sequence token is finished instead
(unless ignore_eos), as in Hugging Face's beam search. At the end, finished
and live beams are ranked by cumulative logprob / generated length **
length_penalty.

`BeamSearch` holds the algorithm and no engine: `requests()` says what to run
next, `advance()` takes the engine's answers, so the offline API and the
server drive the same code with a blocking or an async engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pagoda.engine.outputs import RequestOutput
from pagoda.engine.sampling_params import MAX_LOGPROBS, SamplingParams


MAX_LENGTH_PENALTY = 10.0


@dataclass(frozen=True)
class BeamSearchParams:
    beam_width: int
    max_tokens: int
    ignore_eos: bool = False
    length_penalty: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.beam_width, int) or not 1 <= self.beam_width <= MAX_LOGPROBS // 2:
            raise ValueError(f"beam_width must be an integer in [1, {MAX_LOGPROBS // 2}], got {self.beam_width!r}")
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise ValueError(f"max_tokens must be a positive integer, got {self.max_tokens!r}")
        # Beyond this, length ** length_penalty over- or underflows and the ranking means nothing.
        if not isinstance(self.length_penalty, (int, float)) or not -MAX_LENGTH_PENALTY <= self.length_penalty \
                <= MAX_LENGTH_PENALTY:
            raise ValueError(f"length_penalty must be a number in [-{MAX_LENGTH_PENALTY}, {MAX_LENGTH_PENALTY}], "
                             f"got {self.length_penalty!r}")


@dataclass
class Beam:
    """One hypothesis: the prompt, the tokens it chose, their summed logprob."""

    prompt_token_ids: list[int]
    output_token_ids: list[int] = field(default_factory=list)
    cumulative_logprob: float = 0.0
    finished: bool = False
    text: str = ""

    def ends(self, eos_token_ids: frozenset[int]) -> bool:
        """Whether its last token is an end-of-sequence token (not counted in its length)."""
        return bool(self.output_token_ids) and self.output_token_ids[-1] in eos_token_ids

    def score(self, length_penalty: float, eos_token_ids: frozenset[int]) -> float:
        length = len(self.output_token_ids) - self.ends(eos_token_ids)
        return self.cumulative_logprob / max(length, 1) ** length_penalty


@dataclass
class BeamSearchOutput:
    """One prompt's result: its best beams, best first, with their text."""

    sequences: list[Beam]


class BeamSearch:
    """The beams of a batch of prompts, advanced one token per step."""

    def __init__(self, prompts: list[list[int]], params: BeamSearchParams, eos_token_ids: list[int]) -> None:
        self.params = params
        self.eos = frozenset(eos_token_ids)
        self.live: list[list[Beam]] = [[Beam(list(p))] for p in prompts]
        self.done: list[list[Beam]] = [[] for _ in prompts]
        self.steps = 0
        #: What one step asks of each beam: one token, and the candidates' logprobs.
        self.step_params = SamplingParams(temperature=0.0, max_tokens=1, logprobs=2 * params.beam_width,
                                          ignore_eos=True)

    @property
    def finished(self) -> bool:
        return self.steps >= self.params.max_tokens or not any(self.live)

    def requests(self) -> list[list[int]]:
        """The token ids to run this step: every live beam's, prompt by prompt."""
        return [beam.prompt_token_ids + beam.output_token_ids for beams in self.live for beam in beams]

    def advance(self, outputs: list[RequestOutput]) -> None:
        """Takes the engine's answers to `requests()`, in the same order."""
        answers = iter(outputs)
        width = self.params.beam_width
        for index, beams in enumerate(self.live):
            candidates = []
            for beam in beams:
                top = next(answers).outputs[0].logprobs[0]
                candidates += [Beam(beam.prompt_token_ids, beam.output_token_ids + [token],
                                    beam.cumulative_logprob + entry.logprob) for token, entry in top.items()]
            candidates.sort(key=lambda b: b.cumulative_logprob, reverse=True)
            kept: list[Beam] = []
            for rank, candidate in enumerate(candidates[: 2 * width]):
                if not self.params.ignore_eos and candidate.output_token_ids[-1] in self.eos:
                    if rank < width:  # an ending below the top beam_width is dropped, as in Hugging Face's
                        candidate.finished = True
                        self.done[index].append(candidate)
                    continue
                kept.append(candidate)
                if len(kept) == width:
                    break
            self.live[index] = kept
        self.steps += 1

    def results(self) -> list[list[Beam]]:
        """Each prompt's best `beam_width` beams, best first."""
        penalty = self.params.length_penalty
        return [sorted(done + live, key=lambda b: b.score(penalty, self.eos), reverse=True)[: self.params.beam_width]
                for done, live in zip(self.done, self.live)]
