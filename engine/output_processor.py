"""From token ids to text: incremental detokenization and stop strings, outside the engine step.

The engine core works on token ids only and stops sequences on what token ids
decide (EOS, stop token ids, max_tokens, the context limit). Text is made here,
the text of logprob tokens included,
by whoever consumes the engine's outputs: inline after each step for the
offline engine, on the event loop for the server, where it overlaps the next
step instead of lengthening it. A stop string is found here too; the caller
then tells the engine to stop that sequence (`LLMEngine.stop_sequence`). Until
that reaches the engine a sequence may run one step more; its extra tokens are
never shown, since a completion is frozen the moment it finishes here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from pagoda.engine.detokenizer import IncrementalDetokenizer
from pagoda.engine.outputs import CompletionOutput, Logprob, RequestOutput
from pagoda.engine.sampling_params import SamplingParams


@dataclass(frozen=True)
class StopRequest:
    """A completion that a stop string ended: the engine must stop generating it."""

    request_id: str
    index: int
    stop: str


@dataclass
class _Completion:
    detokenizer: IncrementalDetokenizer
    num_seen: int = 0  # output tokens already fed to the detokenizer
    num_logprobs_named: int = 0  # output logprob entries whose tokens have their text
    final: CompletionOutput | None = None  # set once finished: later engine outputs are ignored


class OutputProcessor:
    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.tokenizer = tokenizer
        self._requests: dict[str, tuple[SamplingParams, list[_Completion]]] = {}
        #: request id -> prompt positions whose logprob tokens have their text
        self._prompt_logprobs_named: dict[str, int] = {}

    def add_request(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams) -> None:
        completions = [
            _Completion(
                IncrementalDetokenizer(
                    self.tokenizer, prompt_token_ids, skip_special_tokens=params.skip_special_tokens,
                    stop=params.stop, include_stop_str_in_output=params.include_stop_str_in_output,
                )
            )
            for _ in range(params.n)
        ]
        self._requests[request_id] = (params, completions)

    def abort_request(self, request_id: str) -> None:
        self._requests.pop(request_id, None)
        self._prompt_logprobs_named.pop(request_id, None)

    def process(self, outputs: list[RequestOutput]) -> tuple[list[RequestOutput], list[StopRequest]]:
        """Fills text and delta_text in place; returns the outputs of known requests and the stops found."""
        processed: list[RequestOutput] = []
        stops: list[StopRequest] = []
        for out in outputs:
            entry = self._requests.get(out.request_id)
            if entry is None:
                continue  # aborted, or finished here already (its engine side is still winding down)
            params, completions = entry
            if out.prompt_logprobs is not None:
                self._name_prompt_logprobs(out.request_id, out.prompt_logprobs)
            for i, c in enumerate(out.outputs):
                state = completions[c.index]
                if c.logprobs is not None and state.final is None:
                    self._name_tokens(c.logprobs[state.num_logprobs_named:])
                    state.num_logprobs_named = len(c.logprobs)
                out.outputs[i], stop = self._process_completion(params, state, c)
                if stop is not None:
                    stops.append(StopRequest(out.request_id, c.index, stop))
            out.finished = all(c.finish_reason is not None for c in out.outputs)
            if out.finished:
                del self._requests[out.request_id]
                self._prompt_logprobs_named.pop(out.request_id, None)
            processed.append(out)
        return processed, stops

    def _name_prompt_logprobs(self, request_id: str, prompt_logprobs: list[dict[int, Logprob] | None]) -> None:
        """Names the tokens of the prompt positions computed since the last
        output; position 0 has no logprob, later ones fill in prefill order."""
        start = self._prompt_logprobs_named.get(request_id, 1)
        end = start
        while end < len(prompt_logprobs) and prompt_logprobs[end] is not None:
            end += 1
        self._name_tokens(prompt_logprobs[start:end])
        self._prompt_logprobs_named[request_id] = end

    def _name_tokens(self, entries: Iterable[dict[int, Logprob] | None]) -> None:
        """Sets each logprob's decoded_token, in one batched tokenizer call."""
        unnamed = [lp for entry in entries if entry for lp in entry.items() if lp[1].decoded_token is None]
        if not unnamed:
            return
        texts = self.tokenizer.batch_decode([[tid] for tid, _ in unnamed])
        for (_, logprob), text in zip(unnamed, texts):
            logprob.decoded_token = text

    @staticmethod
    def _process_completion(
        params: SamplingParams, state: _Completion, c: CompletionOutput
    ) -> tuple[CompletionOutput, str | None]:
        if state.final is not None:
            return dataclasses.replace(state.final, delta_text=""), None
        new = c.token_ids[state.num_seen :]
        state.num_seen = len(c.token_ids)
        # A stop token (EOS or a stop id) shows in the text only if asked to.
        stopped_by_token = c.finish_reason == "stop" and not isinstance(c.stop_reason, str)
        if stopped_by_token and not params.include_stop_str_in_output:
            new = new[:-1]
        detok = state.detokenizer
        stop = detok.update(new, check_stop=len(c.token_ids) >= params.min_tokens) if new else None
        if stop is not None:
            c.finish_reason, c.stop_reason = "stop", stop
        elif c.finish_reason is not None:
            detok.finish()
        c.text = detok.output_text
        c.delta_text = detok.get_delta(c.finish_reason is not None)
        if c.finish_reason is not None:
            state.final = c
        return c, stop
