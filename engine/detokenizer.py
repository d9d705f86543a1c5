"""Incremental detokenization with stop strings, one sequence at a time.

Decoding the whole output at every step costs O(n^2); decoding each token alone
breaks words whose bytes span several tokens (byte-level BPE splits accented,
CJK and emoji characters) and loses the leading spaces SentencePiece attaches
to context. The tokenizers library's DecodeStream does it right in Rust: seeded
with the last prompt tokens as context, it returns each new piece of text once
it is complete UTF-8, and None while a character is still incomplete.

Stop strings are searched only in the region the new text can complete, the
output is truncated at the first match, and `get_delta` holds back a tail that
could still become a stop string, so a streaming client never sees text that
is later cut off.
"""

from __future__ import annotations

from tokenizers.decoders import DecodeStream
from transformers import PreTrainedTokenizerBase

# Prompt tokens kept as decoding context for the first output tokens.
_CONTEXT_TOKENS = 5


class IncrementalDetokenizer:
    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        prompt_token_ids: list[int],
        *,
        skip_special_tokens: bool = True,
        stop: list[str] | tuple[str, ...] = (),
        include_stop_str_in_output: bool = False,
    ) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.stop = tuple(stop)
        self.include_stop_str_in_output = include_stop_str_in_output
        self._backend = tokenizer.backend_tokenizer  # the Rust tokenizer of a fast tokenizer
        self._stream = DecodeStream(ids=list(prompt_token_ids[-_CONTEXT_TOKENS:]), skip_special_tokens=skip_special_tokens)
        self._pending: list[int] = []  # tokens of a character not complete yet
        self._stopped = False
        self._emitted = 0  # characters of output_text already returned by get_delta
        self.output_text = ""
        # Without include_stop_str_in_output a stop string is cut from the text,
        # so up to len(longest) - 1 trailing characters might still vanish.
        self._holdback = 0 if include_stop_str_in_output else max((len(s) for s in self.stop), default=1) - 1

    def update(self, new_token_ids: list[int], check_stop: bool = True) -> str | None:
        """Append tokens; returns the stop string they completed, if any (then the text is final).

        ``check_stop`` is False while the sequence is below its min_tokens.
        """
        if self._stopped:
            return None
        previous_len = len(self.output_text)
        for token in new_token_ids:
            piece = self._stream.step(self._backend, token)
            if piece is None:
                self._pending.append(token)
            else:
                self._pending.clear()
                self.output_text += piece
        if len(self.output_text) == previous_len or not check_stop:
            return None
        return self._find_stop(previous_len)

    def _find_stop(self, previous_len: int) -> str | None:
        best: tuple[int, str] | None = None
        for stop in self.stop:
            # A match must end inside the new text.
            start = max(previous_len - len(stop) + 1, 0)
            idx = self.output_text.find(stop, start)
            if idx != -1 and (best is None or idx < best[0]):
                best = (idx, stop)
        if best is None:
            return None
        idx, stop = best
        self.output_text = self.output_text[: idx + len(stop) if self.include_stop_str_in_output else idx]
        self._stopped = True
        return stop

    def finish(self) -> None:
        """The sequence ended: show whatever is pending, incomplete characters included."""
        if not self._stopped and self._pending:
            self.output_text += self.tokenizer.decode(self._pending, skip_special_tokens=self.skip_special_tokens)
            self._pending.clear()

    def get_delta(self, finished: bool) -> str:
        """Text not returned before; while running, minus a tail that a stop string could still claim."""
        end = len(self.output_text)
        if not finished and not self._stopped:
            end = max(end - self._holdback, self._emitted)
        delta = self.output_text[self._emitted : end]
        self._emitted = end
        return delta
