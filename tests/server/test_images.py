"""Images in chat messages through the official openai client: base64 data URLs and http URLs
(fetched from a loopback server), whole and streamed, the same tokens as the offline engine given
the same images; bad images, and images for a text-only model, are 400s naming `messages`."""

from __future__ import annotations

import base64
import http.server
import io
import pathlib
import threading
from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image

from pagoda.engine.fixtures import make_tiny_llava
from pagoda.engine.qwen_vl_fixtures import make_tiny_qwen_vl
from pagoda.engine.llm import LLM
from pagoda.engine.sampling_params import SamplingParams
from tests.server.conftest import MODEL_NAME, API_KEY, RunningServer, serve_in_thread
from tests.server.test_errors import assert_error

openai = pytest.importorskip("openai")

QUESTION = "What is in the picture?"
SERVED: list[str] = []  # paths the loopback image host was asked for


def png(seed: int, size: tuple[int, int] = (40, 50)) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray((rng.random((*size, 3)) * 255).astype("uint8")).save(buffer, format="PNG")
    return buffer.getvalue()


def data_url(seed: int, size: tuple[int, int] = (40, 50)) -> str:
    return "data:image/png;base64," + base64.b64encode(png(seed, size)).decode()


def image_message(*urls: str) -> list[dict]:
    parts = [{"type": "image_url", "image_url": {"url": url}} for url in urls]
    return [{"role": "user", "content": [*parts, {"type": "text", "text": QUESTION}]}]


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory) -> pathlib.Path:
    return make_tiny_llava(tmp_path_factory.mktemp("llava") / "model")


@pytest.fixture(scope="module")
def llava_server(llava_dir: pathlib.Path) -> Iterator[RunningServer]:
    with serve_in_thread([str(llava_dir), "--served-model-name", MODEL_NAME]) as running:
        yield running


@pytest.fixture(scope="module")
def image_host() -> Iterator[str]:
    """A loopback HTTP server with /<seed>.png images."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
            SERVED.append(self.path)
            name = self.path.strip("/")
            if not name.endswith(".png") or not name[:-4].isdigit():
                self.send_error(404)
                return
            body = png(int(name[:-4]))
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def offline_tokens(model_dir: pathlib.Path, images: list[bytes]) -> list[int]:
    """The offline engine's greedy tokens for the same conversation and images."""
    llm = LLM(str(model_dir), dtype="float32")
    conversation = [{"role": "user", "content": [*({"type": "image"} for _ in images), {"type": "text", "text": QUESTION}]}]
    ids = llm.tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True)
    ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
    out = llm.generate({"prompt_token_ids": ids, "multi_modal_data": {"image": images}},
                       SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True))[0]
    return list(out.outputs[0].token_ids)


def test_images_by_data_url_and_http_url(llava_server: RunningServer, llava_dir: pathlib.Path, image_host: str) -> None:
    client = openai.OpenAI(base_url=llava_server.url + "/v1", api_key="unused", max_retries=0)
    expected = {seeds: offline_tokens(llava_dir, [png(s) for s in seeds]) for seeds in [(1,), (2,), (1, 2)]}
    assert expected[(1,)] != expected[(2,)], "the image changes the answer"
    cases = [((1,), [data_url(1)]), ((2,), [f"{image_host}/2.png"]), ((1, 2), [data_url(1), f"{image_host}/2.png"])]
    for seeds, urls in cases:
        kwargs = dict(model=MODEL_NAME, messages=image_message(*urls), max_tokens=8, temperature=0,
                      extra_body={"ignore_eos": True})
        reply = client.chat.completions.create(**kwargs)
        text = reply.choices[0].message.content
        streamed = "".join(chunk.choices[0].delta.content or "" for chunk in
                           client.chat.completions.create(stream=True, **kwargs) if chunk.choices)
        assert streamed == text
        assert reply.usage.prompt_tokens > 16 * len(seeds), "each image is 16 placeholder tokens"
        assert text == llm_text(llava_dir, expected[seeds])
    llava_server.wait_idle()


def llm_text(model_dir: pathlib.Path, tokens: list[int]) -> str:
    from pagoda.engine.tokenizer import load_tokenizer

    return load_tokenizer(model_dir).decode(tokens, skip_special_tokens=True)


def test_images_at_their_own_size(tmp_path_factory) -> None:
    """Qwen2.5-VL through the chat API: two images of different sizes become their own numbers of
    tokens (the chat template writes one placeholder each); the offline engine's tokens."""
    path = make_tiny_qwen_vl(tmp_path_factory.mktemp("qwen-vl") / "model", "2.5")
    expected = offline_tokens(path, [png(1), png(4, (70, 30))])
    with serve_in_thread([str(path), "--served-model-name", MODEL_NAME]) as running:
        client = openai.OpenAI(base_url=running.url + "/v1", api_key="unused", max_retries=0)
        reply = client.chat.completions.create(model=MODEL_NAME, messages=image_message(data_url(1), data_url(4, (70, 30))),
                                               max_tokens=8, temperature=0, extra_body={"ignore_eos": True})
        assert reply.choices[0].message.content == llm_text(path, expected)
        assert reply.usage.prompt_tokens > 30 + 36, "30 and 36 image tokens"
        smaller = client.chat.completions.create(model=MODEL_NAME, messages=image_message(data_url(1), data_url(4, (70, 30))),
                                                 max_tokens=2, extra_body={"mm_processor_kwargs": {"max_pixels": 256}})
        assert smaller.usage.prompt_tokens < reply.usage.prompt_tokens - 60, "a few tokens each instead of 30 and 36"
        running.wait_idle()


@pytest.mark.parametrize(("url", "message"), [
    ("data:image/png;base64,not-base64!", "base64"),
    ("data:image/png;base64," + base64.b64encode(b"not an image").decode(), "cannot decode the image"),
    ("http://127.0.0.1:9/missing.png", "cannot fetch image"),
    # Never the server's own files.
    ("ftp://example.com/a.png", "must be a data: URL or an http(s) URL"),
    ("/etc/hostname", "must be a data: URL or an http(s) URL"),
    ("file:///etc/hostname", "must be a data: URL or an http(s) URL"),
])
def test_bad_images_are_400(llava_server: RunningServer, url: str, message: str) -> None:
    result = llava_server.request("POST", "/v1/chat/completions", {
        "model": MODEL_NAME, "messages": image_message(url), "max_tokens": 4})
    error = assert_error(result, 400, "messages")
    assert message in error["message"]
    llava_server.wait_idle()


def test_a_text_model_refuses_images(server: RunningServer) -> None:
    result = server.request("POST", "/v1/chat/completions", {
        "model": MODEL_NAME, "messages": image_message(data_url(1)), "max_tokens": 4},
        headers={"Authorization": f"Bearer {API_KEY}"})
    assert "takes no images" in assert_error(result, 400, "messages")["message"]


def test_responses_api_input_image(llava_server: RunningServer) -> None:
    """The Responses API's input_image parts: the same reply as the chat completion of the same message."""
    client = openai.OpenAI(base_url=llava_server.url + "/v1", api_key="unused", max_retries=0)
    chat = client.chat.completions.create(model=MODEL_NAME, messages=image_message(data_url(3)), max_tokens=8,
                                          temperature=0).choices[0].message.content
    response = client.responses.create(model=MODEL_NAME, max_output_tokens=8, temperature=0, store=False, input=[
        {"role": "user", "content": [{"type": "input_image", "image_url": data_url(3)},
                                     {"type": "input_text", "text": QUESTION}]}])
    assert chat and response.output_text == chat
    llava_server.wait_idle()


def test_image_limits(llava_dir: pathlib.Path, image_host: str) -> None:
    """--limit-mm-per-prompt caps the images of a prompt, --allowed-media-domains the hosts image URLs
    may name (data: URLs pass): both 400s naming `messages`, before anything is fetched."""
    with serve_in_thread([str(llava_dir), "--served-model-name", MODEL_NAME, "--limit-mm-per-prompt", '{"image": 1}',
                          "--allowed-media-domains", "localhost,example.com"]) as running:
        served = len(SERVED)
        for urls, message in [([data_url(1), data_url(2)], "more than the 1 allowed"),
                              ([f"{image_host}/1.png", f"{image_host}/2.png"], "more than the 1 allowed"),
                              ([f"{image_host}/1.png"], "may name only localhost, example.com")]:
            result = running.request("POST", "/v1/chat/completions", {
                "model": MODEL_NAME, "messages": image_message(*urls), "max_tokens": 2})
            assert message in assert_error(result, 400, "messages")["message"]
        assert len(SERVED) == served, "refused before any image was fetched"
        ok = running.request("POST", "/v1/chat/completions", {
            "model": MODEL_NAME, "messages": image_message(data_url(1)), "max_tokens": 2})
        assert ok.status == 200
        running.wait_idle()


@pytest.mark.parametrize(("value", "message"), [('{"video": 1}', "only images"), ("-1", "whole number"),
                                                ("{", "expected")])
def test_bad_image_limits_are_refused(llava_dir: pathlib.Path, value: str, message: str,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    from pagoda.engine.entrypoints.args import parse_serve_args

    with pytest.raises(SystemExit):
        parse_serve_args([str(llava_dir), "--limit-mm-per-prompt", value], environ={})
    assert message in capsys.readouterr().err


def test_mm_processor_kwargs_flag(llava_dir: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pagoda.engine.entrypoints.args import parse_serve_args

    args = parse_serve_args([str(llava_dir), "--mm-processor-kwargs", '{"max_pixels": 1024}'], environ={})
    assert args.engine.mm_processor_kwargs == {"max_pixels": 1024}
    with pytest.raises(SystemExit):
        parse_serve_args([str(llava_dir), "--mm-processor-kwargs", "[1]"], environ={})
    assert "expected a JSON object" in capsys.readouterr().err
