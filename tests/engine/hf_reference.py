"""Hugging Face transformers as the reference: greedy continuations and logprobs on the same weights."""

from __future__ import annotations

import functools
import pathlib
from typing import Any

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel


@functools.cache
def hf_model(path: pathlib.Path, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    return AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype).eval()


@torch.inference_mode()
def hf_greedy(path: pathlib.Path, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    """Greedy continuation with transformers' own KV cache, never stopping at EOS."""
    model = hf_model(path)
    ids = torch.tensor([prompt_ids])
    out = model(ids, use_cache=True)
    if next_step_cache(out) is None:  # Mamba-2's cache_params before transformers 5.24: recompute instead
        return hf_greedy_uncached(path, prompt_ids, max_new_tokens)
    generated: list[int] = []
    for _ in range(max_new_tokens):
        token = int(out.logits[0, -1].argmax())
        generated.append(token)
        out = model(torch.tensor([[token]]), **next_step_cache(out), use_cache=True)
    return generated


def next_step_cache(out: Any) -> dict[str, Any] | None:
    """The keyword handing a forward pass's cache to the next one: `cache` (transformers 5.24 on, every
    model) or `past_key_values` (before); None where the output holds neither."""
    for key in ("cache", "past_key_values"):
        if key in out.keys():
            return {key: out[key]}
    return None


@torch.inference_mode()
def hf_greedy_uncached(path: pathlib.Path, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    """Greedy continuation by a full forward pass over the whole sequence for every token: the reference
    where transformers' own cached decoding of a model is not (Bamba's, in transformers 5.23), or takes
    another form (Mamba-2's cache_params before transformers 5.24)."""
    ids = list(prompt_ids)
    for _ in range(max_new_tokens):
        ids.append(int(hf_model(path)(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt_ids):]


@torch.inference_mode()
def hf_logprobs(path: pathlib.Path, token_ids: list[int]) -> torch.Tensor:
    """[len-1, vocab] log-softmax of the next-token logits at every position but the last."""
    logits = hf_model(path)(torch.tensor([token_ids])).logits[0, :-1].float()
    return torch.log_softmax(logits, dim=-1)


@torch.inference_mode()
def hf_embedding(path: pathlib.Path, token_ids: list[int]) -> torch.Tensor:
    """The last token's final hidden state (after the last norm), of unit length."""
    hidden = hf_model(path).model(torch.tensor([token_ids])).last_hidden_state[0, -1].float()
    return torch.nn.functional.normalize(hidden, dim=-1)


@torch.inference_mode()
def hf_beam_search(path: pathlib.Path, prompt_ids: list[int], beams: int, max_new_tokens: int) -> list[list[int]]:
    """transformers' own beam search: the `beams` best continuations, best first."""
    out = hf_model(path).generate(torch.tensor([prompt_ids]), num_beams=beams, num_return_sequences=beams,
                                  do_sample=False, max_new_tokens=max_new_tokens,
                                  length_penalty=1.0, early_stopping=False)
    return [row[len(prompt_ids):].tolist() for row in out]


def engine_token_ids(llm: Any, prompts: list[list[int]], params: Any) -> list[list[int]]:
    """Each prompt's generated token ids from a pagoda LLM, which is shut down afterwards (its
    tensor-parallel workers with it)."""
    try:
        return [o.outputs[0].token_ids for o in llm.generate([{"prompt_token_ids": p} for p in prompts], params)]
    finally:
        llm.engine.shutdown()
