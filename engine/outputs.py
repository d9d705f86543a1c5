"""What the engine hands back: vLLM-shaped request and completion outputs."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Logprob:
    logprob: float
    rank: int | None = None  # 1 = most likely; None when the token is outside the returned top list
    decoded_token: str | None = None


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None = None
    logprobs: list[dict[int, Logprob]] | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    # Text added since the previous output of this request, with a possible
    # stop-string prefix held back: what a streaming server sends.
    delta_text: str = ""


@dataclass
class RequestMetrics:
    arrival_time: float
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    finished_time: float | None = None
    num_cached_tokens: int = 0
    num_preemptions: int = 0


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool
    prompt_logprobs: list[dict[int, Logprob] | None] | None = None
    metrics: RequestMetrics | None = None
    num_cached_tokens: int = 0
    # A pooling request's result: an embedding model's unit-length embedding of the prompt, or a
    # sequence classifier's per-label logits.
    embedding: list[float] | None = None


@dataclass
class ClassificationOutput:
    """A classifier's verdict on one prompt: each label's probability, and the labels' names."""

    probs: list[float]
    labels: list[str]

    @property
    def label(self) -> str:
        return self.labels[max(range(len(self.probs)), key=self.probs.__getitem__)]


@dataclass
class ScoringOutput:
    """The relevance of one (text_1, text_2) pair."""

    score: float
