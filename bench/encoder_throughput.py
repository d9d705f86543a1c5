"""Embedding throughput of an encoder on CPU: pagoda against transformers run the way sentence-transformers
runs it (texts sorted by length, padded batches of 32), same weights, same texts, in one process.

    python -m bench.encoder_throughput [--num-texts 256] [--min-len 16] [--max-len 256]

The model is all-MiniLM-L6-v2-shaped (6 layers, 384 wide, 12 heads, mean pooling), random weights. The
figure is prompt tokens embedded per second; the record also keeps the largest difference between the
two systems' unit-length embeddings.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time

import torch
from transformers import AutoModel

from bench.common import write_result
from pagoda.engine.encoder_fixtures import make_tiny_encoder
from pagoda.engine.fixtures import TOKENIZER_VOCAB_SIZE
from pagoda.engine.llm import LLM

SHAPE = dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536)
BATCH = 32  # sentence-transformers' default batch size


def texts(num: int, low: int, high: int, seed: int = 0) -> list[list[int]]:
    """Token ids framed as the tokenizer frames a text (<s> ... </s>), random in between."""
    rng = random.Random(seed)
    return [[1, *(rng.randrange(5, TOKENIZER_VOCAB_SIZE) for _ in range(rng.randint(low, high) - 2)), 2]
            for _ in range(num)]


def run_pagoda(path: str, prompts: list[list[int]]) -> tuple[dict, torch.Tensor]:
    llm = LLM(path, dtype="float32")
    llm.embed([{"prompt_token_ids": prompts[0]}])  # warm-up
    start = time.perf_counter()
    vectors = torch.tensor(llm.embed([{"prompt_token_ids": p} for p in prompts]))
    elapsed = time.perf_counter() - start
    tokens = sum(map(len, prompts))
    return {"prompt_tokens": tokens, "seconds": elapsed, "prompt_tokens_per_s": tokens / elapsed}, vectors


@torch.inference_mode()
def run_hf(path: str, prompts: list[list[int]]) -> tuple[dict, torch.Tensor]:
    model = AutoModel.from_pretrained(path, dtype=torch.float32).eval()
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    vectors = torch.empty(len(prompts), model.config.hidden_size)
    model(torch.tensor([prompts[0]]))  # warm-up
    start = time.perf_counter()
    for i in range(0, len(order), BATCH):
        batch = [prompts[j] for j in order[i : i + BATCH]]
        width = max(map(len, batch))
        ids = torch.tensor([p + [0] * (width - len(p)) for p in batch])
        mask = torch.tensor([[1] * len(p) + [0] * (width - len(p)) for p in batch])
        hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
        mean = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        vectors[order[i : i + BATCH]] = torch.nn.functional.normalize(mean, dim=-1)
    elapsed = time.perf_counter() - start
    tokens = sum(map(len, prompts))
    return {"prompt_tokens": tokens, "seconds": elapsed, "prompt_tokens_per_s": tokens / elapsed,
            "batch_size": BATCH}, vectors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-texts", type=int, default=256)
    parser.add_argument("--min-len", type=int, default=16)
    parser.add_argument("--max-len", type=int, default=256)
    args = parser.parse_args()
    prompts = texts(args.num_texts, args.min_len, args.max_len)
    with tempfile.TemporaryDirectory() as tmp:
        path = str(make_tiny_encoder(tmp, "bert", pooling="mean", max_tokens=args.max_len, **SHAPE))
        pagoda, ours = run_pagoda(path, prompts)
        hf, theirs = run_hf(path, prompts)
    pagoda["speedup_over_hf"] = pagoda["prompt_tokens_per_s"] / hf["prompt_tokens_per_s"]
    difference = float((ours - theirs).abs().max())
    print(f"pagoda {pagoda['prompt_tokens_per_s']:9.0f} tok/s   transformers {hf['prompt_tokens_per_s']:9.0f} tok/s   "
          f"pagoda is {pagoda['speedup_over_hf']:.2f}x; embeddings differ by at most {difference:.1e}")
    record = {"workload": {"num_texts": args.num_texts, "prompt_len": [args.min_len, args.max_len],
                           "texts": "random tokens"},
              "model": {"arch": "bert", **SHAPE, "pooling": "mean", "dtype": "float32"},
              "systems": {"pagoda": pagoda, "hf_sentence_transformers_style": hf},
              "max_abs_difference": difference}
    print(f"recorded in {write_result('encoder_throughput_cpu', record)}")


if __name__ == "__main__":
    main()
