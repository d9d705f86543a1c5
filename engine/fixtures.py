"""Small random-weight Hugging Face model directories for tests, benchmarks and `make run`.

The engine has to load real checkpoints, so its fixtures are real checkpoints too:
written by transformers' own model classes, with the config.json layout, sharding,
tied embeddings and tokenizer files that hub checkpoints of each family ship. No
model hub is reachable, hence weights are random and the tokenizer is a byte-level
BPE trained here, in a few milliseconds, on the small corpus below.

Everything is deterministic: the same arguments give byte-identical files, so a
test can rebuild a fixture in memory (`build_tiny_model`) and compare it with what
was loaded from disk.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import pathlib
import re
import shutil
from collections.abc import Callable
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel
from transformers.utils import logging as hf_logging

from pagoda.engine.layers.fp8 import WHOLE, quantize_fp8_blocks
from pagoda.kernels import reference

FIXTURE_ARCHS: tuple[str, ...] = (
    "llama", "llama3", "mistral", "qwen2", "qwen3", "phi3", "granite", "gemma2", "gemma3", "glm4", "olmo2",
    "starcoder2", "cohere", "cohere2", "smollm3", "ministral", "olmo3", "mixtral", "olmoe", "granitemoe", "qwen2_moe",
    "qwen3_moe", "glm4_moe", "deepseek_v2", "deepseek_v3", "gpt_oss", "granitemoehybrid", "nemotron_h", "nemotron_h_moe", "mamba2", "falcon_h1", "lfm2", "lfm2_moe",
    "qwen3_5", "qwen3_5_moe", "qwen3_next", "gemma4", "gemma4_moe", "olmo_hybrid", "minimax_m2", "kimi_linear",
    "glm4_moe_lite", "mimo_v2_flash", "ernie4_5_moe", "dots1", "hunyuan_v1_dense", "hunyuan_v1_moe", "apertus",
    "exaone_moe",
)
FIXTURE_DTYPES: tuple[str, ...] = ("float32", "float16", "bfloat16")

# Ids are fixed by the order of this list (the trainer puts special tokens first).
PAD_TOKEN, BOS_TOKEN, EOS_TOKEN = "<pad>", "<s>", "</s>"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, IM_START, IM_END)
PAD_TOKEN_ID, BOS_TOKEN_ID, EOS_TOKEN_ID = 0, 1, 2

TOKENIZER_VOCAB_SIZE = 400
# Real checkpoints pad the embedding matrix beyond the tokenizer (to a multiple of
# 64 or 128); the engine must cope with ids the tokenizer does not know.
MODEL_VOCAB_SIZE = 416

# Varied enough that the 400-token vocabulary learns whole English words but keeps
# many accented, CJK and emoji characters split over several byte tokens, some of
# them merged across character boundaries: the cases incremental detokenization
# must get right.
_CORPUS = (
    "The quick brown fox jumps over the lazy dog. Hello, my name is Pagoda, and I "
    "serve language models on a cluster of machines. The scheduler batches requests "
    "together so that the accelerator is never idle, and the cache keeps the keys and "
    "values of every token that was already seen.",
    "Once upon a time there was a little model that wanted to write stories. It read "
    "every book in the library, and then it wrote its own: short ones, long ones, "
    "funny ones, and a few that nobody understood.",
    "Un café crème, s'il vous plaît. Ça coûte trois euros à la fenêtre. "
    "Über den Straßen von München schien die Sonne; Ärger gab es nicht. "
    "El niño comió jalapeños en la montaña. Ångström, naïve façade, déjà vu, résumé.",
    "東京は日本の首都です。今日はとても良い天気ですね。"
    "我喜欢学习中文，也喜欢喝茶。北京的秋天很美。"
    "한국어도 조금 할 수 있습니다. 감사합니다!",
    "Emoji: 🚀 launch, 🔥 fire, 😀 smile, 👍🏽 thumbs up, 🇯🇵 flag, ❤️ love, ✨ sparkle, "
    "🦀 crab, 🐍 snake. Math: ∑ ∫ √ π ≈ 3.14 ≤ ∞.",
    "def fib(n: int) -> int:\n"
    "    return n if n < 2 else fib(n - 1) + fib(n - 2)\n\n"
    "for i in range(10):\n"
    '    print(f"{i}: {fib(i)}")  # {"key": [1, 2, 3]}\n',
    "Numbers: 0123456789, 3.14159, 2.71828, 2024-05-17, 1e-9, $42.00, 100%, "
    "+49 30 1234567, #7, 12:30, 6 * 7 = 42.",
)

# ChatML, as Qwen ships it, with its Hermes-style tools: the function signatures
# in the system turn, calls as <tool_call> blocks, results as <tool_response>
# in a user turn. Llama-like fixtures start the conversation with BOS in the
# template (as Llama 3 does) because apply_chat_template encodes the rendered
# text without special tokens.
_CHAT_TEMPLATE = (
    "{%- if tools %}"
    "{{- '<|im_start|>system\\n' }}"
    "{%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] + '\\n\\n' }}{%- endif %}"
    "{{- '# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n"
    "You are provided with function signatures within <tools></tools> XML tags:\\n<tools>' }}"
    "{%- for tool in tools %}{{- '\\n' + (tool | tojson) }}{%- endfor %}"
    "{{- '\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments "
    "within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\"name\": <function-name>, \"arguments\": "
    "<args-json-object>}\\n</tool_call><|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message['role'] not in ['system', 'user', 'assistant', 'tool'] %}"
    "{{- raise_exception('Unsupported role: ' + message['role']) }}"
    "{%- endif %}"
    "{%- if message['role'] == 'system' and tools and loop.first %}"
    "{%- elif message['role'] == 'tool' %}"
    "{{- '<|im_start|>user\\n<tool_response>\\n' + message['content'] + '\\n</tool_response><|im_end|>\\n' }}"
    "{%- elif message['role'] == 'assistant' and message['tool_calls'] is defined %}"
    "{{- '<|im_start|>assistant\\n' + message['content'] }}"
    "{%- for call in message['tool_calls'] %}"
    "{%- set arguments = call['function']['arguments'] %}"
    "{{- '\\n<tool_call>\\n{\"name\": \"' + call['function']['name'] + '\", \"arguments\": ' }}"
    "{{- (arguments if arguments is string else arguments | tojson) + '}\\n</tool_call>' }}"
    "{%- endfor %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}"
    # A list of parts (images and text, as multimodal templates take them): an image is its placeholder.
    "{%- if message['content'] is string %}{{- message['content'] }}{%- else %}"
    "{%- for part in message['content'] %}"
    "{{- '<image>\\n' if part['type'] == 'image' else part['text'] }}"
    "{%- endfor %}{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


# OpenAI's harmony format (GPT-OSS): its markers are special tokens, taking the ids after the trained vocabulary;
# a reply ends at <|return|> or, to call a tool, at <|call|>.
HARMONY_TOKENS = ("<|start|>", "<|end|>", "<|message|>", "<|channel|>", "<|constrain|>", "<|return|>", "<|call|>")
HARMONY_STOP_IDS = [TOKENIZER_VOCAB_SIZE + HARMONY_TOKENS.index("<|return|>"),
                    TOKENIZER_VOCAB_SIZE + HARMONY_TOKENS.index("<|call|>"), EOS_TOKEN_ID]
# gpt-oss's template, shortened: the system message with the reasoning effort, the developer message with
# the instructions and the tools as a TypeScript namespace, earlier calls as commentary messages addressed
# to functions.NAME, tool results as messages from them, and the reply opened as the assistant's.
_HARMONY_TEMPLATE = (
    "{{- '<|start|>system<|message|>You are ChatGPT, a large language model trained by OpenAI.\n"
    "Knowledge cutoff: 2024-06\n\nReasoning: ' + (reasoning_effort | default('medium')) + '\n\n"
    "# Valid channels: analysis, commentary, final. Channel must be included for every message.' }}"
    "{%- if tools %}{{- \"\\nCalls to these tools must go to the commentary channel: 'functions'.\" }}{%- endif %}"
    "{{- '<|end|>' }}"
    "{%- set instructions = messages[0]['content'] if messages[0]['role'] in ['system', 'developer'] else '' %}"
    "{%- if instructions or tools %}"
    "{{- '<|start|>developer<|message|>' }}"
    "{%- if instructions %}{{- '# Instructions\n\n' + instructions + '\n\n' }}{%- endif %}"
    "{%- if tools %}{{- '# Tools\n\n## functions\n\nnamespace functions {\n' }}"
    "{%- for tool in tools %}{{- '\n// ' + (tool['function']['description'] | default('')) + '\ntype ' + "
    "tool['function']['name'] + ' = (_: ' + (tool['function']['parameters'] | default({}) | tojson) + ') => any;\n' }}"
    "{%- endfor %}{{- '\n} // namespace functions' }}{%- endif %}"
    "{{- '<|end|>' }}"
    "{%- endif %}"
    "{%- set ns = namespace(last_call='') %}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'user' %}"
    "{{- '<|start|>user<|message|>' + message['content'] + '<|end|>' }}"
    "{%- elif message['role'] == 'assistant' and message['tool_calls'] is defined and message['tool_calls'] %}"
    "{%- for call in message['tool_calls'] %}{%- set ns.last_call = call['function']['name'] %}"
    "{%- set arguments = call['function']['arguments'] %}"
    "{{- '<|start|>assistant to=functions.' + call['function']['name'] + '<|channel|>commentary json<|message|>' + "
    "(arguments if arguments is string else arguments | tojson) + '<|call|>' }}"
    "{%- endfor %}"
    "{%- elif message['role'] == 'assistant' %}"
    "{{- '<|start|>assistant<|channel|>final<|message|>' + message['content'] + '<|end|>' }}"
    "{%- elif message['role'] == 'tool' %}"
    "{{- '<|start|>functions.' + ns.last_call + ' to=assistant<|channel|>commentary<|message|>' + message['content'] + "
    "'<|end|>' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start|>assistant' }}{%- endif %}"
)


# Qwen2/3's pre-tokenization: GPT-2's pattern with single digits and no leading
# space before punctuation runs.
_QWEN_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


@dataclasses.dataclass(frozen=True)
class _Family:
    """What distinguishes one fixture architecture from another."""

    model_type: str
    architecture: str
    adds_bos: bool  # Llama-like tokenizers prepend BOS, Qwen-like ones do not.
    rope_theta: float
    rope_scaling: dict[str, Any] | None = None
    config: dict[str, Any] = dataclasses.field(default_factory=dict)
    harmony: bool = False  # GPT-OSS: harmony's special tokens, chat template and stop tokens


# The Qwen3.5 fixtures' layers (Gated DeltaNet and gated attention) and experts.
_QWEN3_5_LAYERS: dict[str, Any] = {
    "num_hidden_layers": 4, "head_dim": 32, "partial_rotary_factor": 0.25, "linear_num_key_heads": 2,
    "linear_num_value_heads": 4, "linear_key_head_dim": 16, "linear_value_head_dim": 24, "linear_conv_kernel_dim": 4}
_QWEN3_5_EXPERTS: dict[str, Any] = {"num_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 32,
                                    "shared_expert_intermediate_size": 48}

# The Gemma 4 fixtures' attention: sliding layers (window 8) with 2 heads of 16, global ones with wider heads
# (32) rotating a quarter of their frequencies (proportional RoPE); logits soft-capped where random weights reach.
_GEMMA4_ATTENTION: dict[str, Any] = {
    "head_dim": 16, "global_head_dim": 32, "sliding_window": 8, "hidden_activation": "gelu_pytorch_tanh",
    "final_logit_softcapping": 3.0, "vocab_size_per_layer_input": MODEL_VOCAB_SIZE,
    "rope_parameters": {"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                        "full_attention": {"rope_type": "proportional", "partial_rotary_factor": 0.25,
                                           "rope_theta": 1000000.0}}}

_FAMILIES: dict[str, _Family] = {
    "llama": _Family("llama", "LlamaForCausalLM", adds_bos=True, rope_theta=10000.0),
    "llama3": _Family(
        "llama",
        "LlamaForCausalLM",
        adds_bos=True,
        rope_theta=500000.0,
        # A tiny original context (64) makes the scaling change most frequencies,
        # so a loader that ignores it fails at any test length.
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        },
    ),
    # Mistral 7B v0.2 and later ship without a sliding window.
    "mistral": _Family(
        "mistral", "MistralForCausalLM", adds_bos=True, rope_theta=1000000.0, config={"sliding_window": None}
    ),
    "qwen2": _Family("qwen2", "Qwen2ForCausalLM", adds_bos=False, rope_theta=1000000.0),
    # head_dim 32 on purpose: hidden_size / num_attention_heads would be 16.
    "qwen3": _Family("qwen3", "Qwen3ForCausalLM", adds_bos=False, rope_theta=1000000.0, config={"head_dim": 32}),
    # Phi-3/4: q/k/v and gate/up stored fused, a partial rotary (as Phi-4-mini's 0.75).
    "phi3": _Family("phi3", "Phi3ForCausalLM", adds_bos=False, rope_theta=10000.0,
                    config={"partial_rotary_factor": 0.75, "sliding_window": None}),
    # Granite 3.x: Llama with multipliers on the embeddings, the residual branches, attention and logits.
    "granite": _Family("granite", "GraniteForCausalLM", adds_bos=False, rope_theta=10000.0,
                       config={"embedding_multiplier": 6.0, "residual_multiplier": 0.4,
                               "attention_multiplier": 0.1, "logits_scaling": 2.5}),
    # Gemma 3: a sliding window of 8 tokens on all layers but every 2nd (so the tests' prompts
    # outgrow it), local layers rotating at another base, attention scaled by query_pre_attn_scalar.
    "gemma3": _Family(
        "gemma3_text", "Gemma3ForCausalLM", adds_bos=True, rope_theta=1000000.0,
        config={"head_dim": 32, "sliding_window": 8, "layer_types": ["sliding_attention", "full_attention"],
                "query_pre_attn_scalar": 24, "hidden_activation": "gelu_pytorch_tanh",
                # Per layer type, the form every transformers 5 release takes (older 5.x reject the flat one).
                "rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
                                    "sliding_attention": {"rope_type": "default", "rope_theta": 20000.0}}},
    ),
    # Gemma 2: sliding and global layers alternating (window 8), no q/k norms, and logits soft-capped
    # hard (caps of 2 and 3: random weights' logits reach past them, so an engine that skips a cap fails).
    "gemma2": _Family(
        "gemma2", "Gemma2ForCausalLM", adds_bos=True, rope_theta=10000.0,
        config={"head_dim": 32, "sliding_window": 8, "layer_types": ["sliding_attention", "full_attention"],
                "query_pre_attn_scalar": 24, "hidden_activation": "gelu_pytorch_tanh",
                "attn_logit_softcapping": 2.0, "final_logit_softcapping": 3.0},
    ),
    # Gemma 4 E2B/E4B-like: per-layer embeddings, the last two layers reading the K/V of the last earlier
    # layer of their kind (with MLPs twice as wide).
    "gemma4": _Family(
        "gemma4_text", "Gemma4ForCausalLM", adds_bos=True, rope_theta=10000.0,
        config={**_GEMMA4_ATTENTION, "num_hidden_layers": 5,
                "layer_types": ["sliding_attention", "sliding_attention", "full_attention", "sliding_attention",
                                "full_attention"],
                "num_kv_shared_layers": 2, "use_double_wide_mlp": True, "hidden_size_per_layer_input": 8},
    ),
    # Gemma 4 26B-A4B-like: routed GeGLU experts beside every dense MLP; global layers with one KV head whose
    # values are its keys (attention_k_eq_v).
    "gemma4_moe": _Family(
        "gemma4_text", "Gemma4ForCausalLM", adds_bos=True, rope_theta=10000.0,
        config={**_GEMMA4_ATTENTION, "num_hidden_layers": 3,
                "layer_types": ["sliding_attention", "full_attention", "full_attention"],
                "attention_k_eq_v": True, "num_global_key_value_heads": 1, "hidden_size_per_layer_input": 0,
                "enable_moe_block": True, "num_experts": 8, "top_k_experts": 2, "moe_intermediate_size": 32},
    ),
    # GLM-4: q/k/v biases, half the head rotated in interleaved pairs, gate/up stored fused, norms
    # after attention and after the MLP.
    "glm4": _Family("glm4", "Glm4ForCausalLM", adds_bos=False, rope_theta=10000.0,
                    config={"partial_rotary_factor": 0.5, "attention_bias": True, "head_dim": 32}),
    # OLMo 2: post-norm layers, q and k normalized across all their heads.
    "olmo2": _Family("olmo2", "Olmo2ForCausalLM", adds_bos=False, rope_theta=500000.0),
    # StarCoder2: LayerNorms and biases everywhere, an ungated GELU MLP, a sliding window on every layer.
    "starcoder2": _Family("starcoder2", "Starcoder2ForCausalLM", adds_bos=False, rope_theta=100000.0,
                          config={"sliding_window": 8, "use_bias": True, "hidden_act": "gelu_pytorch_tanh"}),
    # SmolLM3: the second of its two layers without rotary (NoPE), as every fourth of the real ones.
    "smollm3": _Family("smollm3", "SmolLM3ForCausalLM", adds_bos=False, rope_theta=5000000.0,
                       config={"no_rope_layers": [1, 0], "use_sliding_window": False}),
    # Cohere Command-R: parallel attention and MLP on one bias-free LayerNorm, interleaved rotary,
    # logits scaled (0.5 here, 0.0625 in Command-R).
    "cohere": _Family("cohere", "CohereForCausalLM", adds_bos=True, rope_theta=10000.0, config={"logit_scale": 0.5}),
    # Command R7B / Command A: a sliding layer with rotary, then a global one without (window 8).
    "cohere2": _Family("cohere2", "Cohere2ForCausalLM", adds_bos=True, rope_theta=10000.0,
                       config={"logit_scale": 0.5, "sliding_window": 8,
                               "layer_types": ["sliding_attention", "full_attention"]}),
    # Ministral and OLMo 3: sliding and global layers as `layer_types` lists them (window 8).
    "ministral": _Family("ministral", "MinistralForCausalLM", adds_bos=True, rope_theta=100000000.0,
                         config={"layer_types": ["sliding_attention", "full_attention"], "sliding_window": 8,
                                 "head_dim": 16}),
    "olmo3": _Family("olmo3", "Olmo3ForCausalLM", adds_bos=False, rope_theta=500000.0,
                     config={"layer_types": ["sliding_attention", "full_attention"], "sliding_window": 8}),
    # EXAONE 4.0: OLMo 2's post-norm layers, per-head q/k norms, the global layer without rotary.
    "exaone4": _Family("exaone4", "Exaone4ForCausalLM", adds_bos=False, rope_theta=1000000.0,
                       config={"sliding_window": 8, "sliding_window_pattern": 2, "head_dim": 16}),
    # Seed-OSS: q/k/v biases without an o_proj bias; ERNIE 4.5: interleaved rotary.
    "seed_oss": _Family("seed_oss", "SeedOssForCausalLM", adds_bos=False, rope_theta=10000000.0,
                        config={"attention_bias": True, "attention_out_bias": False, "head_dim": 16}),
    "ernie4_5": _Family("ernie4_5", "Ernie4_5ForCausalLM", adds_bos=False, rope_theta=500000.0,
                        config={"use_bias": False, "head_dim": 16}),
    # GLM (glm-4-9b-chat-hf): GLM-4's layers without the two post-norms.
    "glm": _Family("glm", "GlmForCausalLM", adds_bos=False, rope_theta=10000.0,
                   config={"partial_rotary_factor": 0.5, "attention_bias": True, "head_dim": 32}),
    # Mixture of experts, each with what distinguishes its family: Mixtral renormalizes the top-k
    # weights and sizes experts by intermediate_size; Qwen2-MoE adds a gated shared expert and
    # does not renormalize; Qwen3-MoE renormalizes, and here keeps layer 0 dense (mlp_only_layers).
    "mixtral": _Family(
        "mixtral", "MixtralForCausalLM", adds_bos=True, rope_theta=1000000.0,
        config={"sliding_window": None, "num_local_experts": 4, "num_experts_per_tok": 2, "intermediate_size": 64},
    ),
    "qwen2_moe": _Family(
        "qwen2_moe", "Qwen2MoeForCausalLM", adds_bos=False, rope_theta=1000000.0,
        config={"num_experts": 6, "num_experts_per_tok": 2, "moe_intermediate_size": 32,
                "shared_expert_intermediate_size": 96, "norm_topk_prob": False},
    ),
    "granitemoe": _Family(
        "granitemoe", "GraniteMoeForCausalLM", adds_bos=False, rope_theta=10000.0,
        config={"num_local_experts": 4, "num_experts_per_tok": 2, "intermediate_size": 32,
                "embedding_multiplier": 6.0, "residual_multiplier": 0.4, "attention_multiplier": 0.1,
                "logits_scaling": 2.5},
    ),
    "olmoe": _Family(
        "olmoe", "OlmoeForCausalLM", adds_bos=False, rope_theta=10000.0,
        config={"num_experts": 8, "num_experts_per_tok": 2, "intermediate_size": 32, "norm_topk_prob": False},
    ),
    "qwen3_moe": _Family(
        "qwen3_moe", "Qwen3MoeForCausalLM", adds_bos=False, rope_theta=1000000.0,
        config={"head_dim": 32, "num_experts": 8, "num_experts_per_tok": 3, "moe_intermediate_size": 48,
                "norm_topk_prob": True, "mlp_only_layers": [0]},
    ),
    # GLM-4.5: q/k/v biases (none on o_proj), per-head q/k norms, half of each head rotated, V3's
    # router (here with 2 groups of which 1 is searched) and a shared expert after a dense layer.
    "glm4_moe": _Family(
        "glm4_moe", "Glm4MoeForCausalLM", adds_bos=False, rope_theta=1000000.0,
        config={"partial_rotary_factor": 0.5, "attention_bias": True, "use_qk_norm": True, "head_dim": 32,
                "n_routed_experts": 8, "num_experts_per_tok": 2, "n_shared_experts": 1, "moe_intermediate_size": 32,
                "first_k_dense_replace": 1, "n_group": 2, "topk_group": 1, "routed_scaling_factor": 1.8,
                "norm_topk_prob": True},
    ),
    # DeepSeek: latent attention (a 32-wide latent, 16+8-wide query/key heads, 16-wide values) and
    # fine-grained experts after a dense first layer. V2 as V2-Lite (queries without a bottleneck,
    # softmax router) but with V2's group-limited routing; V3 with a query bottleneck, the sigmoid
    # router whose correction bias steers the choice, scaled weights, and YaRN whose mscale and
    # mscale_all_dim differ (rotary amplitude and softmax temperature both change).
    "deepseek_v2": _Family(
        "deepseek_v2", "DeepseekV2ForCausalLM", adds_bos=True, rope_theta=10000.0,
        config={"num_key_value_heads": 4, "q_lora_rank": None, "kv_lora_rank": 32, "qk_nope_head_dim": 16, "qk_rope_head_dim": 8,
                "v_head_dim": 16, "n_routed_experts": 8, "num_experts_per_tok": 2, "n_shared_experts": 2,
                "moe_intermediate_size": 32, "first_k_dense_replace": 1, "topk_method": "group_limited_greedy",
                "n_group": 4, "topk_group": 2, "routed_scaling_factor": 1.5, "norm_topk_prob": False},
    ),
    "deepseek_v3": _Family(
        "deepseek_v3", "DeepseekV3ForCausalLM", adds_bos=True, rope_theta=10000.0,
        rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64,
                      "mscale": 0.707, "mscale_all_dim": 1.0, "beta_fast": 32, "beta_slow": 1},
        config={"num_key_value_heads": 4, "q_lora_rank": 24, "kv_lora_rank": 32, "qk_nope_head_dim": 16, "qk_rope_head_dim": 8,
                "v_head_dim": 16, "n_routed_experts": 8, "num_experts_per_tok": 2, "n_shared_experts": 1,
                "moe_intermediate_size": 32, "first_k_dense_replace": 1, "n_group": 4, "topk_group": 2,
                "routed_scaling_factor": 2.5, "norm_topk_prob": True, "num_nextn_predict_layers": 0},
    ),
    # GLM-4.7-Flash: DeepSeek-V3's layers (latent attention, interleaved rotary, V3's router in 2 groups, a
    # shared expert), the dense MLPs listed in mlp_layer_types.
    "glm4_moe_lite": _Family(
        "glm4_moe_lite", "Glm4MoeLiteForCausalLM", adds_bos=False, rope_theta=10000.0,
        config={"num_key_value_heads": 4, "q_lora_rank": 24, "kv_lora_rank": 32, "qk_nope_head_dim": 16,
                "qk_rope_head_dim": 8, "v_head_dim": 16, "n_routed_experts": 8, "num_experts_per_tok": 2,
                "n_shared_experts": 1, "moe_intermediate_size": 32, "n_group": 2, "topk_group": 1,
                "routed_scaling_factor": 1.8, "mlp_layer_types": ["dense", "sparse"]},
    ),
    # ERNIE 4.5 MoE: interleaved rotary; 8 experts (2 a token) from the second layer, routed by softmax scores
    # that a correction bias steers, beside a shared expert.
    "ernie4_5_moe": _Family(
        "ernie4_5_moe", "Ernie4_5_MoeForCausalLM", adds_bos=True, rope_theta=500000.0,
        config={"num_hidden_layers": 3, "moe_num_experts": 8, "moe_k": 2, "moe_intermediate_size": 32,
                "moe_num_shared_experts": 1, "moe_layer_start_index": 1},
    ),
    # dots.llm1: Qwen3's attention, a dense first layer, then 8 experts in 2 groups behind V3's router and a
    # shared expert.
    "dots1": _Family(
        "dots1", "Dots1ForCausalLM", adds_bos=False, rope_theta=10000.0,
        config={"head_dim": 32, "n_routed_experts": 8, "num_experts_per_tok": 2, "n_shared_experts": 1,
                "moe_intermediate_size": 32, "first_k_dense_replace": 1, "n_group": 2, "topk_group": 1,
                "routed_scaling_factor": 2.5, "norm_topk_prob": True},
    ),
    # Hunyuan: per-head q/k norms after the rotation, NTK-alpha rotary; the MoE one routes every MLP (8 experts,
    # 2 a token) beside a shared MLP.
    "hunyuan_v1_dense": _Family(
        "hunyuan_v1_dense", "HunYuanDenseV1ForCausalLM", adds_bos=True, rope_theta=10000.0,
        rope_scaling={"rope_type": "dynamic", "alpha": 1000.0, "factor": 1.0}, config={"head_dim": 32}),
    "hunyuan_v1_moe": _Family(
        "hunyuan_v1_moe", "HunYuanMoEV1ForCausalLM", adds_bos=True, rope_theta=10000.0,
        rope_scaling={"rope_type": "dynamic", "alpha": 1000.0, "factor": 1.0},
        config={"head_dim": 32, "num_experts": 8, "moe_topk": 2, "intermediate_size": 48}),
    # Apertus: per-head q/k norms, an ungated xIELU MLP (its learned parameters randomized), Llama 3 rotary.
    "apertus": _Family("apertus", "ApertusForCausalLM", adds_bos=True, rope_theta=12000000.0,
                       rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                     "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
                       config={"head_dim": 32}),
    # K-EXAONE: EXAONE 4's attention (sliding window 8 with rotary on layers 0-2, a NoPE global layer 3), a dense
    # first MLP, then 8 experts (2 a token) behind V3's router and a shared expert.
    "exaone_moe": _Family(
        "exaone_moe", "ExaoneMoeForCausalLM", adds_bos=False, rope_theta=10000.0,
        config={"num_hidden_layers": 4, "head_dim": 32, "sliding_window": 8, "sliding_window_pattern": 4,
                "num_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 32, "num_shared_experts": 1,
                "first_k_dense_replace": 1, "routed_scaling_factor": 2.5}),
    # MiMo-V2-Flash: a global layer, then sliding ones (window 8) with twice the KV heads and sinks; query/key
    # heads of 24, value heads of 16, a third of each rotated (each kind at its own base); values scaled; V3's
    # router over 8 experts in 2 groups after a dense first MLP.
    "mimo_v2_flash": _Family(
        "mimo_v2_flash", "MiMoV2FlashForCausalLM", adds_bos=False, rope_theta=10000.0,
        config={"num_hidden_layers": 3, "head_dim": 24, "v_head_dim": 16, "num_key_value_heads": 1,
                "sliding_window": 8, "layer_types": ["full_attention", "sliding_attention", "sliding_attention"],
                "mlp_layer_types": ["dense", "sparse", "sparse"], "n_routed_experts": 8, "num_experts_per_tok": 2,
                "moe_intermediate_size": 32, "n_group": 2, "topk_group": 1, "routed_scaling_factor": 1.5,
                "attention_value_scale": 0.7,
                "rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 500000.0,
                                                       "partial_rotary_factor": 0.334},
                                    "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0,
                                                          "partial_rotary_factor": 0.334}}},
    ),
    # GPT-OSS: attention sinks, sliding (window 8) and full layers alternating, q/k/v/o biases, YaRN
    # (not truncated), experts with biases and a clamped SwiGLU whose limit the fixture's activations
    # reach (1 where the real models say 7).
    "gpt_oss": _Family(
        "gpt_oss", "GptOssForCausalLM", adds_bos=False, rope_theta=150000.0,
        rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64,
                      "beta_fast": 32.0, "beta_slow": 1.0, "truncate": False},
        config={"head_dim": 32, "num_local_experts": 8, "num_experts_per_tok": 2, "intermediate_size": 32,
                "sliding_window": 8, "attention_bias": True, "swiglu_limit": 1.0},
        harmony=True,
    ),
    # Granite 4.0-H: Mamba-2 layers around an attention layer without rotary, Granite's multipliers,
    # routed experts beside a shared MLP; 8 heads in 2 groups, chunks of 8 tokens (so prompts span several).
    "granitemoehybrid": _Family(
        "granitemoehybrid", "GraniteMoeHybridForCausalLM", adds_bos=False, rope_theta=10000.0,
        config={"num_hidden_layers": 3, "layer_types": ["mamba", "attention", "mamba"], "mamba_n_heads": 8,
                "mamba_n_groups": 2, "mamba_d_state": 16, "mamba_d_head": "auto", "mamba_chunk_size": 8,
                "num_local_experts": 4, "num_experts_per_tok": 2, "intermediate_size": 32,
                "shared_intermediate_size": 48, "position_embedding_type": None, "embedding_multiplier": 6.0,
                "residual_multiplier": 0.4, "attention_multiplier": 0.1, "logits_scaling": 2.5},
    ),
    # Bamba: Mamba-2 in every layer but attn_layer_indices (rotary over half of each head there). Not in
    # FIXTURE_ARCHS: transformers' cached decoding of Bamba departs from its own full forward pass, so
    # tests compare with the latter (tests/engine/test_hybrid.py).
    "bamba": _Family(
        "bamba", "BambaForCausalLM", adds_bos=True, rope_theta=10000.0,
        config={"num_hidden_layers": 3, "attn_layer_indices": [1], "mamba_n_heads": 8, "mamba_n_groups": 2,
                "mamba_d_state": 16, "mamba_d_head": "auto", "mamba_chunk_size": 8, "partial_rotary_factor": 0.5},
    ),
    # Nemotron-H: one mixer per block (Mamba-2, attention without rotary, a squared-ReLU MLP), as its
    # hybrid_override_pattern lays them out; 8 Mamba heads in 2 groups, chunks of 8 tokens.
    "nemotron_h": _Family(
        "nemotron_h", "NemotronHForCausalLM", adds_bos=True, rope_theta=10000.0,
        config={"layers_block_type": ["linear_attention", "mlp", "full_attention", "mlp", "linear_attention", "mlp"],
                "mamba_num_heads": 8, "n_groups": 2, "ssm_state_size": 16, "mamba_head_dim": 16, "chunk_size": 8,
                "head_dim": 16, "intermediate_size": 96, "mlp_bias": True},
    ),
    # Nemotron 3: the same blocks with mixtures of 8 ungated experts (2 groups, 1 searched) beside a shared one.
    "nemotron_h_moe": _Family(
        "nemotron_h", "NemotronHForCausalLM", adds_bos=True, rope_theta=10000.0,
        config={"layers_block_type": ["linear_attention", "moe", "full_attention", "moe", "linear_attention", "moe"],
                "mamba_num_heads": 8, "n_groups": 2, "ssm_state_size": 16, "mamba_head_dim": 16, "chunk_size": 8,
                "head_dim": 16, "n_routed_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 32,
                "moe_shared_expert_intermediate_size": 48, "n_group": 2, "topk_group": 1,
                "routed_scaling_factor": 1.5},
    ),
    # Falcon-H1: Mamba-2 (its gated norm normalizing before the gate) beside attention in every layer, biases
    # on the projections, and muP multipliers that all differ from 1.
    "falcon_h1": _Family(
        "falcon_h1", "FalconH1ForCausalLM", adds_bos=True, rope_theta=10000.0,
        config={"mamba_n_heads": 8, "mamba_d_ssm": 128, "mamba_n_groups": 2, "mamba_d_state": 16, "mamba_chunk_size": 8,
                "mamba_rms_norm": True, "mamba_norm_before_gate": True, "projectors_bias": True,
                "mamba_proj_bias": True, "attention_bias": True, "embedding_multiplier": 2.0,
                "lm_head_multiplier": 0.6, "mlp_multipliers": [1.5, 0.7], "key_multiplier": 0.8,
                "attention_in_multiplier": 1.2, "attention_out_multiplier": 0.9,
                "ssm_multipliers": [0.5, 1.2, 0.9, 1.1, 0.8], "ssm_in_multiplier": 1.3, "ssm_out_multiplier": 0.7},
    ),
    # LFM2: gated short convolutions (3 taps) around an attention layer, the MLP's width auto-adjusted
    # (2/3 of 192 times 1.25, rounded up to a multiple of 32: 160).
    "lfm2": _Family(
        "lfm2", "Lfm2ForCausalLM", adds_bos=True, rope_theta=1000000.0,
        config={"num_hidden_layers": 3, "layer_types": ["conv", "full_attention", "conv"], "conv_L_cache": 3,
                "conv_bias": True, "intermediate_size": 192, "block_multiple_of": 32, "block_ffn_dim_multiplier": 1.25,
                "norm_eps": 1e-5},
    ),
    # LFM2-MoE: the same layers, a dense first one, then 8 experts (2 a token) routed by sigmoid scores and a bias.
    "lfm2_moe": _Family(
        "lfm2_moe", "Lfm2MoeForCausalLM", adds_bos=True, rope_theta=1000000.0,
        config={"num_hidden_layers": 3, "layer_types": ["conv", "full_attention", "conv"], "conv_L_cache": 3,
                "intermediate_size": 96, "moe_intermediate_size": 32, "num_dense_layers": 1, "num_experts": 8,
                "num_experts_per_tok": 2, "use_expert_bias": True, "routed_scaling_factor": 1.5, "norm_eps": 1e-5},
    ),
    # Mamba-2: Mamba-2 blocks only (no attention, no KV cache); 8 heads of 16 in 2 groups, chunks of 8 tokens.
    "mamba2": _Family(
        "mamba2", "Mamba2ForCausalLM", adds_bos=True, rope_theta=10000.0,
        config={"num_heads": 8, "head_dim": 16, "n_groups": 2, "state_size": 16, "chunk_size": 8, "expand": 2,
                "max_position_embeddings": None},
    ),
    # Qwen3.5: three Gated DeltaNet layers (2 key heads, 4 value heads) to one gated full-attention layer with
    # rotary over a quarter of each head; the MoE one routes every MLP beside a gated shared expert.
    "qwen3_5": _Family("qwen3_5_text", "Qwen3_5ForCausalLM", adds_bos=False, rope_theta=10000000.0,
                       config=_QWEN3_5_LAYERS),
    "qwen3_5_moe": _Family("qwen3_5_moe_text", "Qwen3_5MoeForCausalLM", adds_bos=False, rope_theta=10000000.0,
                           config={**_QWEN3_5_LAYERS, **_QWEN3_5_EXPERTS}),
    # Qwen3-Next: the same with the linear attention's projections grouped by key head, a dense first layer.
    "qwen3_next": _Family("qwen3_next", "Qwen3NextForCausalLM", adds_bos=False, rope_theta=10000000.0,
                          config={**_QWEN3_5_LAYERS, **_QWEN3_5_EXPERTS, "mlp_only_layers": [0],
                                  "intermediate_size": 96}),
    # MiniMax-M2: whole-projection q/k norms, half of each head rotated (hub configs: rotary_dim), 8 experts
    # (2 a token) routed by sigmoid scores and a correction bias.
    "minimax_m2": _Family("minimax_m2", "MiniMaxM2ForCausalLM", adds_bos=False, rope_theta=5000000.0,
                          config={"head_dim": 32, "num_local_experts": 8, "num_experts_per_tok": 2,
                                  "intermediate_size": 32,
                                  "rope_parameters": {"rope_type": "default", "rope_theta": 5000000.0,
                                                      "partial_rotary_factor": 0.5}}),
    # Kimi Linear: Kimi Delta Attention layers (4 heads of 16, a decay per key channel) around a latent-attention
    # layer without rotary, a dense first MLP then 8 experts (2 a token) behind V3's router and a shared expert.
    "kimi_linear": _Family(
        "kimi_linear", "KimiLinearForCausalLM", adds_bos=False, rope_theta=10000.0,
        config={"num_hidden_layers": 4, "layer_types": ["linear_attention", "linear_attention", "full_attention",
                                                        "linear_attention"],
                "mlp_layer_types": ["dense", "sparse", "sparse", "sparse"], "linear_num_heads": 4, "linear_head_dim": 16,
                "num_key_value_heads": 4, "kv_lora_rank": 32, "q_lora_rank": None, "qk_nope_head_dim": 16,
                "qk_rope_head_dim": 8, "v_head_dim": 16, "num_local_experts": 8, "num_experts_per_tok": 2,
                "moe_intermediate_size": 32, "n_shared_experts": 1, "routed_scaling_factor": 2.5}),
    # OLMo Hybrid: Gated DeltaNet layers (beta up to 2) around an OLMo 3 attention layer without rotary
    # (NoPE, as released: rope_theta null).
    "olmo_hybrid": _Family("olmo_hybrid", "OlmoHybridForCausalLM", adds_bos=False, rope_theta=10000.0,
                           config={"num_hidden_layers": 4, "linear_num_key_heads": 2, "linear_num_value_heads": 4,
                                   "linear_key_head_dim": 16, "linear_value_head_dim": 24,
                                   "layer_types": ["linear_attention", "linear_attention", "full_attention",
                                                   "linear_attention"],
                                   "rope_parameters": {"rope_type": "default", "rope_theta": None}}),
}

_BASE_CONFIG: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 2048,
    "vocab_size": MODEL_VOCAB_SIZE,
    # Large enough that logits spread over several units, so greedy decoding has
    # clear winners and reduced-precision engines agree with the fp32 reference.
    "initializer_range": 0.15,
    "rms_norm_eps": 1e-6,
    "bos_token_id": BOS_TOKEN_ID,
    "eos_token_id": EOS_TOKEN_ID,
    "pad_token_id": PAD_TOKEN_ID,
}


def _family(arch: str) -> _Family:
    try:
        return _FAMILIES[arch]
    except KeyError:
        raise ValueError(f"unknown fixture arch {arch!r}; choose one of {FIXTURE_ARCHS}") from None


def _torch_dtype(dtype: str) -> torch.dtype:
    if dtype not in FIXTURE_DTYPES:
        raise ValueError(f"unsupported dtype {dtype!r}; choose one of {FIXTURE_DTYPES}")
    return getattr(torch, dtype)


@functools.cache
def _trained_tokenizer_json() -> str:
    """Train the byte-level BPE once per process; callers get fresh copies from the JSON."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TOKENIZER_VOCAB_SIZE,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_CORPUS, trainer=trainer)
    return tokenizer.to_str(pretty=True)


def build_tokenizer(arch: str = "llama") -> Tokenizer:
    """The fixture tokenizer of `arch`, as `tokenizer.json` stores it.

    Llama-like ones prepend BOS through the post-processor, as Llama 3's does.
    Qwen-like ones use exactly the pipeline transformers' Qwen2Tokenizer rebuilds
    on load (NFC, Qwen's split pattern, no BOS): anything else would make
    AutoTokenizer encode differently from tokenizer.json.
    """
    tokenizer = Tokenizer.from_str(_trained_tokenizer_json())
    if _family(arch).adds_bos:
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{BOS_TOKEN} $A:0",
            pair=f"{BOS_TOKEN} $A:0 {BOS_TOKEN}:1 $B:1",
            special_tokens=[(BOS_TOKEN, BOS_TOKEN_ID)],
        )
    else:
        tokenizer.normalizer = normalizers.NFC()
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(_QWEN_SPLIT_PATTERN), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
        tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    return tokenizer


def tiny_config(arch: str = "llama", *, tie_word_embeddings: bool = False, **overrides: Any) -> PretrainedConfig:
    """The transformers config of a fixture; `overrides` replace any default (e.g. num_hidden_layers=4)."""
    family = _family(arch)
    rope = family.config.get("rope_parameters") or {"rope_type": "default", **(family.rope_scaling or {}),
                                                    "rope_theta": family.rope_theta}
    kwargs = {
        **_BASE_CONFIG,
        **family.config,
        "rope_parameters": rope,
        "architectures": [family.architecture],
        "tie_word_embeddings": tie_word_embeddings,
        **overrides,
    }
    if kwargs["vocab_size"] < TOKENIZER_VOCAB_SIZE:
        raise ValueError(f"vocab_size must be at least the tokenizer's {TOKENIZER_VOCAB_SIZE}")
    return AutoConfig.for_model(family.model_type, **kwargs)


def build_tiny_model(
    arch: str = "llama",
    *,
    dtype: str = "float32",
    tie_word_embeddings: bool = False,
    seed: int = 0,
    **config_overrides: Any,
) -> PreTrainedModel:
    """The in-memory model that `make_tiny_model` saves, for comparing against what a loader reads back."""
    config = tiny_config(arch, tie_word_embeddings=tie_word_embeddings, **config_overrides)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        # transformers initialises norms to ones and biases to zeros, which would let
        # an engine that forgets to apply them pass; give them random values too.
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.normal_(0.0, config.initializer_range)
            elif name.endswith(".sinks"):  # GPT-OSS: sinks that take a real share of each softmax
                param.uniform_(-1.0, 2.0)
            elif "norm" in name:
                param.uniform_(0.5, 1.5)
            elif name.endswith((".A_log", ".D")):  # recurrent layers' per-head decay (and skip): distinct per head
                param.uniform_(-0.5, 1.5)
            elif name.endswith(("router.scale", ".per_expert_scale")):  # Gemma 4's router scales, ones at init
                param.uniform_(0.5, 1.5)
            elif name.endswith((".act_fn.alpha_p", ".act_fn.alpha_n")):  # Apertus's xIELU, alike in every layer at init
                param.uniform_(-0.5, 1.0)
        for name, buffer in model.named_buffers():
            if name.endswith(("e_score_correction_bias", "expert_bias")):  # routers' biases, zero at init
                buffer.uniform_(-0.3, 0.3)
            elif name.endswith(".layer_scalar"):  # Gemma 4's per-layer output scale, one at init
                buffer.uniform_(0.5, 1.5)
        # Rows past the tokenizer are padding: trained models never pick them, and a
        # zero row keeps their logit at 0, well below the random winners.
        model.get_input_embeddings().weight[TOKENIZER_VOCAB_SIZE:] = 0.0
        model.get_output_embeddings().weight[TOKENIZER_VOCAB_SIZE:] = 0.0
        model.get_output_embeddings().weight[TOKENIZER_VOCAB_SIZE:] = 0.0
        # Cast parameters only: rotary buffers stay float32, as from_pretrained builds them.
        for param in model.parameters():
            param.data = param.data.to(_torch_dtype(dtype))
    model.config.dtype = dtype
    return model.eval()


def _hub_style_config(config: dict[str, Any], dtype: str) -> dict[str, Any]:
    """Rewrite transformers 5's `rope_parameters` into the `rope_theta`/`rope_scaling` keys hub checkpoints have."""
    config = dict(config)
    if config["model_type"].startswith(_TRANSFORMERS5_FAMILIES):
        return _transformers5_hub_config(config, dtype)
    rope = dict(config.pop("rope_parameters"))
    if "sliding_attention" in rope:  # Gemma 3's local layers: hub configs name only their base
        config["rope_local_base_freq"] = rope.pop("sliding_attention")["rope_theta"]
        rope = rope.pop("full_attention")
    config["rope_theta"] = rope.pop("rope_theta")
    if "partial_rotary_factor" in rope:  # GLM's and Phi's, a top-level key in hub configs
        config["partial_rotary_factor"] = rope.pop("partial_rotary_factor")
    config["rope_scaling"] = None if rope.get("rope_type", "default") == "default" else rope
    if config["model_type"] == "minimax_m2":  # its hub configs give the rotated width, not the fraction
        config["rotary_dim"] = int(config.pop("partial_rotary_factor") * config["head_dim"])
    if config["model_type"].startswith("qwen") and "num_local_experts" in config:
        # transformers 5 writes Mixtral's name for Qwen3-MoE's expert count; hub checkpoints say num_experts.
        config["num_experts"] = config.pop("num_local_experts")
    # Older checkpoints say torch_dtype, newer ones dtype; loaders read either.
    config["torch_dtype"] = config["dtype"] = dtype
    return config


# Families released with transformers 5, whose hub configs keep its `rope_parameters`.
_TRANSFORMERS5_FAMILIES = ("gemma4", "olmo_hybrid", "mimo_v2_flash")


def _transformers5_hub_config(config: dict[str, Any], dtype: str) -> dict[str, Any]:
    """The config as such a hub checkpoint writes it; Gemma 4's global layers' shape as `global_head_dim`
    and `num_global_key_value_heads` (transformers derives its `per_layer_config` from them)."""
    if "per_layer_config" in config:
        full = next(iter(config.pop("per_layer_config").values()), {})
        config["global_head_dim"] = full.get("head_dim", config["head_dim"])
        if "num_key_value_heads" in full:
            config["num_global_key_value_heads"] = full["num_key_value_heads"]
    config["torch_dtype"] = config["dtype"] = dtype
    return config


def _split_conv_as_hub(out_dir: pathlib.Path, config: PretrainedConfig) -> None:
    """OLMo Hybrid's q_conv1d, k_conv1d and v_conv1d as its hub checkpoints hold them, q's and k's channels
    and v's: transformers saves its fused convolution cut into three near-equal thirds (which it concatenates
    back as it loads, so either layout reads the same there)."""
    key = config.linear_num_key_heads * config.linear_key_head_dim
    sizes = [key, key, config.linear_num_value_heads * config.linear_value_head_dim]
    for path in sorted(out_dir.glob("*.safetensors")):
        tensors = load_file(str(path))
        for name in [n for n in tensors if n.endswith(".linear_attn.q_conv1d.weight")]:
            stem = name.removesuffix("q_conv1d.weight")
            fused = torch.cat([tensors[f"{stem}{p}_conv1d.weight"] for p in "qkv"])
            tensors.update({f"{stem}{p}_conv1d.weight": part.contiguous() for p, part in zip("qkv", fused.split(sizes))})
        save_file(tensors, str(path), metadata={"format": "pt"})


def _write_json(path: pathlib.Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def _write_tokenizer(out_dir: pathlib.Path, arch: str, model_max_length: int, extra_special: tuple[str, ...] = (),
                     image_placeholder: str = "<image>") -> None:
    """tokenizer.json and its config; `extra_special` tokens (image placeholders; harmony's markers for a
    harmony family, with its template) take the ids after the trained vocabulary, in order; the chat
    template writes `image_placeholder` for an image part."""
    harmony = _family(arch).harmony
    if harmony:
        extra_special = HARMONY_TOKENS
    tokenizer = build_tokenizer(arch)
    tokenizer.add_special_tokens(list(extra_special))
    tokenizer.save(str(out_dir / "tokenizer.json"), pretty=True)
    chat_template = _HARMONY_TEMPLATE if harmony else ("{{- bos_token }}" if _family(arch).adds_bos else "") + (
        _CHAT_TEMPLATE.replace("'<image>\\n'", f"'{image_placeholder}\\n'"))
    special = {"bos_token": BOS_TOKEN, "eos_token": EOS_TOKEN, "pad_token": PAD_TOKEN}
    added_tokens = {
        str(token_id): {
            "content": content,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for token_id, content in [*enumerate(SPECIAL_TOKENS),
                                  *((TOKENIZER_VOCAB_SIZE + i, token) for i, token in enumerate(extra_special))]
    }
    _write_json(
        out_dir / "tokenizer_config.json",
        {
            **special,
            # What hub checkpoints of each family name; transformers picks its loader by it.
            "tokenizer_class": "PreTrainedTokenizerFast" if _family(arch).adds_bos else "Qwen2Tokenizer",
            "unk_token": None,
            "added_tokens_decoder": added_tokens,
            "additional_special_tokens": [IM_START, IM_END],
            "chat_template": chat_template,
            "clean_up_tokenization_spaces": False,
            "model_max_length": model_max_length,
        },
    )
    _write_json(out_dir / "special_tokens_map.json", {**special, "additional_special_tokens": [IM_START, IM_END]})


def make_tiny_model(
    out_dir: str | pathlib.Path,
    arch: str = "llama",
    *,
    dtype: str = "float32",
    sharded: bool = False,
    tie_word_embeddings: bool = False,
    seed: int = 0,
    **config_overrides: Any,
) -> pathlib.Path:
    """Write a random-weight checkpoint of `arch` with its tokenizer to `out_dir` and return the directory.

    `sharded=True` splits the weights into at least two safetensors files plus
    `model.safetensors.index.json`, as large checkpoints are stored.
    """
    out_dir = pathlib.Path(out_dir)
    model = build_tiny_model(
        arch, dtype=dtype, tie_word_embeddings=tie_word_embeddings, seed=seed, **config_overrides
    )
    total_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    max_shard_size = total_bytes // 3 if sharded else 2 * total_bytes
    bars_were_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(out_dir, max_shard_size=max_shard_size)
    finally:
        if bars_were_enabled:
            hf_logging.enable_progress_bar()

    if arch == "olmo_hybrid":
        _split_conv_as_hub(out_dir, model.config)
    config_path = out_dir / "config.json"
    _write_json(config_path, _hub_style_config(json.loads(config_path.read_text()), dtype))
    _write_json(
        out_dir / "generation_config.json",
        {"bos_token_id": BOS_TOKEN_ID, "eos_token_id": HARMONY_STOP_IDS if _family(arch).harmony else EOS_TOKEN_ID,
         "pad_token_id": PAD_TOKEN_ID},
    )
    _write_tokenizer(out_dir, arch, model.config.max_position_embeddings)
    return out_dir


def _save_image_model(model: PreTrainedModel, out_dir: pathlib.Path,
                      layout: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None) -> None:
    """Saves a multimodal fixture with its generation config: the rows past the tokenizer zeroed (padding,
    and the image tokens, whose embeddings the image features replace). `layout` rewrites the tensors
    the way a hub checkpoint stores them where save_pretrained would not."""
    with torch.no_grad():
        model.get_input_embeddings().weight[TOKENIZER_VOCAB_SIZE:] = 0.0
        model.get_output_embeddings().weight[TOKENIZER_VOCAB_SIZE:] = 0.0
    bars_were_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        if layout is None:
            model.save_pretrained(out_dir)
        else:
            model.config.save_pretrained(out_dir)
            save_file(layout(dict(model.state_dict())), str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    finally:
        if bars_were_enabled:
            hf_logging.enable_progress_bar()
    _write_json(out_dir / "generation_config.json",
                {"bos_token_id": BOS_TOKEN_ID, "eos_token_id": EOS_TOKEN_ID, "pad_token_id": PAD_TOKEN_ID})


# Gemma 3's image tokens, with the ids after the trained vocabulary in this order: the placeholder a
# prompt writes (begin of image), the end of image, and the soft token each feature takes.
GEMMA3_IMAGE_TOKENS = ("<start_of_image>", "<end_of_image>", "<image_soft_token>")


def make_tiny_gemma3_multimodal(out_dir: str | pathlib.Path, seed: int = 0) -> pathlib.Path:
    """A random-weight Gemma3ForConditionalGeneration checkpoint (as Gemma 3 4B and up ship): the
    gemma3 fixture's language model beside a two-layer SigLIP vision tower over 56-pixel images in
    patches of 7 (an 8 x 8 grid), pooled 2 x 2 to 16 features per image, its projector and image processor."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, SiglipVisionConfig

    out_dir = pathlib.Path(out_dir)
    # Untied (the hub's are tied): with a tied head this random model just repeats its input token.
    text = tiny_config("gemma3")
    vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                image_size=56, patch_size=7, vision_use_head=False)
    config = Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=16,
                          boi_token_index=TOKENIZER_VOCAB_SIZE, eoi_token_index=TOKENIZER_VOCAB_SIZE + 1,
                          image_token_index=TOKENIZER_VOCAB_SIZE + 2, tie_word_embeddings=False,
                          initializer_range=text.initializer_range)
    config.architectures = ["Gemma3ForConditionalGeneration"]
    torch.manual_seed(seed)
    model = Gemma3ForConditionalGeneration(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name and ("language_model" in name or "mm_soft_emb_norm" in name):
                param.uniform_(-0.5, 0.5)  # Gemma's norms scale by 1 + weight: offsets from one
            elif "vision_tower" in name or "projector" in name:
                param.normal_(0.0, 0.3)  # large enough that images move the logits
    _save_image_model(model, out_dir)
    _write_tokenizer(out_dir, "gemma3", text.max_position_embeddings, extra_special=GEMMA3_IMAGE_TOKENS,
                     image_placeholder=GEMMA3_IMAGE_TOKENS[0])
    # Gemma 3's preprocessing (resize to the tower's size, rescale, normalize to [-1, 1]), without pan and scan.
    _write_json(out_dir / "preprocessor_config.json", {
        "image_processor_type": "Gemma3ImageProcessor", "do_resize": True, "size": {"height": 56, "width": 56},
        "resample": 2, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "do_convert_rgb": True,
        "do_pan_and_scan": False})
    return out_dir


IMAGE_TOKEN = "<image>"
IMAGE_TOKEN_ID = TOKENIZER_VOCAB_SIZE  # the first id after the trained vocabulary


def make_tiny_llava(out_dir: str | pathlib.Path, seed: int = 0, *, text: dict[str, Any] | None = None,
                    vision: dict[str, Any] | None = None) -> pathlib.Path:
    """A random-weight LlavaForConditionalGeneration checkpoint (as llava-hf/llava-1.5-7b-hf ships): the
    llama fixture's language model, a two-layer CLIP tower over 28-pixel images in patches of 7 (16
    features per image, the CLS token dropped, the second-to-last layer's states), the projector, and
    the image processor's settings; `<image>` is the placeholder token. `text` and `vision` override
    the two configs (a benchmark's larger shapes)."""
    from transformers import CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration

    out_dir = pathlib.Path(out_dir)
    vision = CLIPVisionConfig(**{"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                                 "num_attention_heads": 2, "image_size": 28, "patch_size": 7, "projection_dim": 32,
                                 **(vision or {})})
    text = tiny_config("llama", **(text or {}))
    config = LlavaConfig(text_config=text, vision_config=vision, image_token_index=IMAGE_TOKEN_ID,
                         projector_hidden_act="gelu", vision_feature_layer=-2, vision_feature_select_strategy="default")
    config.architectures = ["LlavaForConditionalGeneration"]
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.normal_(0.0, text.initializer_range)
            elif "norm" in name:
                param.uniform_(0.5, 1.5)
            elif name.endswith((".A_log", ".D")):  # recurrent layers' per-head decay (and skip): distinct per head
                param.uniform_(-0.5, 1.5)
            elif name.endswith(("router.scale", ".per_expert_scale")):  # Gemma 4's router scales, ones at init
                param.uniform_(0.5, 1.5)
            elif name.endswith((".act_fn.alpha_p", ".act_fn.alpha_n")):  # Apertus's xIELU, alike in every layer at init
                param.uniform_(-0.5, 1.0)
            elif "vision_tower" in name or "projector" in name:
                param.normal_(0.0, 0.3)  # large enough that images move the logits
    _save_image_model(model, out_dir)
    _write_tokenizer(out_dir, "llama", text.max_position_embeddings, extra_special=(IMAGE_TOKEN,))
    # CLIP's preprocessing (resize the short side, center crop, rescale, normalize), at the tower's size.
    side = vision.image_size
    _write_json(out_dir / "preprocessor_config.json", {
        "image_processor_type": "CLIPImageProcessor", "do_resize": True, "size": {"shortest_edge": side},
        "resample": 3, "do_center_crop": True, "crop_size": {"height": side, "width": side}, "do_rescale": True,
        "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711], "do_convert_rgb": True})
    return out_dir


def read_weights(model_dir: str | pathlib.Path) -> dict[str, torch.Tensor]:
    """Every tensor of a model directory's safetensors files."""
    files = sorted(pathlib.Path(model_dir).glob("*.safetensors"))
    return {name: tensor for file in files for name, tensor in load_file(str(file)).items()}


def write_variant(model_dir: str | pathlib.Path, out_dir: str | pathlib.Path,
                  tensors: dict[str, torch.Tensor] | None = None, **config_changes: Any) -> pathlib.Path:
    """`out_dir`: the model directory's files (config, tokenizer, generation config) with `tensors` as its
    one safetensors file (None: its own weights) and `config_changes` applied to its config.json."""
    out_dir = pathlib.Path(out_dir)
    if tensors is None:
        shutil.copytree(model_dir, out_dir)
    else:
        shutil.copytree(model_dir, out_dir,
                        ignore=shutil.ignore_patterns("*.safetensors", "model.safetensors.index.json"))
        save_file(tensors, str(out_dir / "model.safetensors"))
    config_path = out_dir / "config.json"
    _write_json(config_path, {**json.loads(config_path.read_text()), **config_changes})
    return out_dir


# Projections an FP8 checkpoint stores in FP8 (embeddings, norms, routers and the LM head stay as they are),
# DeepSeek's latent-attention ones too (as DeepSeek-V3's own FP8 checkpoint).
_FP8_PROJECTION = re.compile(r"\.((q|k|v|o|gate|up|down|q_a|q_b|kv_b)_proj|kv_a_proj_with_mqa)\.weight$")


def make_fp8_model(
    model_dir: str | pathlib.Path, out_dir: str | pathlib.Path, block: tuple[int, int] = (128, 128), *,
    strategy: str = "block", method: str = "fp8", dequantized_dir: str | pathlib.Path | None = None,
) -> pathlib.Path:
    """Write the model in `model_dir` as an FP8 checkpoint with every projection in FP8, and, given
    `dequantized_dir`, as the plain checkpoint of exactly the weights it stores.

    method "fp8": `strategy` "block" is transformers' fine-grained format (dynamic activations,
    `weight_block_size`, `weight_scale_inv`), that of Qwen3-*-FP8; "tensor" is vLLM's original
    one (a scalar fp32 `weight_scale`, static activations with an `input_scale`).
    method "compressed-tensors": llm-compressor's float-quantized FP8 (`weight_scale` in the
    model's dtype: [N, 1] for "channel" with dynamic per-token activations (FP8_DYNAMIC), [1] for
    "tensor" with a static `input_scale`, one per block for "block")."""
    if (method, strategy) not in {("fp8", "block"), ("fp8", "tensor"), ("compressed-tensors", "block"),
                                  ("compressed-tensors", "channel"), ("compressed-tensors", "tensor")}:
        raise ValueError(f"no FP8 fixture for method {method!r} with strategy {strategy!r}")
    grid = {"block": block, "channel": (1, WHOLE), "tensor": (WHOLE, WHOLE)}[strategy]
    tensors, plain = read_weights(model_dir), {}
    quantized: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        if not _FP8_PROJECTION.search(name):
            quantized[name] = tensor
            continue
        weight, scale = quantize_fp8_blocks(tensor, grid)
        if method == "compressed-tensors":
            scale = scale.to(tensor.dtype)
        plain[name] = reference.fp8_block_dequantize(weight, scale, grid).to(tensor.dtype)
        if strategy == "tensor":  # [1] or a scalar; with a calibrated activation scale, unused by weight-only serving
            scale = scale.reshape(1 if method == "compressed-tensors" else ())
            quantized[name.removesuffix("weight") + "input_scale"] = torch.full_like(scale, 0.02)
        quantized[name] = weight
        quantized[name + ("_scale_inv" if method == "fp8" and strategy == "block" else "_scale")] = scale
    if dequantized_dir is not None:
        write_variant(model_dir, dequantized_dir, {**tensors, **plain})
    return write_variant(model_dir, out_dir, quantized, quantization_config=_fp8_config(method, strategy, block))


def _fp8_config(method: str, strategy: str, block: tuple[int, int]) -> dict[str, Any]:
    """The quantization_config of an FP8 fixture, as its tools write it."""
    if method == "fp8":
        static = {"activation_scheme": "static"} if strategy == "tensor" else {
            "activation_scheme": "dynamic", "weight_block_size": list(block)}
        return {"quant_method": "fp8", "fmt": "e4m3", **static}
    weights = {"num_bits": 8, "type": "float", "symmetric": True, "strategy": strategy, "dynamic": False,
               "block_structure": list(block) if strategy == "block" else None, "group_size": None}
    activations = {"num_bits": 8, "type": "float", "symmetric": True, "dynamic": strategy != "tensor",
                   "strategy": {"block": "group", "channel": "token", "tensor": "tensor"}[strategy],
                   "group_size": block[1] if strategy == "block" else None}
    return {"quant_method": "compressed-tensors", "format": "float-quantized", "quantization_status": "compressed",
            "ignore": ["lm_head"], "kv_cache_scheme": None,
            "config_groups": {"group_0": {"targets": ["Linear"], "weights": weights,
                                          "input_activations": activations, "output_activations": None,
                                          "format": "float-quantized"}}}


def add_kv_cache_scales(
    model_dir: str | pathlib.Path, out_dir: str | pathlib.Path, scales: list[tuple[float, float]], *,
    one_per_layer: bool = False,
) -> pathlib.Path:
    """The checkpoint in `model_dir` with per-layer FP8 KV-cache scales (k_scale, v_scale) of each
    layer: llm-compressor's `k_scale` and `v_scale` tensors, declared by a compressed-tensors
    `kv_cache_scheme` (beside its weight quantization, if any); or, `one_per_layer`, AutoFP8's
    `kv_scale` (the layer's k_scale, for both) in an FP8 checkpoint."""
    tensors = read_weights(model_dir)
    config = json.loads((pathlib.Path(model_dir) / "config.json").read_text())
    for layer, (k_scale, v_scale) in enumerate(scales):
        prefix = f"model.layers.{layer}.self_attn."
        if one_per_layer:
            tensors[prefix + "kv_scale"] = torch.tensor(k_scale)
        else:
            tensors[prefix + "k_scale"], tensors[prefix + "v_scale"] = torch.tensor(k_scale), torch.tensor(v_scale)
    quant = config.get("quantization_config") or {"quant_method": "compressed-tensors", "format": "dense",
                                                   "quantization_status": "compressed", "config_groups": {}}
    if not one_per_layer:
        quant = {**quant, "kv_cache_scheme": {"num_bits": 8, "type": "float", "strategy": "tensor", "dynamic": False,
                                              "symmetric": True}}
    return write_variant(model_dir, out_dir, tensors, quantization_config=quant)


def make_tiny_classifier(
    model_dir: str | pathlib.Path, out_dir: str | pathlib.Path, labels: tuple[str, ...] = ("relevant",), seed: int = 0,
) -> pathlib.Path:
    """The fixture model in `model_dir` as a `*ForSequenceClassification` checkpoint (a reward model,
    classifier or, with one label, a cross-encoder reranker): its LM head replaced by a random `score`
    head of one row per label, as transformers saves these models."""
    tensors = read_weights(model_dir)
    tensors.pop("lm_head.weight", None)
    hidden = tensors["model.embed_tokens.weight"].shape[1]
    generator = torch.Generator().manual_seed(seed)
    tensors["score.weight"] = (torch.randn(len(labels), hidden, generator=generator) * 2.0 / hidden**0.5).to(
        tensors["model.embed_tokens.weight"].dtype)
    config = json.loads((pathlib.Path(model_dir) / "config.json").read_text())
    return write_variant(
        model_dir, out_dir, tensors,
        architectures=[a.replace("ForCausalLM", "ForSequenceClassification") for a in config["architectures"]],
        id2label={str(i): name for i, name in enumerate(labels)}, label2id={name: i for i, name in enumerate(labels)},
        pad_token_id=PAD_TOKEN_ID, tie_word_embeddings=False)

def make_truncated_model(model_dir: str | pathlib.Path, out_dir: str | pathlib.Path, num_layers: int) -> pathlib.Path:
    """The model in `model_dir` with only its first `num_layers` decoder layers (its embeddings, final norm
    and head kept): a draft model for it that guesses its tokens cheaply, as layer-skip self-speculation does."""
    layer = re.compile(r"\.layers\.(\d+)\.")
    tensors = {name: t for name, t in read_weights(model_dir).items()
               if not (m := layer.search(name)) or int(m.group(1)) < num_layers}
    config = json.loads((pathlib.Path(model_dir) / "config.json").read_text())
    changes: dict[str, Any] = {"num_hidden_layers": num_layers}
    if config.get("layer_types"):
        changes["layer_types"] = config["layer_types"][:num_layers]
    return write_variant(model_dir, out_dir, tensors, **changes)

def make_cyclic_model(
    model_dir: str | pathlib.Path, out_dir: str | pathlib.Path, period: int = 5, strength: float = 4.0
) -> pathlib.Path:
    """The model in `model_dir` rewired into a near-bigram model whose greedy text cycles with `period`.

    The layers' output projections are scaled down so the residual stream is mostly the current
    token's embedding, and the LM head scores token perm(t) highest after t, perm rotating groups
    of `period` ordinary tokens: text that repeats itself, which is what speculative drafts from
    earlier text (n-gram lookup) predict. `strength` scales the head: lower makes sampling (and
    penalties) move off the cycle now and then. Still a real checkpoint that transformers runs too.
    """
    tensors = read_weights(model_dir)
    first = len(SPECIAL_TOKENS)
    count = (TOKENIZER_VOCAB_SIZE - first) // period * period
    successor = torch.arange(first, first + count).view(-1, period).roll(-1, dims=1).flatten()
    embed = tensors["model.embed_tokens.weight"]
    head = torch.zeros_like(embed)
    head[successor] = embed[first : first + count] * strength  # row perm(t) aligned with t's embedding
    tensors["lm_head.weight"] = head
    for name in tensors:
        if name.endswith(("o_proj.weight", "down_proj.weight")):
            tensors[name] = tensors[name] * 0.01
    return write_variant(model_dir, out_dir, tensors, tie_word_embeddings=False)


LORA_ATTENTION_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
LORA_TARGETS = (*LORA_ATTENTION_TARGETS, "gate_proj", "up_proj", "down_proj")


def make_tiny_lora(
    model_dir: str | pathlib.Path,
    out_dir: str | pathlib.Path,
    *,
    rank: int = 8,
    alpha: float = 16.0,
    targets: tuple[str, ...] = LORA_TARGETS,
    seed: int = 0,
) -> pathlib.Path:
    """Write a random LoRA adapter for the model in `model_dir`, in PEFT's format, to `out_dir`.

    Unlike a freshly initialized PEFT adapter (B = 0), both matrices are random,
    so the adapter visibly changes the model's outputs.
    """
    config = json.loads((pathlib.Path(model_dir) / "config.json").read_text())
    hidden, inter = config["hidden_size"], config["intermediate_size"]
    head_dim = config.get("head_dim") or hidden // config["num_attention_heads"]
    q_out = config["num_attention_heads"] * head_dim
    kv_out = config.get("num_key_value_heads", config["num_attention_heads"]) * head_dim
    shapes = {  # (in, out) of each projection
        "q_proj": (hidden, q_out), "k_proj": (hidden, kv_out), "v_proj": (hidden, kv_out), "o_proj": (q_out, hidden),
        "gate_proj": (hidden, inter), "up_proj": (hidden, inter), "down_proj": (inter, hidden),
    }
    groups = {name: "self_attn" if name in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp" for name in shapes}
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(config["num_hidden_layers"]):
        for name in targets:
            fan_in, fan_out = shapes[name]
            prefix = f"base_model.model.model.layers.{layer}.{groups[name]}.{name}"
            tensors[f"{prefix}.lora_A.weight"] = torch.randn(rank, fan_in, generator=generator) / fan_in**0.5
            tensors[f"{prefix}.lora_B.weight"] = torch.randn(fan_out, rank, generator=generator) / rank**0.5
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out_dir / "adapter_model.safetensors"))
    _write_json(out_dir / "adapter_config.json", {
        "peft_type": "LORA", "base_model_name_or_path": str(model_dir), "r": rank, "lora_alpha": alpha,
        "target_modules": list(targets), "lora_dropout": 0.0, "bias": "none", "task_type": "CAUSAL_LM",
    })
    return out_dir


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    """Register `make-tiny-model`; its handler is stored as the parsed namespace's `func`."""
    parser = subparsers.add_parser(
        "make-tiny-model",
        help="write a small random-weight Hugging Face model directory",
        description=make_tiny_model.__doc__,
    )
    parser.add_argument("out_dir", type=pathlib.Path, metavar="OUT_DIR")
    parser.add_argument("--arch", choices=FIXTURE_ARCHS, default="llama")
    parser.add_argument("--dtype", choices=FIXTURE_DTYPES, default="float32")
    parser.add_argument("--sharded", action="store_true")
    parser.add_argument("--tie-word-embeddings", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(func=_cli_make_tiny_model)


def _cli_make_tiny_model(args: argparse.Namespace) -> int:
    path = make_tiny_model(
        args.out_dir,
        args.arch,
        dtype=args.dtype,
        sharded=args.sharded,
        tie_word_embeddings=args.tie_word_embeddings,
        seed=args.seed,
    )
    print(path)
    return 0
