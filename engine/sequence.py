"""One sequence being generated: its tokens, its place in the KV cache, its progress.

A request with n > 1 becomes n sequences sharing the prompt (and, through the
prefix cache, the prompt's KV blocks).
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from pagoda.engine.lora import LoRAAdapter
    from pagoda.engine.multimodal import ImageInputs
    from pagoda.engine.sampling_params import SamplingParams
    from pagoda.engine.structured_output import Grammar


# Stands for a token a step in flight has not returned yet (async scheduling); never a real token id.
PENDING_TOKEN = -1


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


class FinishReason(str, enum.Enum):
    STOP = "stop"
    LENGTH = "length"
    ABORT = "abort"


@dataclass(eq=False)
class Sequence:
    seq_id: int
    request_id: str
    index: int  # which of the request's n completions this is
    prompt_token_ids: list[int]
    params: SamplingParams
    generator: torch.Generator | None = None
    arrival_time: float = field(default_factory=time.monotonic)
    grammar: Grammar | None = None  # where a structured output's constraint stands
    bad_words: list[list[int]] = field(default_factory=list)  # token sequences of params.bad_words
    lora: LoRAAdapter | None = None  # the adapter it runs with, if any
    embed: bool = False  # an embedding request: its prompt is run, nothing is generated
    # Its prompt's tokens attend to each other both ways (an encoder's): computed in one step.
    bidirectional: bool = False
    priority: int = 0  # under the priority policy: lower runs first
    embedding: list[float] | None = None
    # Where its prefix-cache hash chain starts: None, or a value of its adapter and
    # its request's cache_salt, so KV blocks are shared only under both alike.
    cache_salt: int | None = None
    images: ImageInputs | None = None  # the prompt's images, shared by the request's n sequences

    token_ids: list[int] = field(init=False)
    output_token_ids: list[int] = field(default_factory=list)
    status: SequenceStatus = SequenceStatus.WAITING
    num_computed_tokens: int = 0
    num_cached_tokens: int = 0  # prompt tokens served from the prefix cache at first schedule
    # One block table per KV-cache group (kv_cache_layout.py); empty while it holds no blocks.
    block_tables: list[list[int]] = field(default_factory=list)
    # Models with recurrent layers: the state slot it holds with its blocks, and the snapshot its
    # prefix-cache hit resumes from until its blocks are allocated (block_manager.py).
    state_slot: int | None = None
    restore_snapshot: int | None = None
    # Hashes of this sequence's full blocks, in order; extended as blocks fill up.
    block_hashes: list[int] = field(default_factory=list)
    num_registered_blocks: int = 0  # leading full blocks already offered to the prefix cache
    finish_reason: FinishReason | None = None
    stop_reason: int | str | None = None
    output_logprobs: list[dict[int, Any]] = field(default_factory=list)
    cumulative_logprob: float = 0.0  # kept as tokens arrive, not re-summed every step
    prompt_logprobs: list[dict[int, Any] | None] | None = None
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    num_preemptions: int = 0
    # Speculative decoding: the draft tokens this step verifies after the last real token.
    spec_token_ids: list[int] = field(default_factory=list)
    spec_misses: int = 0  # verifications in a row that kept no draft
    spec_wait: int = 0  # decode steps left before it gets drafts again
    # A draft model's progress (draft_model.py): leading tokens whose KV its cache holds, and the
    # sequence's length when it last drafted.
    draft_computed: int = 0
    draft_base: int = 0
    # Async scheduling: output tokens a step in flight is computing, held by PENDING_TOKEN placeholders at
    # the end of token_ids / output_token_ids until the step's results arrive (at most two: the step
    # being collected and the one launched after it).
    num_pending: int = 0

    def __post_init__(self) -> None:
        self.token_ids = list(self.prompt_token_ids)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    @property
    def wants_prompt_logprobs(self) -> bool:
        return self.params.prompt_logprobs is not None and self.prompt_logprobs is None

    def append_token(self, token_id: int) -> None:
        self.token_ids.append(token_id)
        self.output_token_ids.append(token_id)

    def append_pending(self) -> None:
        """A placeholder for the token a launched step samples: counted as the next token by the scheduler
        (whose next step feeds it, read on the device from the step in flight) before its value is known."""
        self.append_token(PENDING_TOKEN)
        self.num_pending += 1

    def resolve_pending(self, token_id: int) -> None:
        """The oldest placeholder's value, from its step's results."""
        i = len(self.output_token_ids) - self.num_pending
        self.output_token_ids[i] = self.token_ids[self.num_prompt_tokens + i] = token_id
        self.num_pending -= 1

    def drop_pending(self) -> None:
        """Removes the placeholders of steps whose tokens come after the sequence ended."""
        for _ in range(self.num_pending):
            self.token_ids.pop()
            self.output_token_ids.pop()
        self.num_pending = 0

    @property
    def num_known_output_tokens(self) -> int:
        """Output tokens whose values have arrived (placeholders excluded)."""
        return len(self.output_token_ids) - self.num_pending

    def at_length_limit(self, max_model_len: int, counting_pending: bool = False) -> bool:
        """Whether its tokens reach max_tokens or the context limit: the tokens that have arrived (a stop
        check), or those in flight too (whether a further step could add any)."""
        uncounted = 0 if counting_pending else self.num_pending
        max_tokens = self.params.max_tokens
        return ((max_tokens is not None and len(self.output_token_ids) - uncounted >= max_tokens)
                or len(self.token_ids) - uncounted >= max_model_len)
