"""--chat-template replaces the tokenizer's template: rendering, tool-call format detection,
and a broken template refused at start."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator

import pytest

from pagoda.engine.entrypoints.args import parse_serve_args
from tests.server.conftest import MODEL_NAME, RunningServer, serve_in_thread

TEMPLATE = ("{%- for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
            "{%- if add_generation_prompt %}[assistant] {% endif %}")
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]


@pytest.fixture(scope="module")
def template_server(model_dir: pathlib.Path, tmp_path_factory) -> Iterator[RunningServer]:
    path = tmp_path_factory.mktemp("template") / "chat.jinja"
    path.write_text(TEMPLATE)
    with serve_in_thread([str(model_dir), "--served-model-name", MODEL_NAME, "--chat-template", str(path)]) as running:
        yield running


def test_the_given_template_renders_chats(template_server: RunningServer) -> None:
    tokens = template_server.request("POST", "/tokenize", {"messages": MESSAGES}).json()["tokens"]
    text = template_server.request("POST", "/detokenize", {"tokens": tokens}).json()["prompt"]
    assert text.endswith("[system] Be brief.\n[user] Hi there\n[assistant] ")
    reply = template_server.request("POST", "/v1/chat/completions",
                                    {"model": MODEL_NAME, "messages": MESSAGES, "max_tokens": 2})
    assert reply.status == 200
    # This template teaches no tool-call format, unlike the model's own: "auto" is refused.
    tools = [{"type": "function", "function": {"name": "f"}}]
    refused = template_server.request("POST", "/v1/chat/completions",
                                      {"model": MODEL_NAME, "messages": MESSAGES, "tools": tools})
    assert refused.status == 400 and refused.json()["error"]["param"] == "tool_choice"
    template_server.wait_idle()


def test_template_flag_values(tmp_path: pathlib.Path, capsys) -> None:
    assert parse_serve_args(["m", "--chat-template", TEMPLATE], environ={}).chat_template == TEMPLATE
    assert parse_serve_args(["m"], environ={}).chat_template is None
    with pytest.raises(SystemExit):
        parse_serve_args(["m", "--chat-template", "{% for m in messages %}unclosed"], environ={})
    assert "--chat-template is not a valid Jinja template" in capsys.readouterr().err
