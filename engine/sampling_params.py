"""Per-request sampling parameters, with vLLM's names, defaults and limits.

Everything is validated when the object is built, so a bad request fails before
it reaches the scheduler. The OpenAI server turns the ``ValueError`` messages
into 400 responses verbatim, which is why every message names the field, the
allowed range and the value it got.
"""

from __future__ import annotations

import enum
import json
import math
import numbers
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MAX_LOGPROBS = 20
"""Most alternatives a request may ask for per position (OpenAI's limit)."""

MAX_LOGIT_BIAS = 100.0
MAX_PENALTY = 2.0

GREEDY_TEMPERATURE = 1e-5
"""Temperatures below this sample greedily, as in vLLM: dividing logits by a
vanishing temperature overflows to inf/nan instead of converging to argmax."""

# torch.Generator.manual_seed accepts exactly this range; refusing here keeps a
# huge seed a 400 instead of an engine crash.
_SEED_MIN, _SEED_MAX = -(2**63), 2**64 - 1


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_finite(value: object) -> bool:
    return (
        isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and math.isfinite(value)
    )


def _fmt(bound: float) -> str:
    return f"{bound:g}" if isinstance(bound, float) else str(bound)


def _check_number(
    name: str,
    value: object,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    integer: bool = False,
) -> None:
    """Refuse ``value`` unless it is a finite number (an int if ``integer``)
    within ``low``..``high`` (bounds inclusive unless ``low_open``)."""
    kind = "an integer" if integer else "a finite number"
    if not (_is_int(value) if integer else _is_finite(value)):
        raise ValueError(f"{name} must be {kind}, got {value!r}")
    above = low is None or (value > low if low_open else value >= low)
    below = high is None or value <= high
    if above and below:
        return
    if high is None:
        rule = f"{'>' if low_open else '>='} {_fmt(low)}"
    else:
        rule = f"in {'(' if low_open else '['}{_fmt(low)}, {_fmt(high)}]"
    raise ValueError(f"{name} must be {rule}, got {value!r}")


def _normalize_stop(stop: str | list[str] | None) -> list[str]:
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else list(stop)
    for s in stops:
        if not isinstance(s, str) or not s:
            raise ValueError(f"stop must contain only non-empty strings, got {s!r}")
    return stops


@dataclass(frozen=True)
class StructuredOutput:
    """A constraint on the completion's text (vLLM's structured outputs):
    exactly one of a JSON Schema, any JSON object, a regular expression, one
    of a list of strings, or an EBNF grammar (GBNF, as xgrammar reads it)."""

    json: dict[str, Any] | str | None = None
    json_object: bool = False
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None

    def __post_init__(self) -> None:
        given = [name for name in ("json", "regex", "choice", "grammar") if getattr(self, name) is not None]
        given += ["json_object"] if self.json_object else []
        if len(given) != 1:
            raise ValueError("structured output takes exactly one of json, json_object, regex, choice, grammar; "
                             f"got {', '.join(given) or 'none'}")
        if self.choice is not None and (not self.choice or not all(isinstance(c, str) and c for c in self.choice)):
            raise ValueError("structured output choice must be a non-empty list of non-empty strings")


class RequestOutputKind(enum.Enum):
    """Which outputs the engine makes of a request (vLLM's values; its DELTA is not offered).

    CUMULATIVE: one per step, with everything so far, as a stream needs. FINAL_ONLY: one when the request
    ends, as `LLM.generate` needs; the steps between then build no output and copy no token list, which
    at hundreds of sequences per step is a measurable part of the engine's own time.
    """

    CUMULATIVE = 0
    FINAL_ONLY = 2


@dataclass
class SamplingParams:
    """How to sample one request's completion (see vLLM's SamplingParams).

    ``stop`` is normalized to a list of strings and ``stop_token_ids`` to a
    list of ints, so consumers never branch on None or a bare string.
    """

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: dict[int, float] | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    max_tokens: int | None = 16
    min_tokens: int = 0
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    structured_output: StructuredOutput | None = None
    allowed_token_ids: list[int] | None = None
    """Only these tokens may be sampled (vLLM's); None: any."""
    bad_words: list[str] | None = None
    """Words never generated (vLLM's): a word's last token is banned whenever the
    output so far ends with the tokens before it, with or without a leading space."""
    output_kind: RequestOutputKind = RequestOutputKind.CUMULATIVE

    def __post_init__(self) -> None:
        self.stop = _normalize_stop(self.stop)
        self.stop_token_ids = list(self.stop_token_ids or [])
        self._validate()

    def _validate(self) -> None:
        _check_number("n", self.n, 1, integer=True)
        _check_number("temperature", self.temperature, 0)
        _check_number("top_p", self.top_p, 0, 1, low_open=True)
        if not (_is_int(self.top_k) and self.top_k >= -1):
            raise ValueError(
                f"top_k must be an integer >= 1, or 0 or -1 to disable it, got {self.top_k!r}"
            )
        _check_number("min_p", self.min_p, 0, 1)
        _check_number("presence_penalty", self.presence_penalty, -MAX_PENALTY, MAX_PENALTY)
        _check_number("frequency_penalty", self.frequency_penalty, -MAX_PENALTY, MAX_PENALTY)
        _check_number("repetition_penalty", self.repetition_penalty, 0, low_open=True)
        if self.max_tokens is not None:
            _check_number("max_tokens", self.max_tokens, 1, integer=True)
        _check_number("min_tokens", self.min_tokens, 0, self.max_tokens, integer=True)
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(self, name)
            if value is not None:
                _check_number(name, value, 0, MAX_LOGPROBS, integer=True)
        if self.seed is not None:
            _check_number("seed", self.seed, _SEED_MIN, _SEED_MAX, integer=True)
        for token in self.stop_token_ids:
            if not _is_int(token):
                raise ValueError(f"stop_token_ids must contain only integers, got {token!r}")
        for token, bias in (self.logit_bias or {}).items():
            if not _is_int(token):
                raise ValueError(f"logit_bias keys must be integer token ids, got {token!r}")
            _check_number(f"logit_bias[{token}]", bias, -MAX_LOGIT_BIAS, MAX_LOGIT_BIAS)
        if self.allowed_token_ids is not None:
            if not self.allowed_token_ids or not all(_is_int(t) for t in self.allowed_token_ids):
                raise ValueError("allowed_token_ids must be a non-empty list of integer token ids")
        if self.bad_words is not None and not all(isinstance(w, str) and w.strip() for w in self.bad_words):
            raise ValueError("bad_words must be a list of non-blank strings")
        if not isinstance(self.output_kind, RequestOutputKind):
            raise ValueError(f"output_kind must be one of {[k.name for k in RequestOutputKind]}, got {self.output_kind!r}")

    def validate_for_vocab(self, vocab_size: int) -> None:
        """Refuse token ids the model cannot produce; needs the model, so it is
        a separate step from construction."""
        for name, tokens in (
            ("logit_bias", self.logit_bias or {}),
            ("stop_token_ids", self.stop_token_ids),
            ("allowed_token_ids", self.allowed_token_ids or []),
        ):
            for token in tokens:
                if not 0 <= token < vocab_size:
                    raise ValueError(
                        f"{name} token ids must be in [0, {vocab_size}), got {token}"
                    )

    @property
    def greedy(self) -> bool:
        """Pick the argmax of the processed logits instead of sampling."""
        return self.temperature < GREEDY_TEMPERATURE

    @property
    def needs_penalties(self) -> bool:
        """Whether any repetition/presence/frequency penalty changes logits."""
        return (
            self.repetition_penalty != 1.0
            or self.presence_penalty != 0.0
            or self.frequency_penalty != 0.0
        )

    @property
    def needs_truncation(self) -> bool:
        """Whether top-k, top-p or min-p removes tokens from the support."""
        return self.top_k > 0 or self.top_p < 1.0 or self.min_p > 0.0


#: generation_config.json keys that become a model's default sampling parameters (vLLM reads the same).
GENERATION_CONFIG_KEYS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")


def sampling_defaults(model_dir: str, source: str = "auto") -> dict[str, Any]:
    """The sampling parameters a request that sets none gets, as vLLM's --generation-config:
    "auto" reads the model directory's generation_config.json (Qwen3 ships temperature 0.6,
    top_p 0.95, top_k 20, for example), "vllm" keeps the engine's own defaults, and any other
    value is a directory holding a generation_config.json. ValueError for values that are not
    valid sampling parameters."""
    if source == "vllm":
        return {}
    path = Path(model_dir if source == "auto" else source) / "generation_config.json"
    if not path.is_file():
        if source != "auto":
            raise ValueError(f"generation config {path} does not exist")
        return {}
    given = json.loads(path.read_text())
    defaults = {key: given[key] for key in GENERATION_CONFIG_KEYS if given.get(key) is not None}
    try:
        SamplingParams(**defaults)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from None
    return defaults

