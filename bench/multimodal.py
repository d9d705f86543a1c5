"""Generation with images on CPU: pagoda against transformers' LLaVA, same model, same requests, one run.

A LLaVA-shaped random model (the cpu_throughput Llama behind a 4-layer CLIP tower over 56-pixel
images in patches of 7: 64 image tokens per request) answers 32 requests, each with its own
random image and a question, 32 greedy output tokens with EOS ignored:
  * pagoda's offline LLM (images expanded to placeholder runs, the tower once per request,
    continuous batching and chunked prefill as for text),
  * transformers `generate` on the same left-padded batch of expanded prompts and pixels.
Then pagoda again on 32 new questions about 4 images, where prefix caching keys blocks by the
image: what repeated images cost. Reported: output tokens/s, ratios, whether greedy outputs agree.

    python -m bench.multimodal [--num-seqs 32] [--output-len 32]
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time

import numpy as np
import torch
from PIL import Image
from transformers import AutoImageProcessor, GenerationConfig, LlavaForConditionalGeneration

from bench.common import write_result
from bench.cpu_throughput import MODEL_SHAPE
from pagoda.engine.fixtures import PAD_TOKEN_ID, make_tiny_llava
from pagoda.engine.llm import LLM
from pagoda.engine.sampling_params import SamplingParams

VISION = dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4, image_size=56,
              patch_size=7)
WORDS = "what is shown here where how many colors describe the picture in detail please briefly".split()


def requests(num: int, distinct_images: int, seed: int) -> list[tuple[str, Image.Image]]:
    rng, words = np.random.default_rng(seed), random.Random(seed)
    images = [Image.fromarray((rng.random((64, 80, 3)) * 255).astype("uint8")) for _ in range(distinct_images)]
    return [(f"USER: <image>\n{' '.join(words.choices(WORDS, k=words.randint(4, 24)))} ASSISTANT:",
             images[i % distinct_images]) for i in range(num)]


def run_pagoda(llm: LLM, reqs: list[tuple[str, Image.Image]], output_len: int) -> tuple[dict, list]:
    params = SamplingParams(temperature=0.0, max_tokens=output_len, ignore_eos=True)
    llm.engine.block_manager.reset_prefix_cache()
    start = time.perf_counter()
    outputs = llm.generate([{"prompt": text, "multi_modal_data": {"image": image}} for text, image in reqs], params)
    elapsed = time.perf_counter() - start
    tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    return {"output_tokens": tokens, "seconds": elapsed, "output_tokens_per_s": tokens / elapsed}, outputs


@torch.inference_mode()
def run_hf(path: str, prompts: list[list[int]], images: list[Image.Image], output_len: int) -> tuple[dict, list]:
    model = LlavaForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval()
    pixels = AutoImageProcessor.from_pretrained(path)(images=images, return_tensors="pt")["pixel_values"]
    width = max(map(len, prompts))
    ids = torch.tensor([[PAD_TOKEN_ID] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    config = GenerationConfig(do_sample=False, max_new_tokens=output_len, min_new_tokens=output_len,
                              eos_token_id=None, pad_token_id=PAD_TOKEN_ID)
    model.generate(input_ids=ids[:1], attention_mask=mask[:1], pixel_values=pixels[:1],
                   generation_config=GenerationConfig(do_sample=False, max_new_tokens=2, pad_token_id=PAD_TOKEN_ID))
    start = time.perf_counter()
    out = model.generate(input_ids=ids, attention_mask=mask, pixel_values=pixels, generation_config=config)
    elapsed = time.perf_counter() - start
    generated = out[:, width:].tolist()
    tokens = sum(map(len, generated))
    return {"output_tokens": tokens, "seconds": elapsed, "output_tokens_per_s": tokens / elapsed}, generated


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-seqs", type=int, default=32)
    parser.add_argument("--output-len", type=int, default=32)
    args = parser.parse_args()
    distinct = requests(args.num_seqs, args.num_seqs, seed=0)
    repeated = requests(args.num_seqs, 4, seed=1)
    with tempfile.TemporaryDirectory() as tmp:
        path = str(make_tiny_llava(f"{tmp}/llava", text=MODEL_SHAPE, vision=VISION))
        llm = LLM(path, dtype="float32")
        llm.generate({"prompt": distinct[0][0], "multi_modal_data": {"image": distinct[0][1]}},
                     SamplingParams(max_tokens=2))  # warm-up
        pagoda, outputs = run_pagoda(llm, distinct, args.output_len)
        hf, hf_tokens = run_hf(path, [o.prompt_token_ids for o in outputs], [image for _, image in distinct],
                               args.output_len)
        pagoda_repeated, _ = run_pagoda(llm, repeated, args.output_len)
    agree = sum(list(o.outputs[0].token_ids) == t for o, t in zip(outputs, hf_tokens))
    speedup = pagoda["output_tokens_per_s"] / hf["output_tokens_per_s"]
    print(f"pagoda            {pagoda['output_tokens_per_s']:8.1f} tok/s")
    print(f"hf_generate       {hf['output_tokens_per_s']:8.1f} tok/s   pagoda is {speedup:.2f}x")
    print(f"pagoda, 4 images  {pagoda_repeated['output_tokens_per_s']:8.1f} tok/s (prefix cache keyed by image)")
    print(f"greedy outputs agree on {agree} of {len(outputs)} requests")
    path = write_result("multimodal_cpu", {
        "workload": {"num_seqs": args.num_seqs, "output_len": args.output_len, "greedy": True, "ignore_eos": True,
                     "prompts": "an image and 4-24 random words each", "image_tokens": 64},
        "model": {"arch": "llava", "text": MODEL_SHAPE, "vision": VISION, "dtype": "float32"},
        "systems": {"pagoda": pagoda, "hf_generate": hf, "pagoda_4_distinct_images": pagoda_repeated},
        "pagoda_over_hf_generate": speedup, "greedy_agreement": f"{agree}/{len(outputs)}",
    })
    print(f"recorded in {path}")


if __name__ == "__main__":
    main()
