"""The offline API: `LLM(model).generate(prompts, params)`, as in vLLM.

Every prompt of a call is tokenized and validated before any is queued, so one
bad prompt raises ValueError and leaves the engine exactly as it was.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from typing import Any

from pagoda.engine.beam_search import BeamSearch, BeamSearchOutput, BeamSearchParams
from pagoda.engine.config import EngineConfig
from pagoda.engine.llm_engine import LLMEngine, PromptType
from pagoda.engine.lora import LoRARequest
from pagoda.engine.multimodal import conversation_images
from pagoda.engine.outputs import ClassificationOutput, RequestOutput, ScoringOutput
from pagoda.engine.pooling import label_names, label_probs, pairs, relevances, score_texts
from pagoda.engine.sampling_params import RequestOutputKind, SamplingParams
from pagoda.engine.tokenizer import apply_chat_template

Message = dict[str, Any]


class LLM:
    """Runs batches of prompts to completion with continuous batching.

    Keyword arguments are the fields of EngineConfig (max_num_seqs, dtype,
    enable_prefix_caching, kv_cache_memory_bytes, ...).
    """

    def __init__(self, model: str, **engine_kwargs: Any) -> None:
        known = {f.name for f in dataclasses.fields(EngineConfig)}
        unknown = sorted(set(engine_kwargs) - known)
        if unknown:
            raise TypeError(f"unknown engine option(s) {unknown}; known: {sorted(known - {'model'})}")
        self.engine = LLMEngine(EngineConfig(model=str(model), **engine_kwargs))
        self._request_ids = itertools.count()

    @property
    def tokenizer(self) -> Any:
        return self.engine.tokenizer

    def generate(
        self,
        prompts: PromptType | Sequence[PromptType],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        lora_request: LoRARequest | Sequence[LoRARequest | None] | None = None,
    ) -> list[RequestOutput]:
        """Final outputs, in the order of `prompts` (a string, token ids, or a list of either),
        generated with the LoRA adapter of `lora_request` if one is given (or one per prompt)."""
        prompts = self._prompt_list(prompts)
        params_list = self._params_per_prompt(sampling_params, len(prompts))
        tokenized = self._validated(prompts, params_list)
        loras = list(lora_request) if isinstance(lora_request, Sequence) else [lora_request] * len(prompts)
        if len(loras) != len(prompts):
            raise ValueError(f"got {len(loras)} LoRA requests for {len(prompts)} prompts")
        for lora in set(loras) - {None}:
            self.engine.add_lora(lora)  # a bad adapter is refused before anything is queued
        request_ids = [f"offline-{next(self._request_ids)}" for _ in prompts]
        # Only final outputs are returned: the steps in between build none (vLLM's LLM does the same).
        final_only = [dataclasses.replace(p, output_kind=RequestOutputKind.FINAL_ONLY) for p in params_list]
        for request_id, prompt, params, lora in zip(request_ids, tokenized, final_only, loras):
            self.engine.add_request(request_id, prompt, params, lora_request=lora)
        return self._run(request_ids)

    def beam_search(self, prompts: PromptType | Sequence[PromptType],
                    params: BeamSearchParams) -> list[BeamSearchOutput]:
        """The `params.beam_width` most likely completions of each prompt by beam search, best first."""
        prompts = self._prompt_list(prompts)
        tokenized = self._validated(prompts, [SamplingParams(max_tokens=params.max_tokens)] * len(prompts))
        search = BeamSearch([t["prompt_token_ids"] for t in tokenized], params, self.engine.eos_token_ids)
        while not search.finished:
            request_ids = []
            for tokens in search.requests():
                request_ids.append(f"offline-{next(self._request_ids)}")
                self.engine.add_request(request_ids[-1], tokens, search.step_params)
            search.advance(self._run(request_ids))
        results = search.results()
        for beams in results:
            for beam in beams:
                beam.text = self.tokenizer.decode(beam.output_token_ids, skip_special_tokens=True)
        return [BeamSearchOutput(beams) for beams in results]

    def embed(
        self, prompts: PromptType | Sequence[PromptType], lora_request: LoRARequest | None = None,
    ) -> list[list[float]]:
        """Unit-length embeddings of the prompts, in their order (see LLMEngine.add_request's `embed`)."""
        self.engine.require_pooling("embed")
        return self._pool(self._prompt_list(prompts), lora_request)

    def classify(
        self, prompts: PromptType | Sequence[PromptType], lora_request: LoRARequest | None = None,
    ) -> list[ClassificationOutput]:
        """A sequence classifier's label probabilities for each prompt (softmax; sigmoid for one label)."""
        self.engine.require_pooling("classify")
        names = label_names(self.engine.model_config.hf_config)
        return [ClassificationOutput(label_probs(logits), names)
                for logits in self._pool(self._prompt_list(prompts), lora_request)]

    def score(self, text_1: str | list[str], text_2: str | list[str],
              lora_request: LoRARequest | None = None) -> list[ScoringOutput]:
        """Relevance of each (text_1, text_2) pair (see pooling.pairs): a one-label classifier's sigmoid
        of the pair read as one prompt (a cross-encoder), or the cosine of an embedding model's embeddings."""
        pairs_ = pairs(text_1, text_2)
        cross_encoder = self.engine.pooling_task == "classify"
        if cross_encoder:
            self.engine.require_pooling("score")
        texts = score_texts(pairs_, cross_encoder)
        prompts: list[PromptType] = texts if not cross_encoder else [
            {"prompt_token_ids": self.tokenizer(a, text_pair=b)["input_ids"]} for a, b in texts]
        pooled = self._pool(prompts, lora_request)
        return [ScoringOutput(score) for score in relevances(pairs_, texts, pooled, cross_encoder)]

    def _pool(self, prompts: list[PromptType], lora_request: LoRARequest | None) -> list[list[float]]:
        """Each prompt's pooled output: an embedding, or a classifier's logits."""
        params = SamplingParams(max_tokens=1)
        tokenized = self._validated(prompts, [params] * len(prompts), embed=True)
        request_ids = [f"offline-{next(self._request_ids)}" for _ in tokenized]
        for request_id, prompt in zip(request_ids, tokenized):
            self.engine.add_request(request_id, prompt, params, lora_request=lora_request, embed=True)
        return [out.embedding for out in self._run(request_ids)]

    def chat(
        self,
        messages: list[Message] | list[list[Message]],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        *,
        add_generation_prompt: bool = True,
        chat_template_kwargs: dict[str, Any] | None = None,
        tools: list[dict[str, Any]] | None = None,
    ) -> list[RequestOutput]:
        """Generate replies to one conversation or a list of them, rendered by the model's chat template
        (with `tools`, OpenAI-style function definitions, shown to the model by the template); image
        parts (`image_url`, or `image_pil` with a PIL image) go to a model that takes images."""
        conversations = [messages] if messages and isinstance(messages[0], dict) else messages
        kwargs = {**(chat_template_kwargs or {}), **({"tools": tools} if tools else {})}
        prompts: list[PromptType] = []
        for conversation in conversations:
            rendered, images = conversation_images(conversation)
            prompt: dict[str, Any] = {"prompt_token_ids": self.apply_chat_template(rendered, add_generation_prompt, kwargs)}
            if images:
                prompt["multi_modal_data"] = {"image": images}
            prompts.append(prompt)
        return self.generate(prompts, sampling_params)

    def apply_chat_template(
        self, conversation: list[Message], add_generation_prompt: bool = True, kwargs: dict[str, Any] | None = None
    ) -> list[int]:
        return apply_chat_template(self.tokenizer, conversation, add_generation_prompt, kwargs)

    def get_default_sampling_params(self) -> SamplingParams:
        """What a call without sampling parameters uses: the model's generation config, as vLLM's."""
        return SamplingParams(**self.engine.sampling_defaults)

    def _params_per_prompt(
        self, sampling_params: SamplingParams | Sequence[SamplingParams] | None, count: int
    ) -> list[SamplingParams]:
        if sampling_params is None:
            return [self.get_default_sampling_params()] * count
        if isinstance(sampling_params, SamplingParams):
            return [sampling_params] * count
        params = list(sampling_params)
        if len(params) != count:
            raise ValueError(f"got {len(params)} sampling params for {count} prompts")
        return params

    @staticmethod
    def _prompt_list(prompts: PromptType | Sequence[PromptType]) -> list[PromptType]:
        """One prompt (text, token ids, a dict) or a list of them, as a list."""
        if isinstance(prompts, (str, dict)) or (isinstance(prompts, list) and prompts and isinstance(prompts[0], int)):
            return [prompts]
        return list(prompts)

    def _validated(self, prompts: list[PromptType], params_list: list[SamplingParams],
                   embed: bool = False) -> list[dict[str, Any]]:
        """Every prompt tokenized and checked before any is queued: a bad one fails the call, not the batch."""
        tokenized = []
        for prompt, params in zip(prompts, params_list):
            text, ids, images = self.engine.process_prompt(prompt)
            self.engine.validate_prompt(ids, params, embed)
            tokenized.append({"prompt": text, "prompt_token_ids": ids, "images": images})
        return tokenized

    def _run(self, request_ids: list[str]) -> list[RequestOutput]:
        finished: dict[str, RequestOutput] = {}
        pending = set(request_ids)
        while pending:
            for output in self.engine.step():
                if output.finished and output.request_id in pending:
                    finished[output.request_id] = output
                    pending.discard(output.request_id)
        return [finished[r] for r in request_ids]
