"""Structured outputs: a completion held to a JSON Schema, a regex, a choice
or a grammar, by masking every token that would leave the language.

xgrammar compiles each constraint against the tokenizer's vocabulary once
(cached by its text: many requests share a schema) and a matcher per sequence
walks the grammar as tokens are accepted. Before each sampling step the
matcher fills a packed bitmask of the tokens allowed next (one bit per
vocabulary entry, int32 words), which the sampler applies with the other
logit adjustments; when the grammar is complete only stop tokens remain, so
the sequence ends with EOS (or is ended, under ignore_eos).

A reasoning model thinks first: with `Thinking`, the constraint waits until
</think> (a reply that may open with <think> gets that token allowed beside
the constraint's first ones), so the model reasons freely and only its answer
is held to the format.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence as Seq
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
from transformers import PreTrainedTokenizerBase

from pagoda.engine.sampling_params import StructuredOutput

if TYPE_CHECKING:
    # Imported when a first constraint is compiled: an engine that never gets
    # one (the GPU benchmark machines, which have no xgrammar) never needs it.
    import xgrammar as xgr


class InvalidConstraint(ValueError):
    """A structured output's schema, regex or grammar that cannot be compiled."""


@dataclass(frozen=True)
class Thinking:
    """A reasoning model's thinking, which a constraint waits out: the ids of its <think> and
    </think> tokens, and where the reply starts: inside it (the prompt opened it), where it
    may open it, or after it (the prompt closed it, as enable_thinking=False templates do)."""

    start_token: int
    end_token: int
    state: Literal["inside", "may_open", "done"]


class Grammar:
    """One sequence's place in its constraint (and in its thinking, which comes first)."""

    def __init__(self, compiled: xgr.CompiledGrammar, vocab_size: int, thinking: Thinking | None = None) -> None:
        import xgrammar as xgr

        self._matcher = xgr.GrammarMatcher(compiled)
        self._bitmask = xgr.allocate_token_bitmask(1, vocab_size)
        self._thinking = thinking
        self._phase = thinking.state if thinking is not None else "done"

    def allowed_tokens(self) -> torch.Tensor | None:
        """The packed bitmask (int32 words, bit t of the vocabulary) of the tokens allowed next;
        None while the model thinks (anything goes)."""
        if self._phase == "inside":
            return None
        self._matcher.fill_next_token_bitmask(self._bitmask, 0)
        words = self._bitmask[0]
        if self._phase == "may_open":
            token = self._thinking.start_token
            words = words.clone()
            bit = 1 << (token % 32)
            words[token // 32] |= bit - (1 << 32) if bit >= 1 << 31 else bit  # int32 words: bit 31 is the sign
        return words

    def accept(self, token: int) -> bool:
        """Advances past `token`; False if the grammar does not allow it."""
        if self._phase == "may_open":
            if token == self._thinking.start_token:
                self._phase = "inside"
                return True
            self._phase = "done"
        if self._phase == "inside":
            if token == self._thinking.end_token:
                self._phase = "done"
            return True
        return self._matcher.accept_token(token)

    @property
    def is_terminated(self) -> bool:
        """The text is complete and a stop token was accepted."""
        return self._phase == "done" and self._matcher.is_terminated()


class GrammarCompiler:
    """Compiles constraints for one tokenizer; thread-safe, built on first use
    (reading the vocabulary takes a moment that requests without a constraint never pay)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, vocab_size: int, stop_token_ids: Seq[int]) -> None:
        self._tokenizer = tokenizer
        self.vocab_size = vocab_size
        self._stop_token_ids = list(stop_token_ids)
        self._compiler: xgr.GrammarCompiler | None = None
        self._guard = threading.Lock()

    def _get(self) -> xgr.GrammarCompiler:
        import xgrammar as xgr

        with self._guard:
            if self._compiler is None:
                info = xgr.TokenizerInfo.from_huggingface(self._tokenizer, vocab_size=self.vocab_size,
                                                          stop_token_ids=self._stop_token_ids)
                self._compiler = xgr.GrammarCompiler(info, max_threads=2)
            return self._compiler

    def compile(self, spec: StructuredOutput) -> xgr.CompiledGrammar:
        """The compiled constraint (xgrammar caches it by its text); InvalidConstraint,
        naming what is wrong, for a schema, regex or grammar that xgrammar cannot read."""
        compiler = self._get()
        try:
            if spec.json is not None:
                schema = spec.json if isinstance(spec.json, str) else json.dumps(spec.json)
                return compiler.compile_json_schema(schema, any_whitespace=False)
            if spec.json_object:  # an object, not any JSON value (OpenAI's json_object)
                return compiler.compile_json_schema('{"type": "object"}', any_whitespace=False)
            if spec.regex is not None:
                return compiler.compile_regex(spec.regex)
            if spec.choice is not None:
                return compiler.compile_grammar(_choice_grammar(spec.choice))
            return compiler.compile_grammar(spec.grammar or "")
        except (RuntimeError, ValueError, TypeError) as err:
            # `is not None`: an empty grammar or regex is given too (a truth test found none: StopIteration,
            # which hung the request's future: the fuzzer's find).
            kind = next(k for k in ("json", "json_object", "regex", "choice", "grammar")
                        if getattr(spec, k) not in (None, False))
            raise InvalidConstraint(f"structured output {kind} is invalid: {str(err).splitlines()[0]}") from None


def _choice_grammar(choices: Seq[str]) -> str:
    """An EBNF grammar whose sentences are exactly `choices`."""
    return "root ::= " + " | ".join(json.dumps(choice) for choice in choices)
