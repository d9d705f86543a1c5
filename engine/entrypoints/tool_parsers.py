"""Finding tool calls in a model's text, token by token as it streams.

A parser is fed the completion's text in whatever pieces the detokenizer
produces and answers with the text that is ordinary content and the tool
calls it has found. The same parser builds the whole response (one feed,
then finish) and the stream, so the two can never disagree. Whatever cannot
be read as a call (malformed JSON, an unterminated tag cut by max_tokens) is
given back as content, never dropped.

- ``named`` and ``required`` read what the server itself forced through a
  constraint (tool_choice naming a function, or "required"): the arguments
  object, or a JSON array of {"name", "arguments"} objects.
- ``hermes`` reads ``<tool_call>{"name": ..., "arguments": ...}</tool_call>``
  blocks (Qwen2.5, Qwen3, Hermes); ``llama3_json`` reads the bare
  ``{"name": ..., "parameters": ...}`` objects of Llama 3.1+, separated by
  semicolons; ``mistral`` reads ``[TOOL_CALLS]``; ``glm45`` GLM-4.5's
  ``<tool_call>name<arg_key>..</arg_key><arg_value>..</arg_value></tool_call>``;
  ``deepseek_v3`` DeepSeek-V3/R1/V3.1's and ``kimi_k2`` Kimi K2's tagged call
  sections; ``qwen3_coder`` Qwen3-Coder's and Qwen3.5's
  ``<tool_call><function=name><parameter=k>v</parameter></function></tool_call>``; ``minimax_m2``
  MiniMax-M2's ``<minimax:tool_call><invoke name=..><parameter name=..>``. These serve tool_choice "auto".
"""

from __future__ import annotations

import json
import re
import secrets
import string
import uuid
from dataclasses import dataclass, field
from typing import Any


@dataclass
class CallPiece:
    """Part of tool call `index`: its name when the call opens, then argument text."""

    index: int
    name: str | None = None
    arguments: str = ""
    call_id: str | None = None  # the model's own id for the call (Kimi K2 writes one), else the server makes one


@dataclass
class Parsed:
    """What one feed or finish yields: content text and pieces of tool calls."""

    content: str = ""
    calls: list[CallPiece] = field(default_factory=list)

    def __iadd__(self, other: Parsed) -> Parsed:
        self.content += other.content
        self.calls += other.calls
        return self


class ToolCallParser:
    """Base: the text arrives by `feed`, `finish` flushes what was held back."""

    def __init__(self, max_calls: int | None = None, schemas: dict[str, dict[str, Any]] | None = None) -> None:
        self.num_calls = 0
        self._max_calls = max_calls
        # The request's tools' parameter schemas by function name: formats that write arguments as
        # bare text (GLM-4.5's) read them by their declared types.
        self._schemas = schemas or {}
        # Trailing blank content, held until more content follows: blank text next to a call is
        # the call's layout, not content (parsers that read calls out of content use it).
        self._held_space = ""

    def _content(self, text: str) -> str:
        """`text` as content, its trailing blank part held back (see _held_space)."""
        text = self._held_space + text
        kept = text.rstrip()
        self._held_space = text[len(kept):]
        return kept

    def feed(self, text: str) -> Parsed:
        raise NotImplementedError

    def finish(self) -> Parsed:
        raise NotImplementedError

    def parse(self, text: str) -> Parsed:
        """A whole completion at once."""
        parsed = self.feed(text)
        parsed += self.finish()
        return parsed

    @staticmethod
    def new_call_id() -> str:
        """The id a call gets in the API (and that the client sends back with its result)."""
        return f"call_{uuid.uuid4().hex[:24]}"

    def _typed(self, name: str, key: str, value: str) -> Any:
        """A bare-text argument value (GLM-4.5's, Qwen3-Coder's, MiniMax-M2's): as written where the tool's
        schema declares it a string, else read as JSON, and kept as text where it is not JSON."""
        properties = (self._schemas.get(name) or {}).get("properties") or {}
        if (properties.get(key) or {}).get("type") == "string":
            return value
        try:
            return _DECODER.decode(value.strip())
        except ValueError:
            return value

    def _call(self, name: str, arguments: Any, call_id: str | None = None) -> list[CallPiece]:
        """A complete call as one piece; none once parallel calls are exhausted."""
        if self._max_calls is not None and self.num_calls >= self._max_calls:
            return []
        text = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
        self.num_calls += 1
        return [CallPiece(self.num_calls - 1, name, text, call_id)]


# Models write control characters raw inside strings (and a constraint's
# length-bounded string may let them through): read them, as JSON text
# re-encoded for the client escapes them.
_DECODER = json.JSONDecoder(strict=False)


def _decode_call(text: str) -> tuple[str, Any] | None:
    """(name, arguments) of a call object written as JSON, or None when `text` is not one."""
    try:
        return _call_fields(_DECODER.decode(text), ("arguments", "parameters"))
    except ValueError:
        return None


def _call_fields(value: Any, argument_keys: tuple[str, ...]) -> tuple[str, Any] | None:
    """(name, arguments) of a decoded call object, or None when it is not shaped like one."""
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        return None
    for key in argument_keys:
        if key in value:
            arguments = value[key]
            return (value["name"], arguments) if isinstance(arguments, (dict, str)) else None
    return value["name"], {}


class NamedCallParser(ToolCallParser):
    """The whole text is the arguments of one call to `name` (tool_choice naming a function)."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self._name = name

    def feed(self, text: str) -> Parsed:
        if self.num_calls == 0:
            self.num_calls = 1
            return Parsed(calls=[CallPiece(0, self._name, text)])
        return Parsed(calls=[CallPiece(0, None, text)] if text else [])

    def finish(self) -> Parsed:
        return self.feed("") if self.num_calls == 0 else Parsed()


class JsonArrayParser(ToolCallParser):
    """A JSON array of {"name", "arguments"} objects (tool_choice "required");
    each call is given as soon as its object closes."""

    def __init__(self) -> None:
        super().__init__()
        self._text = ""
        self._scanned = 0
        self._depth = 0
        self._in_string = False
        self._escaped = False
        self._start = -1  # where the current element object began
        self._consumed = 0  # text up to here has become calls

    def feed(self, text: str) -> Parsed:
        self._text += text
        calls: list[CallPiece] = []
        for i in range(self._scanned, len(self._text)):
            ch = self._text[i]
            if self._in_string:
                if self._escaped:
                    self._escaped = False
                elif ch == "\\":
                    self._escaped = True
                elif ch == '"':
                    self._in_string = False
            elif ch == '"':
                self._in_string = True
            elif ch in "[{":
                self._depth += 1
                if self._depth == 2 and ch == "{":
                    self._start = i
            elif ch in "]}":
                self._depth -= 1
                if self._depth == 1 and ch == "}" and self._start >= 0:
                    calls += self._element(self._text[self._start:i + 1])
                    self._consumed, self._start = i + 1, -1
        self._scanned = len(self._text)
        return Parsed(calls=calls)

    def _element(self, text: str) -> list[CallPiece]:
        fields = _decode_call(text)
        return self._call(*fields) if fields else []

    def finish(self) -> Parsed:
        # Only a cut-off array leaves text behind: it is returned as it was written.
        rest = self._text[self._consumed:].strip().strip(",]").strip()
        return Parsed(content=rest if rest else "")


class _TaggedParser(ToolCallParser):
    """Content until a tag opens the calls: the formats whose calls follow a marker in the text."""

    def __init__(self, max_calls: int | None = None, schemas: dict[str, dict[str, Any]] | None = None) -> None:
        super().__init__(max_calls, schemas)
        self._buffer = ""

    def _content_until(self, tag: str, out: Parsed) -> bool:
        """Moves the buffer's text before `tag` into `out` as content and drops the tag; False while
        the tag has not come, holding back an end of the buffer that may be its start."""
        at = self._buffer.find(tag)
        if at < 0:
            keep = partial_suffix(self._buffer, tag)
            out.content += self._content(self._buffer[:len(self._buffer) - keep])
            self._buffer = self._buffer[len(self._buffer) - keep:]
            return False
        out.content += self._content(self._buffer[:at])
        self._buffer = self._buffer[at + len(tag):]
        return True


class HermesParser(_TaggedParser):
    """Content with calls inside <tool_call> tags; text that may be the start of a tag is held back."""

    start_tag = "<tool_call>"
    end_tag = "</tool_call>"

    def __init__(self, max_calls: int | None = None, schemas: dict[str, dict[str, Any]] | None = None) -> None:
        super().__init__(max_calls, schemas)
        self._in_call = False

    def feed(self, text: str) -> Parsed:
        self._buffer += text
        out = Parsed()
        while True:
            if not self._in_call:
                if not self._content_until(self.start_tag, out):
                    return out
                self._in_call = True
            at = self._buffer.find(self.end_tag)
            if at < 0:
                return out
            out += self._block(self._buffer[:at], self.end_tag)
            self._buffer = self._buffer[at + len(self.end_tag):]
            self._in_call = False

    def _block(self, inner: str, closing: str) -> Parsed:
        """One tag's text as a call, or as content (tags included) when it is not one."""
        fields = self._decode(inner)
        if fields is None:
            return Parsed(content=self._content(self.start_tag + inner + closing))
        self._held_space = ""
        return Parsed(calls=self._call(*fields))

    def _decode(self, inner: str) -> tuple[str, Any] | None:
        """(name, arguments) of a block's text: a JSON call object."""
        return _decode_call(inner)

    def finish(self) -> Parsed:
        rest, self._buffer = self._buffer, ""
        if self._in_call:  # a block the model never closed (EOS right after the JSON, or max_tokens)
            self._in_call = False
            out = self._block(rest, "")
        else:
            out = Parsed(content=self._content(rest))
        if self.num_calls == 0:  # a reply without calls keeps every character
            out.content += self._held_space
        self._held_space = ""
        return out


class Llama3JsonParser(ToolCallParser):
    """Llama 3.1+'s JSON calls: the reply is one or more {"name", "parameters"}
    objects separated by semicolons, perhaps after <|python_tag|>; a reply that
    does not open with one is plain content."""

    PYTHON_TAG = "<|python_tag|>"

    def __init__(self, max_calls: int | None = None, schemas: dict[str, dict[str, Any]] | None = None) -> None:
        super().__init__(max_calls, schemas)
        self._buffer = ""
        self._mode: str | None = None  # "text" or "json", decided by the first visible characters

    def feed(self, text: str) -> Parsed:
        self._buffer += text
        if self._mode is None:
            head = self._buffer.lstrip()
            if not head or partial_suffix(head, self.PYTHON_TAG) == len(head):
                return Parsed()
            self._mode = "json" if head.startswith(("{", self.PYTHON_TAG)) else "text"
        if self._mode == "text":
            out, self._buffer = self._buffer, ""
            return Parsed(content=out)
        return Parsed(calls=self._decode_calls())

    def _decode_calls(self) -> list[CallPiece]:
        calls: list[CallPiece] = []
        while True:
            rest = self._buffer.lstrip().removeprefix(self.PYTHON_TAG).lstrip().lstrip(";").lstrip()
            if not rest.startswith("{"):
                return calls
            try:
                value, end = _DECODER.raw_decode(rest)
            except ValueError:
                return calls  # not complete yet, or not JSON: finish decides
            fields = _call_fields(value, ("parameters", "arguments"))
            if fields is None:
                return calls
            calls += self._call(*fields)
            self._buffer = rest[end:]

    def finish(self) -> Parsed:
        if self._mode == "json":
            rest = self._buffer.strip().removeprefix(self.PYTHON_TAG).strip().strip(";").strip()
        else:
            rest = self._buffer
        self._buffer = ""
        return Parsed(content=rest)


class MistralParser(_TaggedParser):
    """Mistral's calls after [TOOL_CALLS]: a JSON array of {"name", "arguments"} (the v3 tokenizer:
    Mistral 7B v0.3, Nemo, Small 2409) or `name[ARGS]{...}`, once per call (the v11 tokenizer:
    Mistral Small 3.1+, Magistral, Devstral). Text before the tag is content; a call that never
    completes is returned as the text it was."""

    TAG = "[TOOL_CALLS]"
    ARGS = "[ARGS]"
    _ID_CHARS = string.ascii_letters + string.digits

    def __init__(self, max_calls: int | None = None, schemas: dict[str, dict[str, Any]] | None = None) -> None:
        super().__init__(max_calls, schemas)
        self._in_calls = False

    @classmethod
    def new_call_id(cls) -> str:
        """Nine letters and digits: Mistral's chat templates refuse any other tool call id."""
        return "".join(secrets.choice(cls._ID_CHARS) for _ in range(9))

    def feed(self, text: str) -> Parsed:
        self._buffer += text
        out = Parsed()
        while True:
            if not self._in_calls:
                if not self._content_until(self.TAG, out):
                    return out
                self._held_space = ""
                self._in_calls = True
            calls = self._next_calls()
            if calls is None:
                return out
            out.calls += calls
            self._in_calls = False

    def _next_calls(self) -> list[CallPiece] | None:
        """The calls the buffer starts with, consumed; None while they are incomplete."""
        rest = self._buffer.lstrip()
        if rest.startswith("["):  # v3: one array of call objects
            try:
                value, end = _DECODER.raw_decode(rest)
            except ValueError:
                return None
            calls = [piece for item in (value if isinstance(value, list) else [])
                     if (fields := _call_fields(item, ("arguments", "parameters"))) is not None
                     for piece in self._call(*fields)]
        else:  # v11: name[ARGS]{...}
            at = rest.find(self.ARGS)
            if at < 0:
                return None
            arguments = rest[at + len(self.ARGS):].lstrip()
            try:
                value, used = _DECODER.raw_decode(arguments)
            except ValueError:
                return None
            calls = self._call(rest[:at].strip(), value)
            end = len(rest) - len(arguments) + used
        self._buffer = rest[end:]
        return calls

    def finish(self) -> Parsed:
        rest, self._buffer = self._buffer, ""
        if self._in_calls:
            self._in_calls = False
            return Parsed(content=self._content(self.TAG + rest) + self._held_space)
        held, self._held_space = self._held_space, ""
        return Parsed(content=(held if self.num_calls == 0 else "") + rest)  # blank text after calls is layout


class Glm45Parser(HermesParser):
    """GLM-4.5/4.6's calls: `<tool_call>name` then `<arg_key>k</arg_key><arg_value>v</arg_value>` per
    argument. Values are bare text: an argument the tool's schema declares a string is taken as
    written, any other is read as JSON (and kept as text where it is not JSON)."""

    _ARGUMENT = re.compile(r"<arg_key>(.*?)</arg_key>\s*<arg_value>(.*?)</arg_value>", re.DOTALL)

    def _decode(self, inner: str) -> tuple[str, Any] | None:
        name = inner.split("<arg_key>", 1)[0].strip()
        if not _plain_name(name):
            return None
        return name, {key.strip(): self._typed(name, key.strip(), value) for key, value in self._ARGUMENT.findall(inner)}


def _plain_name(name: str) -> bool:
    """Whether a function name written as bare text is one (not empty, no markup or JSON in it)."""
    return bool(name) and not any(c in name for c in "{}<>\n\"=")


class Qwen3CoderParser(HermesParser):
    """Qwen3-Coder's and Qwen3.5's calls: inside <tool_call> tags, `<function=name>` then a
    `<parameter=key>value</parameter>` per argument (values bare, one newline around each trimmed),
    typed by the tool's schema as GLM-4.5's are."""

    _FUNCTION = re.compile(r"^\s*<function=([^>\n]*)>(.*?)(?:</function>\s*)?$", re.DOTALL)
    _PARAMETER = re.compile(r"<parameter=([^>\n]*)>(.*?)</parameter>", re.DOTALL)

    def _decode(self, inner: str) -> tuple[str, Any] | None:
        match = self._FUNCTION.match(inner)
        if match is None or not _plain_name(name := match[1].strip()):
            return None
        return name, {key.strip(): self._typed(name, key.strip(), _trim_newline(value))
                      for key, value in self._PARAMETER.findall(match[2])}


def _trim_newline(value: str) -> str:
    """A bare value as its template lays it out: one newline after the opening tag and before the closing one."""
    return value.removeprefix("\n").removesuffix("\n")


class MiniMaxM2Parser(HermesParser):
    """MiniMax-M2's calls: one <minimax:tool_call> block of `<invoke name="...">` elements, each with a
    `<parameter name="key">value</parameter>` per argument (typed by the tool's schema)."""

    start_tag = "<minimax:tool_call>"
    end_tag = "</minimax:tool_call>"
    _INVOKE = re.compile(r'<invoke name="([^"]*)">(.*?)</invoke>', re.DOTALL)
    _PARAMETER = re.compile(r'<parameter name="([^"]*)">(.*?)</parameter>', re.DOTALL)

    def _block(self, inner: str, closing: str) -> Parsed:
        invokes = self._INVOKE.findall(inner)
        if not invokes or self._INVOKE.sub("", inner).strip() or not all(_plain_name(n.strip()) for n, _ in invokes):
            return Parsed(content=self._content(self.start_tag + inner + closing))
        self._held_space = ""
        out = Parsed()
        for name, body in invokes:
            name = name.strip()
            out.calls += self._call(name, {key: self._typed(name, key, _trim_newline(value))
                                           for key, value in self._PARAMETER.findall(body)})
        return out


class _SectionParser(_TaggedParser):
    """Calls as blocks inside a section: content until SECTION_BEGIN, then CALL_BEGIN ... CALL_END blocks
    until SECTION_END (DeepSeek, Kimi K2). A block that cannot be read, or one cut off by the end of
    the reply, is given back as content."""

    SECTION_BEGIN = SECTION_END = CALL_BEGIN = CALL_END = ""

    def __init__(self, max_calls: int | None = None, schemas: dict[str, dict[str, Any]] | None = None) -> None:
        super().__init__(max_calls, schemas)
        self._in_section = False

    def _read(self, inner: str) -> tuple[str, Any, str | None] | None:
        """(name, arguments, the model's call id) of one block's text; None when it is not a call."""
        raise NotImplementedError

    def feed(self, text: str) -> Parsed:
        self._buffer += text
        out = Parsed()
        while True:
            if not self._in_section:
                if not self._content_until(self.SECTION_BEGIN, out):
                    return out
                self._held_space = ""
                self._in_section = True
            rest = self._buffer.lstrip()
            if rest.startswith(self.SECTION_END):
                self._buffer, self._in_section = rest[len(self.SECTION_END):], False
                continue
            if not rest.startswith(self.CALL_BEGIN):
                if any(partial_suffix(rest, tag) == len(rest) for tag in (self.CALL_BEGIN, self.SECTION_END)):
                    return out  # empty, or the start of a tag
                self._in_section = False  # not a block: the section is over, what follows is content
                continue
            end = rest.find(self.CALL_END)
            if end < 0:
                return out
            block = rest[: end + len(self.CALL_END)]
            read = self._read(rest[len(self.CALL_BEGIN):end])
            if read is None:
                out.content += self._content(block)
            else:
                out.calls += self._call(*read)
            self._buffer = rest[len(block):]

    def finish(self) -> Parsed:
        rest, self._buffer = self._buffer, ""
        content = self._content(rest) if rest.strip() else ""
        held, self._held_space = self._held_space, ""
        if self._in_section and content and self.num_calls == 0:
            content = self.SECTION_BEGIN + content  # a section cut off before its first call, as written
        self._in_section = False
        return Parsed(content=content + (held if self.num_calls == 0 else ""))


class DeepSeekV3Parser(_SectionParser):
    """DeepSeek-V3, R1-0528 and V3.1's calls, between their full-width-bar tags: V3's
    `function<｜tool▁sep｜>name` then the arguments in a ```json fence, or V3.1's
    `name<｜tool▁sep｜>{arguments}`."""

    SECTION_BEGIN, SECTION_END = "<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>"
    CALL_BEGIN, CALL_END = "<｜tool▁call▁begin｜>", "<｜tool▁call▁end｜>"
    SEP = "<｜tool▁sep｜>"

    def _read(self, inner: str) -> tuple[str, Any, str | None] | None:
        head, sep, rest = inner.partition(self.SEP)
        if not sep:
            return None
        if "```" in rest:  # V3: the call's type, then its name and a fenced JSON block
            name, _, body = rest.partition("\n")
            body = body.strip().removeprefix("```json").removeprefix("```").removesuffix("```")
        else:  # V3.1
            name, body = head, rest
        try:
            arguments = _DECODER.decode(body.strip())
        except ValueError:
            return None
        name = name.strip()
        return (name, arguments, None) if name and isinstance(arguments, dict) else None


class KimiK2Parser(_SectionParser):
    """Kimi K2's calls: `functions.name:index<|tool_call_argument_begin|>{arguments}` blocks; the
    `functions.name:index` is the call's id, which its chat template expects back."""

    SECTION_BEGIN, SECTION_END = "<|tool_calls_section_begin|>", "<|tool_calls_section_end|>"
    CALL_BEGIN, CALL_END = "<|tool_call_begin|>", "<|tool_call_end|>"
    ARGUMENTS = "<|tool_call_argument_begin|>"

    def _read(self, inner: str) -> tuple[str, Any, str | None] | None:
        call_id, sep, body = inner.partition(self.ARGUMENTS)
        call_id = call_id.strip()
        name = call_id.split(":", 1)[0].removeprefix("functions.")
        try:
            arguments = _DECODER.decode(body.strip())
        except ValueError:
            return None
        return (name, arguments, call_id) if sep and name and isinstance(arguments, dict) else None


def partial_suffix(text: str, tag: str) -> int:
    """Length of the longest end of `text` that is a proper start of `tag`."""
    for size in range(min(len(text), len(tag) - 1), 0, -1):
        if tag.startswith(text[-size:]):
            return size
    return 0


AUTO_PARSERS: dict[str, type[ToolCallParser]] = {
    "hermes": HermesParser, "llama3_json": Llama3JsonParser, "mistral": MistralParser, "glm45": Glm45Parser,
    "deepseek_v3": DeepSeekV3Parser, "kimi_k2": KimiK2Parser, "qwen3_coder": Qwen3CoderParser,
    "minimax_m2": MiniMaxM2Parser,
}
"""The parsers tool_choice "auto" can use, by their --tool-call-parser name."""


HARMONY_TOOL_PARSER = "openai"
"""GPT-OSS's harmony format, whose calls are messages of their own (read by harmony.HarmonyParser)."""


def detect_tool_parser(chat_template: str | dict[str, str] | None) -> str | None:
    """The parser for the tool-call format a chat template teaches the model, if it teaches one."""
    if isinstance(chat_template, dict):
        chat_template = "\n".join(chat_template.values())
    if not chat_template:
        return None
    if "<|channel|>" in chat_template:
        return HARMONY_TOOL_PARSER
    if "<arg_key>" in chat_template:
        return "glm45"
    if "<function=" in chat_template:
        return "qwen3_coder"
    if MiniMaxM2Parser.start_tag in chat_template:
        return "minimax_m2"
    if "<tool_call>" in chat_template:
        return "hermes"
    if DeepSeekV3Parser.CALL_BEGIN in chat_template:
        return "deepseek_v3"
    if KimiK2Parser.SECTION_BEGIN in chat_template:
        return "kimi_k2"
    if "<|python_tag|>" in chat_template or "Environment: ipython" in chat_template:
        return "llama3_json"
    if "[TOOL_CALLS]" in chat_template:
        return "mistral"
    return None
