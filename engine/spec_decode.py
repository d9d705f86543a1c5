"""Speculative decoding with n-gram (prompt lookup) drafts: vLLM's `{"method": "ngram"}`.

A decode step normally yields one token per sequence for a full pass over the
weights. When the text repeats itself (code edits, quoting, extraction, RAG
answers copying their sources), the tokens that followed the last occurrence
of the sequence's final n tokens are a good guess of what comes next: the
engine feeds those k drafts with the real last token in one pass (k + 1
positions, their KV written as for a prefill chunk), samples every position,
and keeps the drafts up to the first position whose sample differs, plus that
sample. Each position is sampled exactly as a plain decode would sample it
(same logits processing, penalties over the history including accepted drafts,
a seeded request's draws taken in the same order and rewound past the
rejected ones), so outputs are those of decoding without drafts, greedy or
sampled, only more tokens per pass.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

if TYPE_CHECKING:
    from pagoda.engine.sequence import Sequence

METHODS = ("ngram", "draft_model")
MAX_SPECULATIVE_TOKENS = 16


@dataclass(frozen=True)
class SpeculativeConfig:
    """num_speculative_tokens drafts per step: found by matching the sequence's last n tokens, n from
    prompt_lookup_max down to prompt_lookup_min, against its earlier tokens (ngram), or guessed by a
    smaller model sharing the target's tokenizer (draft_model, `model` its directory)."""

    num_speculative_tokens: int
    prompt_lookup_max: int = 4
    prompt_lookup_min: int = 1
    method: str = "ngram"
    model: str | None = None

    @classmethod
    def parse(cls, value: dict[str, Any] | SpeculativeConfig | None) -> SpeculativeConfig | None:
        """From vLLM's speculative_config dict (a `model` implies method draft_model); ValueError naming
        what is wrong."""
        if value is None or isinstance(value, SpeculativeConfig):
            return value
        if not isinstance(value, dict):
            raise ValueError("speculative_config must be an object")
        unknown = set(value) - {"method", "num_speculative_tokens", "prompt_lookup_max", "prompt_lookup_min", "model"}
        if unknown:
            raise ValueError(f"speculative_config: unknown keys {sorted(unknown)}")
        model = value.get("model")
        method = value.get("method", "draft_model" if model is not None else "ngram")
        if method not in METHODS:
            raise ValueError(f"speculative_config method {method!r} is not supported (supported: {', '.join(METHODS)})")
        if (method == "draft_model") != (model is not None) or not isinstance(model, (str, type(None))):
            raise ValueError("speculative_config: method draft_model takes the draft's directory as `model`, "
                             "and only it does")
        try:
            k = int(value["num_speculative_tokens"])
            hi = int(value.get("prompt_lookup_max", 4))
            lo = int(value.get("prompt_lookup_min", 1))
        except KeyError:
            raise ValueError("speculative_config needs num_speculative_tokens") from None
        except (TypeError, ValueError):
            raise ValueError("speculative_config values must be integers") from None
        if not 1 <= k <= MAX_SPECULATIVE_TOKENS:
            raise ValueError(f"num_speculative_tokens must be in 1..{MAX_SPECULATIVE_TOKENS}, got {k}")
        if not 1 <= lo <= hi:
            raise ValueError(f"need 1 <= prompt_lookup_min <= prompt_lookup_max, got {lo} and {hi}")
        return cls(k, hi, lo, method, model)


# After a verification that kept no draft, a sequence waits 1, 3, 7, 15 decode steps before it is
# given drafts again (reset by the next kept draft): text that does not repeat itself then pays
# for a wasted verification now and then, not at every step.
MAX_DRAFT_WAIT = 15


def backing_off(seq: Sequence) -> bool:
    """Whether seq sits this step out of drafting (counting the step off its wait)."""
    if seq.spec_wait > 0:
        seq.spec_wait -= 1
        return True
    return False


def back_off(seq: Sequence, accepted: int) -> None:
    """Backs a sequence off after a verification that kept nothing; any kept draft resets it."""
    seq.spec_misses = 0 if accepted else seq.spec_misses + 1
    seq.spec_wait = min(2**seq.spec_misses - 1, MAX_DRAFT_WAIT)


class NgramProposer:
    batched = False  # drafts sequence by sequence, as the scheduler meets them

    def __init__(self, config: SpeculativeConfig) -> None:
        self.config = config
        self.num_speculative_tokens = config.num_speculative_tokens
        # Each sequence's tokens as a growing int64 array (capacity, filled): tokens only ever get
        # appended, so a step copies its new tokens, not the whole history.
        self._arrays: weakref.WeakKeyDictionary[Sequence, tuple[np.ndarray, int]] = weakref.WeakKeyDictionary()

    def _tokens(self, seq: Sequence) -> np.ndarray:
        array, filled = self._arrays.get(seq, (np.empty(0, dtype=np.int64), 0))
        n = seq.num_tokens
        if n > array.size:
            grown = np.empty(max(2 * array.size, n, 64), dtype=np.int64)
            grown[:filled] = array[:filled]
            array = grown
        array[filled:n] = seq.token_ids[filled:n]
        self._arrays[seq] = (array, n)
        return array[:n]

    def drafts_for(self, seq: Sequence, limit: int) -> list[int]:
        """The drafts to verify after seq's last token this step (none while it backs off)."""
        return [] if backing_off(seq) else self.propose(self._tokens(seq), limit)

    record = staticmethod(back_off)

    def propose(self, token_ids: list[int] | np.ndarray, limit: int) -> list[int]:
        """Up to `limit` tokens that followed the latest earlier occurrence of the longest suffix
        (of prompt_lookup_max down to prompt_lookup_min tokens) found among the earlier tokens."""
        c = self.config
        limit = min(limit, c.num_speculative_tokens)
        if limit < 1 or len(token_ids) <= c.prompt_lookup_min:
            return []
        tokens = np.asarray(token_ids, dtype=np.int64)
        for n in range(min(c.prompt_lookup_max, len(tokens) - 1), c.prompt_lookup_min - 1, -1):
            # Windows starting before the suffix itself; a match at i is followed by tokens[i + n:].
            windows = sliding_window_view(tokens[:-1], n)
            hits = np.flatnonzero((windows == tokens[-n:]).all(axis=1))
            if hits.size:
                start = int(hits[-1]) + n
                return tokens[start : start + limit].tolist()
        return []


@dataclass
class SpecDecodeStats:
    """Drafts proposed and accepted so far, and the passes that verified them."""

    draft_tokens: int = 0
    accepted_tokens: int = 0
    verify_passes: int = 0

    def record(self, drafts: int, accepted: int) -> None:
        self.draft_tokens += drafts
        self.accepted_tokens += accepted
        self.verify_passes += 1

    @property
    def acceptance_rate(self) -> float:
        return self.accepted_tokens / self.draft_tokens if self.draft_tokens else 0.0


def accept(drafts: list[int], sampled: list[int]) -> list[int]:
    """The tokens a verification keeps: samples while they equal the drafts, then the first that does
    not (or, all drafts kept, the one after them). sampled[i] was drawn at draft i's position."""
    kept: list[int] = []
    for i, token in enumerate(sampled):
        kept.append(token)
        if i >= len(drafts) or token != drafts[i]:
            break
    return kept
