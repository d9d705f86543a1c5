"""Reading GPT-OSS's replies: OpenAI's harmony format, as it streams.

A harmony reply is a run of messages, each a header and a body:

    <|channel|>analysis<|message|>Need the time in UTC.<|end|>
    <|start|>assistant<|channel|>commentary to=functions.get_time <|constrain|>json<|message|>{"zone": "UTC"}<|call|>

(the first message's `<|start|>assistant` is the end of the prompt). The channel says what a body
is: `analysis` the model's reasoning, `final` the answer, `commentary` a preamble to the user or,
addressed to a recipient (`to=functions.NAME`, before or after the channel), a tool call whose body
is the arguments. vLLM serves it with --reasoning-parser openai_gptoss and --tool-call-parser openai;
either selects this reader, which splits reasoning, content and calls in one pass. The markers are
special tokens, so the server keeps special tokens in the text it reads. Text that does not open
with a header is content, as a model that ignores the format wrote it.
"""

from __future__ import annotations

import re
from typing import Any

from pagoda.engine.entrypoints.reply import ReplyPiece
from pagoda.engine.entrypoints.tool_parsers import HARMONY_TOOL_PARSER, CallPiece, ToolCallParser, partial_suffix

START, CHANNEL, MESSAGE = "<|start|>", "<|channel|>", "<|message|>"
# What ends a message's body: the end of a turn that goes on, a call, the reply's end.
BODY_ENDS = ("<|end|>", "<|call|>", "<|return|>")
REASONING_PARSER = "openai_gptoss"
TOOL_PARSER = HARMONY_TOOL_PARSER
_RECIPIENT = re.compile(r"\bto=([^\s<]+)")
_CHANNEL_NAME = re.compile(re.escape(CHANNEL) + r"(\w+)")


def _held(text: str, tags: tuple[str, ...]) -> int:
    """How many trailing characters of `text` could begin one of `tags`."""
    return max(partial_suffix(text, tag) for tag in tags)


class HarmonyParser:
    """One choice's harmony reply as reasoning, content and tool calls (the ReplyParser interface)."""

    def __init__(self, max_calls: int | None = None, schemas: dict[str, dict[str, Any]] | None = None) -> None:
        self._calls = ToolCallParser(max_calls, schemas)  # numbers the calls and stops at max_calls
        self._buffer = ""
        self._state = "header"  # or "body", or "plain" (no harmony: all content)
        self._kind = ""  # the body's: "reasoning", "content" or "call"
        self._call: CallPiece | None = None  # the open call's piece, None when max_calls dropped it

    @property
    def num_calls(self) -> int:
        return self._calls.num_calls

    def new_call_id(self) -> str:
        return self._calls.new_call_id()

    def _open(self, header: str, piece: ReplyPiece) -> None:
        """Starts the body a header announces (a call's opening piece carries its name)."""
        recipient = _RECIPIENT.search(header)
        channel = _CHANNEL_NAME.search(header)
        if recipient is not None:
            self._kind = "call"
            opened = self._calls._call(recipient[1].removeprefix("functions."), "")
            self._call = opened[0] if opened else None
            piece.calls += opened
        else:
            self._kind = "reasoning" if channel is not None and channel[1] == "analysis" else "content"

    def _emit(self, text: str, piece: ReplyPiece) -> None:
        if not text:
            return
        if self._kind == "reasoning":
            piece.reasoning += text
        elif self._kind == "content":
            piece.content += text
        elif self._call is not None:
            piece.calls.append(CallPiece(self._call.index, arguments=text))

    def feed(self, text: str, final: bool = False) -> ReplyPiece:
        self._buffer += text
        piece = ReplyPiece()
        while self._buffer:
            if self._state == "plain":
                piece.content += self._buffer
                self._buffer = ""
            elif self._state == "header":
                head = self._buffer.lstrip()
                if not head.startswith((START, CHANNEL)) and not any(partial_suffix(head, tag) == len(head)
                                                                     for tag in (START, CHANNEL)):
                    self._state = "plain"
                    continue
                at = self._buffer.find(MESSAGE)
                if at < 0:
                    break
                self._open(self._buffer[:at], piece)
                self._buffer, self._state = self._buffer[at + len(MESSAGE):], "body"
            else:
                ends = [(at, tag) for tag in BODY_ENDS if (at := self._buffer.find(tag)) >= 0]
                if not ends:
                    keep = len(self._buffer) - (0 if final else _held(self._buffer, BODY_ENDS))
                    self._emit(self._buffer[:keep], piece)
                    self._buffer = self._buffer[keep:]
                    break
                at, tag = min(ends)
                self._emit(self._buffer[:at], piece)
                self._buffer, self._state = self._buffer[at + len(tag):], "header"
        if final:  # a reply cut inside a header (max_tokens) keeps nothing of it
            self._buffer = ""
        return piece

    def parse(self, text: str) -> ReplyPiece:
        return self.feed(text, final=True)
