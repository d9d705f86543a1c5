"""Tool-call parsers: the whole text and any split of it into stream pieces read the same."""

from __future__ import annotations

import json
import random

import pytest

from pagoda.engine.entrypoints.tool_parsers import (
    DeepSeekV3Parser,
    Glm45Parser,
    HermesParser,
    KimiK2Parser,
    JsonArrayParser,
    Llama3JsonParser,
    MiniMaxM2Parser,
    MistralParser,
    NamedCallParser,
    Qwen3CoderParser,
    Parsed,
    ToolCallParser,
    detect_tool_parser,
)
from pagoda.engine.fixtures import make_tiny_model


def calls_of(parsed: Parsed) -> list[tuple[str, dict]]:
    """(name, decoded arguments) per call, the pieces of each joined as a client joins deltas."""
    names: dict[int, str] = {}
    arguments: dict[int, str] = {}
    for piece in parsed.calls:
        if piece.name is not None:
            assert piece.index not in names, "a call opens once"
            names[piece.index] = piece.name
        assert piece.index in names, "arguments follow the name"
        arguments[piece.index] = arguments.get(piece.index, "") + piece.arguments
    assert sorted(names) == list(range(len(names))), "calls are numbered from 0 in order"
    return [(names[i], json.loads(arguments[i])) for i in sorted(names)]


def streamed(parser: ToolCallParser, text: str, rng: random.Random) -> Parsed:
    """`text` fed in random pieces (empty ones included), then finished."""
    out = Parsed()
    at = 0
    while at < len(text):
        size = rng.choice([0, 1, 1, 2, 3, 7])
        out += parser.feed(text[at:at + size])
        at += size
    out += parser.finish()
    return out


HERMES = [
    # (text, content, calls)
    ("plain answer, no calls", "plain answer, no calls", []),
    ('Let me look.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
     '<tool_call>\n{"name": "time", "arguments": {}}\n</tool_call>\n',
     "Let me look.", [("get_weather", {"city": "Paris"}), ("time", {})]),
    # A string holding the closing tag's characters inside JSON does not end the call early.
    ('<tool_call>{"name": "echo", "arguments": {"text": "a < b, </tool \\"x\\""}}</tool_call>', "",
     [("echo", {"text": 'a < b, </tool "x"'})]),
    # Malformed JSON, or not a call: the block stays content, tags and all.
    ("<tool_call>{not json}</tool_call> after", "<tool_call>{not json}</tool_call> after", []),
    ('<tool_call>{"arguments": {}}</tool_call>', '<tool_call>{"arguments": {}}</tool_call>', []),
    # Never closed (EOS right after the JSON): still a call; cut mid-JSON: content.
    ('<tool_call>\n{"name": "f", "arguments": {"x": 1}}\n', "", [("f", {"x": 1})]),
    ('I will <tool_call>\n{"name": "f", "argu', 'I will <tool_call>\n{"name": "f", "argu', []),
    # Text that only looks like the start of a tag is content once it is clearly not one.
    ("a <tool_ca", "a <tool_ca", []),
    ("x < y <tool <b>", "x < y <tool <b>", []),
    # Text after a call is content; blank text around calls is not.
    ('<tool_call>{"name": "f", "arguments": {}}</tool_call>\n\nDone.', "\n\nDone.", [("f", {})]),
    ('Hm.  \n<tool_call>{"name": "f", "arguments": {}}</tool_call> \n', "Hm.", [("f", {})]),
    ("  padded answer \n\n", "  padded answer \n\n", []),
]


def test_hermes_without_parallel_calls_keeps_the_first() -> None:
    text = '<tool_call>{"name": "a", "arguments": {}}</tool_call><tool_call>{"name": "b", "arguments": {}}</tool_call>'
    parsed = HermesParser(max_calls=1).parse(text)
    assert calls_of(parsed) == [("a", {})] and parsed.content == ""


LLAMA3 = [
    ('{"name": "get_weather", "parameters": {"city": "Oslo"}}', "", [("get_weather", {"city": "Oslo"})]),
    ('<|python_tag|>{"name": "a", "parameters": {"n": 1}}; {"name": "b", "parameters": {}}', "",
     [("a", {"n": 1}), ("b", {})]),
    ('  {"name": "a", "arguments": {"s": "}{"}}', "", [("a", {"s": "}{"})]),
    ("The answer is 42.", "The answer is 42.", []),
    ('{"answer": 42}', '{"answer": 42}', []),
    ('{"name": "a", "parameters": {"n": 1', '{"name": "a", "parameters": {"n": 1', []),
]


JSON_ARRAYS = [
    ('[{"name": "f", "arguments": {"x": "a]}, {"}}, {"name": "g", "arguments": {}}]', "",
     [("f", {"x": "a]}, {"}), ("g", {})]),
    ('[ {"name": "f", "arguments": {"nested": [{"k": [1, 2]}]}} ]', "", [("f", {"nested": [{"k": [1, 2]}]})]),
    # Cut by max_tokens: the finished calls, then the rest as it was written.
    ('[{"name": "f", "arguments": {}}, {"name": "g", "argu', '{"name": "g", "argu', [("f", {})]),
    ('[{"name": "f", "argu', '[{"name": "f", "argu', []),
]


MISTRAL = [
    # v3 tokenizer (Mistral 7B v0.3, Nemo): one JSON array after the tag.
    ('[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}}, {"name": "t", "arguments": {}}]', "",
     [("get_weather", {"city": "Paris"}), ("t", {})]),
    # v11 tokenizer (Small 3.1+, Magistral, Devstral): name[ARGS]{...} per call, each after its tag.
    ('[TOOL_CALLS]get_weather[ARGS]{"city": "Oslo", "s": "[ARGS]}"}[TOOL_CALLS]time[ARGS]{}', "",
     [("get_weather", {"city": "Oslo", "s": "[ARGS]}"}), ("time", {})]),
    ('Let me check. [TOOL_CALLS]f[ARGS]{"x": 1}', "Let me check.", [("f", {"x": 1})]),
    ("No calls [TOOL here.", "No calls [TOOL here.", []),
    ('[TOOL_CALLS]f[ARGS]{}\n\n', "", [("f", {})]),
    ("  a padded answer \n", "  a padded answer \n", []),
    # Cut before the call completes: the text as it was, tag included.
    ('[TOOL_CALLS]f[ARGS]{"x": ', '[TOOL_CALLS]f[ARGS]{"x": ', []),
    ('[TOOL_CALLS] [{"name": "f"', '[TOOL_CALLS] [{"name": "f"', []),
]

GLM45 = [
    ("<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Paris</arg_value>\n<arg_key>days</arg_key>\n"
     "<arg_value>3</arg_value>\n</tool_call>", "", [("get_weather", {"city": "Paris", "days": 3})]),
    ("Checking.\n<tool_call>time\n</tool_call><tool_call>f\n<arg_key>opts</arg_key>\n<arg_value>{\"a\": [1]}"
     "</arg_value>\n</tool_call>", "Checking.", [("time", {}), ("f", {"opts": {"a": [1]}})]),
    # Not a call (a JSON object where the name goes): content, tags and all.
    ('<tool_call>{"name": "f"}</tool_call>', '<tool_call>{"name": "f"}</tool_call>', []),
    ("no calls here", "no calls here", []),
]

_DS = {"begin": "<｜tool▁calls▁begin｜>", "end": "<｜tool▁calls▁end｜>", "call": "<｜tool▁call▁begin｜>",
       "call_end": "<｜tool▁call▁end｜>", "sep": "<｜tool▁sep｜>"}
DEEPSEEK_V3 = [
    # V3 and R1-0528: the call's type, its name, the arguments in a JSON fence.
    ("Let me check.{begin}{call}function{sep}get_weather\n```json\n{{\"city\": \"Paris\"}}\n```{call_end}"
     "{call}function{sep}time\n```json\n{{}}\n```{call_end}{end}".format(**_DS),
     "Let me check.", [("get_weather", {"city": "Paris"}), ("time", {})]),
    # V3.1: the name, then the arguments.
    ("{begin}{call}get_weather{sep}{{\"city\": \"Oslo\", \"s\": \"{sep}\"}}{call_end}{end}".format(**_DS), "",
     [("get_weather", {"city": "Oslo", "s": _DS["sep"]})]),
    # Unreadable block: content; cut off mid-call: the text as written.
    ("{begin}{call}f{sep}{{not json}}{call_end}{end}".format(**_DS), "{call}f{sep}{{not json}}{call_end}".format(**_DS), []),
    ("{begin}{call}f{sep}{{\"x\": ".format(**_DS), "{begin}{call}f{sep}{{\"x\": ".format(**_DS), []),
    ("plain reply", "plain reply", []),
]

KIMI = [
    ("I'll look.<|tool_calls_section_begin|><|tool_call_begin|>functions.get_weather:0<|tool_call_argument_begin|>"
     '{"city": "Paris"}<|tool_call_end|><|tool_call_begin|>functions.time:1<|tool_call_argument_begin|>{}'
     "<|tool_call_end|><|tool_calls_section_end|>", "I'll look.", [("get_weather", {"city": "Paris"}), ("time", {})]),
    ("<|tool_calls_section_begin|> <|tool_call_begin|> functions.f:0 <|tool_call_argument_begin|> {\"x\": 1} "
     "<|tool_call_end|> <|tool_calls_section_end|>", "", [("f", {"x": 1})]),
    ("<|tool_calls_section_begin|><|tool_call_begin|>functions.f:0<|tool_call_argument_begin|>{\"x",
     "<|tool_calls_section_begin|><|tool_call_begin|>functions.f:0<|tool_call_argument_begin|>{\"x", []),
]

QWEN3_CODER = [
    ("Checking.\n<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n<parameter=days>\n3\n"
     "</parameter>\n</function>\n</tool_call>\n<tool_call>\n<function=time>\n</function>\n</tool_call>",
     "Checking.", [("get_weather", {"city": "Paris", "days": 3}), ("time", {})]),
    # A multi-line value keeps its inner newlines; a JSON object value is read as one.
    ("<tool_call><function=write><parameter=text>\nline 1\nline 2\n</parameter><parameter=meta>{\"a\": [1]}"
     "</parameter></function></tool_call>", "", [("write", {"text": "line 1\nline 2", "meta": {"a": [1]}})]),
    # Not a function block: content as written; cut off before </tool_call>: still read.
    ("<tool_call>{not a function}</tool_call>", "<tool_call>{not a function}</tool_call>", []),
    ("<tool_call>\n<function=f>\n<parameter=x>\n1\n</parameter>\n", "", [("f", {"x": 1})]),
]

MINIMAX_M2 = [
    ('I\'ll check.\n<minimax:tool_call>\n<invoke name="get_weather">\n<parameter name="city">Paris</parameter>\n'
     '<parameter name="days">3</parameter>\n</invoke>\n<invoke name="time">\n</invoke>\n</minimax:tool_call>',
     "I'll check.", [("get_weather", {"city": "Paris", "days": 3}), ("time", {})]),
    ('<minimax:tool_call><invoke name="f"><parameter name="q">a <b> c</parameter></invoke></minimax:tool_call> done',
     " done", [("f", {"q": "a <b> c"})]),
    ("<minimax:tool_call>no invoke here</minimax:tool_call>", "<minimax:tool_call>no invoke here</minimax:tool_call>",
     []),
]

CASES = [(parser, *case) for parser, cases in ((HermesParser, HERMES), (Llama3JsonParser, LLAMA3),
                                               (JsonArrayParser, JSON_ARRAYS), (MistralParser, MISTRAL),
                                               (Glm45Parser, GLM45), (DeepSeekV3Parser, DEEPSEEK_V3),
                                               (KimiK2Parser, KIMI), (Qwen3CoderParser, QWEN3_CODER),
                                               (MiniMaxM2Parser, MINIMAX_M2))
         for case in cases]


@pytest.mark.parametrize("parser", [Qwen3CoderParser, MiniMaxM2Parser])
def test_xml_parameters_are_read_by_their_declared_types(parser: type[ToolCallParser]) -> None:
    """Qwen3-Coder and MiniMax-M2 write values bare, as GLM-4.5 does: a string-typed one stays as written."""
    if parser is Qwen3CoderParser:
        text = "<tool_call><function=book><parameter=code>\n123\n</parameter><parameter=seats>\n2\n</parameter>" \
               "</function></tool_call>"
    else:
        text = '<minimax:tool_call><invoke name="book"><parameter name="code">123</parameter>' \
               '<parameter name="seats">2</parameter></invoke></minimax:tool_call>'
    schemas = {"book": {"type": "object", "properties": {"code": {"type": "string"}, "seats": {"type": "integer"}}}}
    assert calls_of(parser(schemas=schemas).parse(text)) == [("book", {"code": "123", "seats": 2})]
    assert calls_of(parser().parse(text)) == [("book", {"code": 123, "seats": 2})]


def test_glm45_reads_arguments_by_their_declared_types() -> None:
    """GLM-4.5 writes argument values bare: a string-typed one stays as written even when it looks
    like JSON; others are read as JSON, and stay text where they are not JSON."""
    text = ("<tool_call>book\n<arg_key>code</arg_key>\n<arg_value>123</arg_value>\n<arg_key>seats</arg_key>\n"
            "<arg_value>2</arg_value>\n<arg_key>note</arg_key>\n<arg_value>window, please</arg_value>\n</tool_call>")
    schemas = {"book": {"type": "object", "properties": {"code": {"type": "string"}, "seats": {"type": "integer"}}}}
    assert calls_of(Glm45Parser(schemas=schemas).parse(text)) == [
        ("book", {"code": "123", "seats": 2, "note": "window, please"})]
    assert calls_of(Glm45Parser().parse(text))[0][1]["code"] == 123, "without the schema the value reads as JSON"


def test_kimi_k2_calls_keep_the_ids_the_model_wrote() -> None:
    """Kimi K2's template expects its calls' ids (functions.name:index) back with their results."""
    parsed = KimiK2Parser().parse(KIMI[0][0])
    assert [p.call_id for p in parsed.calls if p.name] == ["functions.get_weather:0", "functions.time:1"]
    assert all(p.call_id is None for p in DeepSeekV3Parser().parse(DEEPSEEK_V3[0][0]).calls)


def test_mistral_call_ids_are_what_its_templates_accept() -> None:
    """Mistral's chat templates refuse tool call ids other than 9 letters and digits."""
    ids = {MistralParser.new_call_id() for _ in range(50)}
    assert len(ids) == 50 and all(len(i) == 9 and i.isalnum() for i in ids)
    assert HermesParser.new_call_id().startswith("call_")


@pytest.mark.parametrize(("parser", "text", "content", "calls"), CASES,
                         ids=[f"{parser.__name__}-{i}" for i, (parser, *_) in enumerate(CASES)])
def test_whole_and_streamed_agree(parser: type[ToolCallParser], text: str, content: str, calls: list) -> None:
    whole = parser().parse(text)
    assert (whole.content, calls_of(whole)) == (content, calls)
    for seed in range(20):
        pieces = streamed(parser(), text, random.Random(seed))
        assert (pieces.content, calls_of(pieces)) == (content, calls), seed


def test_named_call_streams_its_arguments() -> None:
    text = '{"city": "Rome", "days": [1, 2]}'
    parser = NamedCallParser("forecast")
    pieces = streamed(parser, text, random.Random(0))
    assert calls_of(pieces) == [("forecast", json.loads(text))] and pieces.content == ""
    assert len(pieces.calls) > 1, "arguments arrive piece by piece"
    # Even an empty reply (max_tokens reached at once) names the call.
    assert [(p.name, p.arguments) for p in NamedCallParser("f").parse("").calls] == [("f", "")]


def test_detect_tool_parser(tmp_path) -> None:
    """The fixture's Qwen-style template teaches <tool_call> blocks; Llama 3's teaches bare JSON."""
    model = make_tiny_model(tmp_path / "m", arch="qwen3")
    template = json.loads((model / "tokenizer_config.json").read_text())["chat_template"]
    assert detect_tool_parser(template) == "hermes"
    llama = ('{%- if tools is not none %}{{- "Environment: ipython\\n" }}{%- endif %}'
             '{{- \'{"name": function name, "parameters": dictionary of argument name and its value}\' }}')
    assert detect_tool_parser(llama) == "llama3_json"
    assert detect_tool_parser({"default": "{{ messages }}", "tool_use": template}) == "hermes"
    assert detect_tool_parser("{%- if message.tool_calls %}{{- '[TOOL_CALLS]' + message.tool_calls|tojson }}") == \
        "mistral"
    assert detect_tool_parser("{{ '<tool_call>' + tc.name }}{% for k, v in args %}<arg_key>{{ k }}</arg_key>") == "glm45"
    assert detect_tool_parser("{{'<｜Assistant｜><｜tool▁calls▁begin｜><｜tool▁call▁begin｜>' + tool['type']}}") == \
        "deepseek_v3"
    assert detect_tool_parser("{{ '<|tool_calls_section_begin|>' }}") == "kimi_k2"
    assert detect_tool_parser("{{- '<tool_call>\\n<function=' + tool_call.name + '>\\n' }}") == "qwen3_coder"
    assert detect_tool_parser("{{- '<minimax:tool_call>' }}{{ '<invoke name=\"' + tc.name }}") == "minimax_m2"
    assert detect_tool_parser("{{ messages }}") is None and detect_tool_parser(None) is None
