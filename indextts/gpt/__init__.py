"""The IndexTTS GPT in PyTorch: conditioning encoder, UnifiedVoice, and its decoding.

This is the reference engine (golden parity) and the CPU fallback; the vLLM engine in
`indextts.vllm` must agree with it.
"""

from indextts.gpt.beam_search import beam_search_codes, beam_search_hypotheses
from indextts.gpt.generation import (EncodedPrompt, GenerationRequest, GenerationResult, LatentPass,
                                     average_conditioning, compute_latents, encode_prompt, generate_codes,
                                     generate_codes_batch, remove_long_silence, shrink_silence, stream_codes)
from indextts.gpt.model import UnifiedVoice

__all__ = [
    "EncodedPrompt", "GenerationRequest", "GenerationResult", "LatentPass", "UnifiedVoice",
    "average_conditioning", "beam_search_codes", "beam_search_hypotheses", "compute_latents", "encode_prompt",
    "generate_codes", "generate_codes_batch", "remove_long_silence", "shrink_silence", "stream_codes",
]
