"""Incremental detokenization with stop strings, one sequence at a time.

Decoding the whole output at every step costs O(n^2); decoding each token alone
breaks words whose bytes span several tokens (byte-level BPE splits accented,
CJK and emoji characters) and loses the leading spaces SentencePiece attaches
to context. So each step decodes a short window: the text of tokens
[prefix_offset, read_offset) is what was already shown, and the text of
[prefix_offset, end) minus it is new, unless it ends in an incomplete UTF-8
character (U+FFFD), in which case we wait for the next token.

Stop strings are searched only in the region the new text can complete, the
output is truncated at the first match, and `get_delta` holds back a tail that
could still become a stop string, so a streaming client never sees text that
is later cut off.
"""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

# Prompt tokens kept as decoding context for the first output tokens.
_CONTEXT_TOKENS = 5
_REPLACEMENT = "\ufffd"


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
        self._token_ids = list(prompt_token_ids)
        self._prefix_offset = max(len(prompt_token_ids) - _CONTEXT_TOKENS, 0)
        self._read_offset = len(prompt_token_ids)
        self._stopped = False
        self._emitted = 0  # characters of output_text already returned by get_delta
        self.output_text = ""
        # Without include_stop_str_in_output a stop string is cut from the text,
        # so up to len(longest) - 1 trailing characters might still vanish.
        self._holdback = 0 if include_stop_str_in_output else max((len(s) for s in self.stop), default=1) - 1

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def update(self, new_token_ids: list[int], check_stop: bool = True) -> str | None:
        """Append tokens; returns the stop string they completed, if any (then the text is final).

        ``check_stop`` is False while the sequence is below its min_tokens.
        """
        if self._stopped:
            return None
        self._token_ids.extend(new_token_ids)
        prefix_text = self._decode(self._token_ids[self._prefix_offset : self._read_offset])
        full_text = self._decode(self._token_ids[self._prefix_offset :])
        if len(full_text) <= len(prefix_text) or full_text.endswith(_REPLACEMENT):
            return None  # an incomplete character, or tokens that decode to nothing
        previous_len = len(self.output_text)
        self.output_text += full_text[len(prefix_text) :]
        self._prefix_offset = self._read_offset
        self._read_offset = len(self._token_ids)
        return self._find_stop(previous_len) if check_stop else None

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
        if self._stopped or self._read_offset == len(self._token_ids):
            return
        prefix_text = self._decode(self._token_ids[self._prefix_offset : self._read_offset])
        full_text = self._decode(self._token_ids[self._prefix_offset :])
        self.output_text += full_text[len(prefix_text) :]
        self._read_offset = len(self._token_ids)

    def get_delta(self, finished: bool) -> str:
        """Text not returned before; while running, minus a tail that a stop string could still claim."""
        end = len(self.output_text)
        if not finished and not self._stopped:
            end = max(end - self._holdback, self._emitted)
        delta = self.output_text[self._emitted : end]
        self._emitted = end
        return delta
