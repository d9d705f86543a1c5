"""`pagoda serve --speculative-config`: several tokens per step reach streams as ordinary deltas,
and the drafts are counted in /metrics."""

from __future__ import annotations

import json
import pathlib

import pytest

from pagoda.engine.fixtures import make_cyclic_model, make_truncated_model
from tests.server.conftest import MODEL_NAME, serve_in_thread

openai = pytest.importorskip("openai")


@pytest.mark.parametrize("method", ["ngram", "draft_model"])
def test_streamed_and_whole_agree_with_drafts(model_dir: pathlib.Path, tmp_path: pathlib.Path, method: str) -> None:
    cyclic = make_cyclic_model(model_dir, tmp_path / "cyclic")
    spec = json.dumps({"method": "ngram", "num_speculative_tokens": 4} if method == "ngram" else
                      {"model": str(make_truncated_model(cyclic, tmp_path / "draft", 1)), "num_speculative_tokens": 4})
    with serve_in_thread([str(cyclic), "--served-model-name", MODEL_NAME, "--speculative-config", spec]) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)
        kwargs = dict(model=MODEL_NAME, prompt="Hello, my name is", max_tokens=40, temperature=0,
                      extra_body={"ignore_eos": True})
        whole = client.completions.create(**kwargs)
        chunks = [c for c in client.completions.create(stream=True, **kwargs) if c.choices]
        assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text
        assert whole.usage.completion_tokens == 40
        # Drafts were kept: fewer chunks with text than tokens.
        assert len([c for c in chunks if c.choices[0].text]) < 40
        stats = server.state.engine.engine.spec_stats
        assert stats.accepted_tokens > 0
        server.wait_idle()
        assert server.metric("pagoda_spec_decode_draft_tokens_total", model_name=MODEL_NAME) == stats.draft_tokens
        assert server.metric("pagoda_spec_decode_accepted_tokens_total", model_name=MODEL_NAME) == stats.accepted_tokens
