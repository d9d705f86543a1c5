"""Reading a chat reply as it streams: reasoning, then content and tool calls.

Reasoning models (Qwen3, DeepSeek-R1, QwQ, MiniMax-M2, GLM-4.5) think inside <think>...</think>
before they answer. With --reasoning-parser, that text leaves the content and
is returned apart, as vLLM does (`reasoning`, and its older name
`reasoning_content`); what follows the thinking goes through the tool-call
parser, if the request has tools. Like the tool-call parsers, one reader
builds both the whole response and the stream, so they always agree.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pagoda.engine.entrypoints.tool_parsers import CallPiece, ToolCallParser, partial_suffix

THINK_START = "<think>"
THINK_END = "</think>"

REASONING_PARSERS = ("qwen3", "deepseek_r1", "minimax_m2", "glm45")
"""--reasoning-parser names (vLLM's); these families all write the same tags, so one reader serves them."""


def think_tokens(vocab: dict[str, int]) -> tuple[int, int] | None:
    """The ids of <think> and </think> when the vocabulary has each as one token (Qwen3, R1)."""
    if THINK_START in vocab and THINK_END in vocab:
        return vocab[THINK_START], vocab[THINK_END]
    return None


def prompt_closes_reasoning(prompt_tail: str) -> bool:
    """Whether the template closed an empty thinking block (enable_thinking=False): the reply is the answer."""
    return prompt_tail.rstrip().endswith(THINK_END)


def prompt_opens_reasoning(prompt_tail: str) -> bool:
    """Whether the rendered prompt already opened the thinking (newer Qwen3 and
    R1 templates end the generation prompt with <think>), so the reply starts
    inside it. A template that closed an empty block (enable_thinking=False)
    does not."""
    return prompt_tail.rstrip().endswith(THINK_START)


class ThinkParser:
    """Splits text into (reasoning, content) at the <think> tags."""

    def __init__(self, in_reasoning: bool) -> None:
        # "start": the reply may open with <think>; "reasoning"; "after": blank
        # text right after </think> is the tag's layout; "content".
        self._state = "reasoning" if in_reasoning else "start"
        self._buffer = ""

    def feed(self, text: str) -> tuple[str, str]:
        self._buffer += text
        reasoning = ""
        if self._state == "start":
            head = self._buffer.lstrip()
            if not head or partial_suffix(head, THINK_START) == len(head):
                return "", ""  # cannot tell yet
            if head.startswith(THINK_START):
                self._buffer, self._state = head[len(THINK_START):], "reasoning"
            else:
                self._state = "content"
        if self._state == "reasoning":
            at = self._buffer.find(THINK_END)
            if at < 0:
                keep = len(self._buffer) - partial_suffix(self._buffer, THINK_END)
                reasoning, self._buffer = self._buffer[:keep], self._buffer[keep:]
                return reasoning, ""
            reasoning, self._buffer = self._buffer[:at], self._buffer[at + len(THINK_END):]
            self._state = "after"
        if self._state == "after":
            self._buffer = self._buffer.lstrip()
            if not self._buffer:
                return reasoning, ""
            self._state = "content"
        content, self._buffer = self._buffer, ""
        return reasoning, content

    def finish(self) -> tuple[str, str]:
        """What was held back: a reply cut inside its thinking keeps it as reasoning."""
        rest, self._buffer = self._buffer, ""
        if self._state == "reasoning":
            return rest, ""
        return "", rest if self._state != "after" else ""


@dataclass
class ReplyPiece:
    reasoning: str = ""
    content: str = ""
    calls: list[CallPiece] = field(default_factory=list)


class ReplyParser:
    """One choice's reply: reasoning first (with a reasoning parser), then content and tool calls."""

    def __init__(self, reasoning: ThinkParser | None, tools: ToolCallParser | None) -> None:
        self._reasoning = reasoning
        self._tools = tools

    @property
    def num_calls(self) -> int:
        return self._tools.num_calls if self._tools is not None else 0

    def new_call_id(self) -> str:
        """An id in the format the model's tool-call format expects back (Mistral's are 9 characters)."""
        return (self._tools or ToolCallParser()).new_call_id()

    def feed(self, text: str, final: bool = False) -> ReplyPiece:
        """The reading of `text`, the reply's next piece; `final` flushes what was held back."""
        reasoning, content = "", text
        if self._reasoning is not None:
            reasoning, content = self._reasoning.feed(text)
            if final:
                more_reasoning, more_content = self._reasoning.finish()
                reasoning, content = reasoning + more_reasoning, content + more_content
        if self._tools is None:
            return ReplyPiece(reasoning, content)
        parsed = self._tools.feed(content)
        if final:
            parsed += self._tools.finish()
        return ReplyPiece(reasoning, parsed.content, parsed.calls)

    def parse(self, text: str) -> ReplyPiece:
        """A whole reply at once."""
        return self.feed(text, final=True)
