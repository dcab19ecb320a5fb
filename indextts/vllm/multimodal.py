"""The IndexTTS prompt as a vLLM multimodal item: modality "voice", one item per request.

A request's prompt rows (32 conditioning latents, then the text embeddings with their text
positions; `indextts.vllm.prompt` builds them) reach the model as one multimodal item whose
placeholder ids are the original's fake prompt ids:

    prompt_token_ids  = [1] * P + [8192]
    mm_placeholders   = {"voice": [PlaceholderRange(offset=0, length=P)]}
    mm_kwargs         = {"voice": [{"indextts_prompt": rows [P, D]}]}

`render` makes that engine input (`vllm.inputs.mm_input`, the rendered form `AsyncLLM.generate`
takes, as for token or embeddings inputs); the model's `embed_multimodal` returns the rows as
they are and `embed_input_ids` writes them over the placeholders (`indextts/vllm/model.py`).

The processor classes below are what vLLM's multimodal registry requires of a multimodal
model: limits (one item per prompt), the largest item (sizes the encoder cache), dummy data
for start-up profiling, and `apply` for prompts that come unrendered (`{"prompt_token_ids":
..., "multi_modal_data": {"voice": rows}}`). There is no Hugging Face processor: `apply`
builds the same input as `render`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

import torch
from transformers import BatchFeature
from vllm.inputs import mm_input
from vllm.multimodal.inputs import MultiModalFieldConfig, MultiModalKwargsItems, PlaceholderRange
from vllm.multimodal.parse import ModalityDataItems, MultiModalDataItems, MultiModalDataParser
from vllm.multimodal.processing import BaseDummyInputsBuilder, BaseMultiModalProcessor, BaseProcessingInfo

from indextts.gpt.generation import PROMPT_PLACEHOLDER_ID as PLACEHOLDER_ID

MODALITY = "voice"
FIELD = "indextts_prompt"


def prompt_token_ids(rows: int, start_code: int) -> list[int]:
    return [PLACEHOLDER_ID] * rows + [start_code]


def content_hash(*parts: torch.Tensor) -> str:
    """Identity of tensors for vLLM's encoder cache and prefix cache: equal parts (same bytes,
    dtype and shape, in the same order), equal hash. Reads the bytes in place (no torch op: see
    `PromptBuilder`). `render` hashes a prompt's rows with it; `PromptBuilder.build` hashes what
    the rows are made of instead (see `VLLMPrompt.identity`).

    The hash is vLLM's own multimodal hash function (blake3 unless `VLLM_MM_HASHER_ALGORITHM`
    asks for sha256/sha512). It runs once per request in the process that feeds vLLM, where its
    cost delays admission, hence the latents-and-ids identity, a third of the rows' bytes
    (figures in docs/benchmarks.md)."""
    h = _hasher()
    for part in parts:
        data = part.detach()
        if data.device.type != "cpu" or not data.is_contiguous():
            data = data.contiguous().cpu()
        h.update(f"{data.dtype}{tuple(data.shape)}".encode())
        h.update(data.view(torch.uint8).numpy().reshape(-1))
    return h.hexdigest()


def _hasher():
    """A fresh hasher of the algorithm vLLM's own multimodal hashing uses (`vllm.envs`, which
    reads and validates VLLM_MM_HASHER_ALGORITHM: blake3, sha256 or sha512)."""
    from vllm import envs

    algorithm = envs.VLLM_MM_HASHER_ALGORITHM.lower()
    if algorithm == "blake3":
        from blake3 import blake3      # a vLLM dependency

        return blake3()
    return hashlib.new(algorithm)


def render(rows: torch.Tensor, start_code: int, identity: str | None = None) -> dict:
    """rows [P, D] (any float dtype; the model casts them to its own on its device) -> the
    engine input vLLM takes (`mm_input`). `identity`: the rows' hash for vLLM's caches, if the
    caller has one that equal rows always share (`VLLMPrompt.identity`); else the rows are
    hashed here."""
    if rows.dim() != 2 or rows.size(0) < 1:
        raise ValueError(f"prompt rows must be [P, D] with P >= 1, got {list(rows.shape)}")
    p = rows.size(0)
    kwargs = MultiModalKwargsItems.from_hf_inputs(
        BatchFeature({FIELD: rows.unsqueeze(0)}), {FIELD: MultiModalFieldConfig.batched(MODALITY)})
    return mm_input(prompt_token_ids=prompt_token_ids(p, start_code), mm_kwargs=kwargs,
                    mm_hashes={MODALITY: [identity or content_hash(rows)]},
                    mm_placeholders={MODALITY: [PlaceholderRange(offset=0, length=p)]})


class PromptRowItems(ModalityDataItems[list, torch.Tensor]):
    """Parsed "voice" data: one [P, D] tensor per item."""

    def __init__(self, data: list[torch.Tensor]) -> None:
        super().__init__(data, MODALITY)

    def get_count(self) -> int:
        return len(self.data)

    def get(self, index: int) -> torch.Tensor:
        return self.data[index]

    def get_processor_data(self) -> Mapping[str, object]:
        return {}

    def get_passthrough_data(self) -> Mapping[str, object]:
        return {FIELD: self.data}


class PromptDataParser(MultiModalDataParser):
    def _parse_voice(self, data) -> PromptRowItems:
        items = list(data) if isinstance(data, (list, tuple)) else [data]
        rows = []
        for x in items:
            if not isinstance(x, torch.Tensor):
                raise ValueError(f"'{MODALITY}' data must be prompt rows as a tensor [P, D], got {type(x).__name__}")
            if x.dim() == 3 and x.size(0) == 1:
                x = x[0]
            if x.dim() != 2:
                raise ValueError(f"'{MODALITY}' prompt rows must be [P, D], got {list(x.shape)}")
            rows.append(x)
        return PromptRowItems(rows)

    def _get_subparsers(self):
        return {**super()._get_subparsers(), MODALITY: self._parse_voice}


class IndexTTSProcessingInfo(BaseProcessingInfo):
    def get_data_parser(self) -> MultiModalDataParser:
        return PromptDataParser()

    def get_supported_mm_limits(self) -> Mapping[str, int | None]:
        return {MODALITY: 1}

    def max_rows(self) -> int:
        """The longest prompt: every conditioning latent and a full text segment."""
        cfg = self.get_hf_config()
        return cfg.num_cond_latents + cfg.text_positions

    def get_mm_max_tokens_per_item(self, seq_len: int, mm_counts: Mapping[str, int]) -> Mapping[str, int]:
        return {MODALITY: self.max_rows()}


class IndexTTSDummyInputsBuilder(BaseDummyInputsBuilder[IndexTTSProcessingInfo]):
    """Start-up profiling input: the longest prompt, zeros."""

    def get_dummy_text(self, mm_counts: Mapping[str, int]) -> str:
        return ""

    def get_dummy_mm_data(self, seq_len: int, mm_counts: Mapping[str, int], mm_options=None):
        cfg = self.info.get_hf_config()
        dtype = self.info.ctx.model_config.dtype
        return {MODALITY: [torch.zeros(self.info.max_rows(), cfg.hidden_size, dtype=dtype)
                           for _ in range(mm_counts.get(MODALITY, 0))]}


class IndexTTSMultiModalProcessor(BaseMultiModalProcessor[IndexTTSProcessingInfo]):
    """Builds `render`'s input from unrendered prompts (and vLLM's profiling dummies)."""

    def _get_mm_fields_config(self, hf_inputs, hf_processor_mm_kwargs) -> Mapping[str, MultiModalFieldConfig]:
        return {FIELD: MultiModalFieldConfig.batched(MODALITY)}

    def _get_prompt_updates(self, mm_items, hf_processor_mm_kwargs, out_mm_kwargs) -> Sequence:
        return []

    def apply(self, inputs, timing_ctx=None):
        items: MultiModalDataItems = inputs.mm_data_items
        voice = items.get(MODALITY) if MODALITY in items else None
        if voice is None or voice.get_count() != 1 or len(items) != 1:
            raise ValueError(f"an IndexTTS prompt takes exactly one '{MODALITY}' item (its prompt rows) "
                             f"and nothing else; got {dict(items.get_all_counts())}")
        rows = voice.get(0)
        start_code = self.info.get_hf_config().start_mel_token
        prompt = inputs.prompt
        if isinstance(prompt, str):
            if prompt:
                raise ValueError("IndexTTS prompts are token ids, not text")
        elif list(prompt) != prompt_token_ids(rows.size(0), start_code):
            raise ValueError(f"prompt_token_ids must be [{PLACEHOLDER_ID}] * P + [{start_code}] with P = "
                             f"{rows.size(0)}, the number of prompt rows; got {len(prompt)} ids ending {list(prompt)[-3:]}")
        return render(rows, start_code)
