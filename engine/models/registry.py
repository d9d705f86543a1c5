"""Which model class serves which `architectures` entry of config.json."""

from __future__ import annotations

import importlib

import torch.nn as nn

# architecture name -> (module, class); imported lazily so reading a config stays cheap.
_REGISTRY: dict[str, tuple[str, str]] = {
    "LlamaForCausalLM": ("pagoda.engine.models.llama", "LlamaForCausalLM"),
    "MistralForCausalLM": ("pagoda.engine.models.llama", "LlamaForCausalLM"),
    "MinistralForCausalLM": ("pagoda.engine.models.llama", "LlamaForCausalLM"),
    "Qwen2ForCausalLM": ("pagoda.engine.models.llama", "Qwen2ForCausalLM"),
    "Qwen3ForCausalLM": ("pagoda.engine.models.llama", "Qwen3ForCausalLM"),
    "GraniteForCausalLM": ("pagoda.engine.models.llama", "GraniteForCausalLM"),
    "SmolLM3ForCausalLM": ("pagoda.engine.models.llama", "SmolLM3ForCausalLM"),
    "SeedOssForCausalLM": ("pagoda.engine.models.llama", "SeedOssForCausalLM"),
    "Ernie4_5ForCausalLM": ("pagoda.engine.models.llama", "Ernie45ForCausalLM"),
    "ApertusForCausalLM": ("pagoda.engine.models.llama", "ApertusForCausalLM"),
    "HunYuanDenseV1ForCausalLM": ("pagoda.engine.models.llama", "HunYuanDenseV1ForCausalLM"),
    "HunYuanMoEV1ForCausalLM": ("pagoda.engine.models.moe", "HunYuanMoEV1ForCausalLM"),
    "Phi3ForCausalLM": ("pagoda.engine.models.llama", "Phi3ForCausalLM"),
    "Gemma3ForCausalLM": ("pagoda.engine.models.gemma3", "Gemma3ForCausalLM"),
    "Gemma2ForCausalLM": ("pagoda.engine.models.gemma3", "Gemma2ForCausalLM"),
    "Gemma4ForCausalLM": ("pagoda.engine.models.gemma4", "Gemma4ForCausalLM"),
    "Gemma4ForConditionalGeneration": ("pagoda.engine.models.gemma4", "Gemma4ForConditionalGeneration"),
    "GlmForCausalLM": ("pagoda.engine.models.glm", "GlmForCausalLM"),
    "Olmo2ForCausalLM": ("pagoda.engine.models.olmo2", "Olmo2ForCausalLM"),
    "Olmo3ForCausalLM": ("pagoda.engine.models.olmo2", "Olmo2ForCausalLM"),
    "Exaone4ForCausalLM": ("pagoda.engine.models.olmo2", "Exaone4ForCausalLM"),
    "Starcoder2ForCausalLM": ("pagoda.engine.models.starcoder2", "Starcoder2ForCausalLM"),
    "CohereForCausalLM": ("pagoda.engine.models.cohere", "CohereForCausalLM"),
    "Cohere2ForCausalLM": ("pagoda.engine.models.cohere", "Cohere2ForCausalLM"),
    "Glm4ForCausalLM": ("pagoda.engine.models.glm", "Glm4ForCausalLM"),
    # Multimodal checkpoints, served as text (their language model).
    "Gemma3ForConditionalGeneration": ("pagoda.engine.models.gemma3", "Gemma3ForConditionalGeneration"),
    # Image and text in.
    "LlavaForConditionalGeneration": ("pagoda.engine.models.llava", "LlavaForConditionalGeneration"),
    "InternVLForConditionalGeneration": ("pagoda.engine.models.internvl", "InternVLForConditionalGeneration"),
    "Mistral3ForConditionalGeneration": ("pagoda.engine.models.mistral3", "Mistral3ForConditionalGeneration"),
    "Qwen2VLForConditionalGeneration": ("pagoda.engine.models.qwen_vl", "Qwen2VLForConditionalGeneration"),
    "Qwen2_5_VLForConditionalGeneration": ("pagoda.engine.models.qwen_vl", "Qwen2_5_VLForConditionalGeneration"),
    "Qwen3VLForConditionalGeneration": ("pagoda.engine.models.qwen_vl", "Qwen3VLForConditionalGeneration"),
    "Qwen3VLMoeForConditionalGeneration": ("pagoda.engine.models.qwen_vl", "Qwen3VLMoeForConditionalGeneration"),
    "Qwen3_5ForConditionalGeneration": ("pagoda.engine.models.qwen_vl", "Qwen3_5ForConditionalGeneration"),
    "Qwen3_5MoeForConditionalGeneration": ("pagoda.engine.models.qwen_vl", "Qwen3_5MoeForConditionalGeneration"),
    # Mixture of experts.
    "MixtralForCausalLM": ("pagoda.engine.models.moe", "MixtralForCausalLM"),
    "Qwen2MoeForCausalLM": ("pagoda.engine.models.moe", "Qwen2MoeForCausalLM"),
    "Qwen3MoeForCausalLM": ("pagoda.engine.models.moe", "Qwen3MoeForCausalLM"),
    "OlmoeForCausalLM": ("pagoda.engine.models.moe", "OlmoeForCausalLM"),
    "Ernie4_5_MoeForCausalLM": ("pagoda.engine.models.moe", "Ernie45MoeForCausalLM"),
    "Dots1ForCausalLM": ("pagoda.engine.models.moe", "Dots1ForCausalLM"),
    "ExaoneMoeForCausalLM": ("pagoda.engine.models.moe", "ExaoneMoeForCausalLM"),
    "MiniMaxM2ForCausalLM": ("pagoda.engine.models.moe", "MiniMaxM2ForCausalLM"),
    "GraniteMoeForCausalLM": ("pagoda.engine.models.moe", "GraniteMoeForCausalLM"),
    "Glm4MoeForCausalLM": ("pagoda.engine.models.moe", "Glm4MoeForCausalLM"),
    "GptOssForCausalLM": ("pagoda.engine.models.gpt_oss", "GptOssForCausalLM"),
    # Hybrids of Mamba-2 and attention layers.
    "GraniteMoeHybridForCausalLM": ("pagoda.engine.models.hybrid", "GraniteMoeHybridForCausalLM"),
    "NemotronHForCausalLM": ("pagoda.engine.models.hybrid", "NemotronHForCausalLM"),
    "BambaForCausalLM": ("pagoda.engine.models.hybrid", "BambaForCausalLM"),
    "Mamba2ForCausalLM": ("pagoda.engine.models.hybrid", "Mamba2ForCausalLM"),
    "FalconH1ForCausalLM": ("pagoda.engine.models.hybrid", "FalconH1ForCausalLM"),
    "Lfm2ForCausalLM": ("pagoda.engine.models.lfm2", "Lfm2ForCausalLM"),
    "Lfm2MoeForCausalLM": ("pagoda.engine.models.lfm2", "Lfm2MoeForCausalLM"),
    # Gated DeltaNet (linear attention) and gated full attention.
    "Qwen3_5ForCausalLM": ("pagoda.engine.models.qwen3_5", "Qwen3_5ForCausalLM"),
    "Qwen3_5MoeForCausalLM": ("pagoda.engine.models.qwen3_5", "Qwen3_5MoeForCausalLM"),
    "Qwen3NextForCausalLM": ("pagoda.engine.models.qwen3_5", "Qwen3NextForCausalLM"),
    "OlmoHybridForCausalLM": ("pagoda.engine.models.olmo_hybrid", "OlmoHybridForCausalLM"),
    # Latent attention (MLA) with experts: DeepSeek V2/V3, R1, Kimi K2.
    "DeepseekV2ForCausalLM": ("pagoda.engine.models.deepseek", "DeepseekV2ForCausalLM"),
    "DeepseekV3ForCausalLM": ("pagoda.engine.models.deepseek", "DeepseekV3ForCausalLM"),
    "Glm4MoeLiteForCausalLM": ("pagoda.engine.models.deepseek", "DeepseekV3ForCausalLM"),
    "MiMoV2FlashForCausalLM": ("pagoda.engine.models.mimo_v2", "MiMoV2FlashForCausalLM"),
    "KimiLinearForCausalLM": ("pagoda.engine.models.kimi_linear", "KimiLinearForCausalLM"),
    # Bidirectional encoders: embedding models and cross-encoders.
    "BertModel": ("pagoda.engine.models.bert", "BertModel"),
    "RobertaModel": ("pagoda.engine.models.bert", "XLMRobertaModel"),
    "XLMRobertaModel": ("pagoda.engine.models.bert", "XLMRobertaModel"),
    "BertForSequenceClassification": ("pagoda.engine.models.bert", "BertForSequenceClassification"),
    "XLMRobertaForSequenceClassification": ("pagoda.engine.models.bert", "XLMRobertaForSequenceClassification"),
    # Decoder-only checkpoints (embedding models): embeddings only.
    "LlamaModel": ("pagoda.engine.models.llama", "LlamaModel"),
    "MistralModel": ("pagoda.engine.models.llama", "LlamaModel"),
    "Qwen2Model": ("pagoda.engine.models.llama", "Qwen2Model"),
    "Qwen3Model": ("pagoda.engine.models.llama", "Qwen3Model"),
    # Sequence classifiers (reward models, cross-encoder rerankers): classify and score only.
    "LlamaForSequenceClassification": ("pagoda.engine.models.classifier", "LlamaForSequenceClassification"),
    "MistralForSequenceClassification": ("pagoda.engine.models.classifier", "LlamaForSequenceClassification"),
    "Qwen2ForSequenceClassification": ("pagoda.engine.models.classifier", "Qwen2ForSequenceClassification"),
    "Qwen3ForSequenceClassification": ("pagoda.engine.models.classifier", "Qwen3ForSequenceClassification"),
}

SUPPORTED_ARCHITECTURES = tuple(sorted(_REGISTRY))


def resolve_architecture(architectures: list[str]) -> str:
    """The first supported entry, or a ValueError listing what is supported."""
    for name in architectures:
        if name in _REGISTRY:
            return name
    raise ValueError(
        f"model architecture {architectures or '(none given)'} is not supported; "
        f"supported architectures: {', '.join(SUPPORTED_ARCHITECTURES)}"
    )


def model_class(architecture: str) -> type[nn.Module]:
    module, cls = _REGISTRY[resolve_architecture([architecture])]
    return getattr(importlib.import_module(module), cls)
