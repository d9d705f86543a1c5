"""`pagoda run-batch`: OpenAI batch files run offline through the server's own app, each line's answer
in input order; what the server would refuse keeps its 4xx, what is not a request gets an error."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

from pagoda.engine.llm import LLM
from pagoda.engine.sampling_params import SamplingParams

PROMPT = "Once upon a time"
LINES = [
    {"custom_id": "chat-1", "method": "POST", "url": "/v1/chat/completions",
     "body": {"model": "tiny", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 8,
              "temperature": 0}},
    {"custom_id": "completion-1", "method": "POST", "url": "/v1/completions",
     "body": {"model": "tiny", "prompt": PROMPT, "max_tokens": 8, "temperature": 0}},
    {"custom_id": "embedding-1", "method": "POST", "url": "/v1/embeddings", "body": {"model": "tiny", "input": "hi"}},
    {"custom_id": "refused", "method": "POST", "url": "/v1/completions",
     "body": {"model": "tiny", "prompt": "x", "max_tokens": -1}},
    {"custom_id": "streamed", "method": "POST", "url": "/v1/completions",
     "body": {"model": "tiny", "prompt": "x", "stream": True}},
    {"custom_id": "elsewhere", "method": "POST", "url": "/v1/models", "body": {}},
]


def test_a_batch_file_runs_in_order_with_each_line_s_answer(model_dir: pathlib.Path, tmp_path: pathlib.Path) -> None:
    source = tmp_path / "requests.jsonl"
    source.write_text("".join(json.dumps(line) + "\n" for line in LINES) + "not json\n\n")
    results_path = tmp_path / "results.jsonl"
    env = {**os.environ, "PAGODA_API_KEY": "secret"}  # the key the app requires is the one the batch sends
    done = subprocess.run([sys.executable, "-m", "pagoda.cli", "run-batch", "-i", str(source), "-o", str(results_path),
                           str(model_dir), "--served-model-name", "tiny"], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    results = [json.loads(line) for line in results_path.read_text().splitlines()]
    assert [r["custom_id"] for r in results] == [line["custom_id"] for line in LINES] + [None]
    chat, completion, embedding, refused, streamed, elsewhere, garbage = results
    for ok in (chat, completion, embedding):
        assert ok["error"] is None and ok["response"]["status_code"] == 200, ok
        assert ok["id"].startswith("batch_req_")
        # The answer's own id where it has one (embeddings have none).
        assert ok["response"]["request_id"] == ok["response"]["body"].get("id", ok["response"]["request_id"])
    assert chat["response"]["body"]["object"] == "chat.completion"
    want = LLM(str(model_dir), dtype="auto").generate([PROMPT], SamplingParams(temperature=0, max_tokens=8))
    assert completion["response"]["body"]["choices"][0]["text"] == want[0].outputs[0].text
    assert len(embedding["response"]["body"]["data"][0]["embedding"]) > 0
    assert refused["error"] is None and refused["response"]["status_code"] == 400
    assert refused["response"]["body"]["error"]["param"] == "max_tokens"
    assert streamed["response"] is None and "stream" in streamed["error"]["message"]
    assert elsewhere["response"] is None and "url must be one of" in elsewhere["error"]["message"]
    assert garbage["response"] is None and "not JSON" in garbage["error"]["message"]
