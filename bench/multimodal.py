"""Generation with images on CPU: pagoda against transformers, same model, same requests, one run.

`--arch llava`: a LLaVA-shaped random model (the cpu_throughput Llama behind a 4-layer CLIP tower
over 56-pixel images in patches of 7: 64 image tokens per request). `--arch qwen2_5_vl`: a
Qwen2.5-VL-shaped one (the same language model as a Qwen2 with multimodal RoPE, a 4-layer windowed
tower over patches of 4 merged 2 x 2), each image at its own size, 32..64 pixels a side (16 to 64
image tokens). 32 requests, each with its own random image and a question, 32 greedy output tokens
with EOS ignored:
  * pagoda's offline LLM (images expanded to placeholder runs, the tower once per request,
    continuous batching and chunked prefill as for text),
  * transformers `generate` on the same left-padded batch of expanded prompts and pixels.
Then pagoda again on 32 new questions about 4 images, where prefix caching keys blocks by the
image: what repeated images cost. Reported: output tokens/s, ratios, whether greedy outputs agree.

    python -m bench.multimodal [--arch llava|qwen2_5_vl] [--num-seqs 32] [--output-len 32]
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time

import numpy as np
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageTextToText, GenerationConfig

from bench.common import write_result
from bench.cpu_throughput import MODEL_SHAPE
from pagoda.engine.fixtures import IMAGE_TOKEN, PAD_TOKEN_ID, make_tiny_llava
from pagoda.engine.qwen_vl_fixtures import QWEN_VL_IMAGE_TOKEN_ID, QWEN_VL_PLACEHOLDER, make_tiny_qwen_vl
from pagoda.engine.llm import LLM
from pagoda.engine.sampling_params import SamplingParams

VISION = dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4, image_size=56,
              patch_size=7)
QWEN_VISION = dict(hidden_size=128, intermediate_size=512, depth=4, num_heads=4, fullatt_block_indexes=[3])
WORDS = "what is shown here where how many colors describe the picture in detail please briefly".split()


def requests(num: int, distinct_images: int, seed: int, placeholder: str,
             sides: tuple[int, int]) -> list[tuple[str, Image.Image]]:
    """`num` questions about `distinct_images` random images of `sides[0]`..`sides[1]` pixels a side."""
    rng, words = np.random.default_rng(seed), random.Random(seed)
    images = [Image.fromarray((rng.random((words.randint(*sides), words.randint(*sides), 3)) * 255).astype("uint8"))
              for _ in range(distinct_images)]
    return [(f"USER: {placeholder}\n{' '.join(words.choices(WORDS, k=words.randint(4, 24)))} ASSISTANT:",
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
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32).eval()
    inputs = dict(AutoImageProcessor.from_pretrained(path)(images=images, return_tensors="pt"))
    width = max(map(len, prompts))
    ids = torch.tensor([[PAD_TOKEN_ID] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    if "image_grid_thw" in inputs:  # Qwen-VL: its M-RoPE positions need to know which tokens are the image's
        inputs["mm_token_type_ids"] = (ids == QWEN_VL_IMAGE_TOKEN_ID).int()
    config = GenerationConfig(do_sample=False, max_new_tokens=output_len, min_new_tokens=output_len,
                              eos_token_id=None, pad_token_id=PAD_TOKEN_ID)
    start = time.perf_counter()
    out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config, **inputs)
    elapsed = time.perf_counter() - start
    generated = out[:, width:].tolist()
    tokens = sum(map(len, generated))
    return {"output_tokens": tokens, "seconds": elapsed, "output_tokens_per_s": tokens / elapsed}, generated


# --arch: (writes the model, the placeholder a prompt writes, image sides, the tower's shape).
ARCHS = {
    "llava": (lambda out: make_tiny_llava(out, text=MODEL_SHAPE, vision=VISION), IMAGE_TOKEN, (64, 80), VISION),
    "qwen2_5_vl": (lambda out: make_tiny_qwen_vl(out, "2.5", text=MODEL_SHAPE, vision=QWEN_VISION),
                   QWEN_VL_PLACEHOLDER, (32, 64), QWEN_VISION),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=ARCHS, default="llava")
    parser.add_argument("--num-seqs", type=int, default=32)
    parser.add_argument("--output-len", type=int, default=32)
    args = parser.parse_args()
    make, placeholder, sides, vision = ARCHS[args.arch]
    distinct = requests(args.num_seqs, args.num_seqs, 0, placeholder, (sides[0], sides[1]))
    repeated = requests(args.num_seqs, 4, 1, placeholder, (sides[0], sides[1]))
    with tempfile.TemporaryDirectory() as tmp:
        path = str(make(f"{tmp}/model"))
        llm = LLM(path, dtype="float32")
        llm.generate({"prompt": distinct[0][0], "multi_modal_data": {"image": distinct[0][1]}},
                     SamplingParams(max_tokens=2))  # warm-up
        pagoda, outputs = run_pagoda(llm, distinct, args.output_len)
        prompts, images = [o.prompt_token_ids for o in outputs], [image for _, image in distinct]
        run_hf(path, prompts[:1], images[:1], 2)  # warm-up
        hf, hf_tokens = run_hf(path, prompts, images, args.output_len)
        pagoda_repeated, _ = run_pagoda(llm, repeated, args.output_len)
    agree = sum(list(o.outputs[0].token_ids) == t for o, t in zip(outputs, hf_tokens))
    speedup = pagoda["output_tokens_per_s"] / hf["output_tokens_per_s"]
    image_tokens = [o.prompt_token_ids.count(llm.engine.model_config.vision.image_token_id) for o in outputs]
    print(f"pagoda            {pagoda['output_tokens_per_s']:8.1f} tok/s")
    print(f"hf_generate       {hf['output_tokens_per_s']:8.1f} tok/s   pagoda is {speedup:.2f}x")
    print(f"pagoda, 4 images  {pagoda_repeated['output_tokens_per_s']:8.1f} tok/s (prefix cache keyed by image)")
    print(f"greedy outputs agree on {agree} of {len(outputs)} requests")
    path = write_result("multimodal_cpu" + ("" if args.arch == "llava" else f"_{args.arch}"), {
        "workload": {"num_seqs": args.num_seqs, "output_len": args.output_len, "greedy": True, "ignore_eos": True,
                     "prompts": "an image and 4-24 random words each", "image_sides": sides,
                     "image_tokens": [min(image_tokens), max(image_tokens)]},
        "model": {"arch": args.arch, "text": MODEL_SHAPE, "vision": vision, "dtype": "float32"},
        "systems": {"pagoda": pagoda, "hf_generate": hf, "pagoda_4_distinct_images": pagoda_repeated},
        "pagoda_over_hf_generate": speedup, "greedy_agreement": f"{agree}/{len(outputs)}",
    })
    print(f"recorded in {path}")


if __name__ == "__main__":
    main()
