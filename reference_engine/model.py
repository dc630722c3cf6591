"""A Llama-family decoder in plain torch (RMSNorm, RoPE, grouped-query attention, SwiGLU).

Built from a transformers ``LlamaConfig``/``Qwen2Config`` (Qwen2 has q/k/v biases). Tokens are packed
``[T]`` (no batch dimension); K/V go to the paged cache through ``attention.store_kv`` (on CUDA inside
the rotary kernel, ``fused.rope_store_kv``) and attention reads them back through the block tables
(``attention.paged_attention``). q/k/v and gate/up are fused projections; ``load_hf_weights`` maps
transformers' parameter names onto them.
"""

from __future__ import annotations

import glob
import json
import math
import os

import torch
import torch.nn.functional as F
from torch import nn

from reference_engine import fused
from reference_engine.attention import AttentionMetadata, paged_attention


def rope_settings(config) -> tuple[float, dict | None]:
    """(theta, scaling dict or None) from a transformers config (v5 ``rope_parameters`` or v4 fields)."""
    params = getattr(config, "rope_parameters", None)
    if params:
        params = dict(params)
        theta = float(params.get("rope_theta", getattr(config, "rope_theta", 10000.0) or 10000.0))
        kind = params.get("rope_type", params.get("type", "default"))
        return theta, (params if kind not in (None, "default") else None)
    theta = float(getattr(config, "rope_theta", 10000.0) or 10000.0)
    scaling = getattr(config, "rope_scaling", None)
    if scaling and scaling.get("rope_type", scaling.get("type")) not in (None, "default"):
        return theta, dict(scaling)
    return theta, None


def rope_inv_freq(head_dim: int, theta: float, scaling: dict | None) -> torch.Tensor:
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    if scaling is None:
        return inv_freq
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind == "linear":
        return inv_freq / float(scaling["factor"])
    if kind != "llama3":
        raise ValueError(f"rope scaling {kind!r} is not supported (default, linear and llama3 are)")
    factor, low, high = float(scaling["factor"]), float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
    old_len = float(scaling["original_max_position_embeddings"])
    low_wavelen, high_wavelen = old_len / low, old_len / high
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return torch.where(medium, smoothed, scaled)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        """``w * rms_norm(x)``; with ``residual``, of ``x + residual``, returned with that sum."""
        if residual is None:
            return fused.rms_norm(x, self.weight, self.eps)
        return fused.add_rms_norm(x, residual, self.weight, self.eps)


class RotaryEmbedding(nn.Module):
    """cos/sin table for every position, indexed by the packed positions (rotate-half convention)."""

    def __init__(self, head_dim: int, max_positions: int, theta: float, scaling: dict | None):
        super().__init__()
        inv_freq = rope_inv_freq(head_dim, theta, scaling)
        attention_factor = 1.0
        if scaling is not None and "attention_factor" in scaling and scaling["attention_factor"] is not None:
            attention_factor = float(scaling["attention_factor"])
        freqs = torch.outer(torch.arange(max_positions, dtype=torch.float32), inv_freq)
        emb = torch.cat([freqs, freqs], dim=-1)
        # plain attributes, not buffers: they stay fp32 when the model is cast to bf16
        self.cos = emb.cos() * attention_factor
        self.sin = emb.sin() * attention_factor

    def forward(self, positions: torch.Tensor, out: tuple | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin ``[T, 1, D]`` for the step's positions (looked up once, used by every layer); with ``out``
        (two ``[T, D]`` tensors) written into those."""
        if out is None:
            return self.cos[positions].unsqueeze(1), self.sin[positions].unsqueeze(1)
        cos, sin = out
        torch.index_select(self.cos, 0, positions, out=cos)
        torch.index_select(self.sin, 0, positions, out=sin)
        return cos.unsqueeze(1), sin.unsqueeze(1)


class Attention(nn.Module):
    def __init__(self, config, qkv_bias: bool):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.num_heads
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        self.qkv_proj = nn.Linear(config.hidden_size, self.q_size + 2 * self.kv_size, bias=qkv_bias)
        self.o_proj = nn.Linear(self.q_size, config.hidden_size, bias=bool(getattr(config, "attention_bias", False)))
        self.scale = self.head_dim ** -0.5

    def forward(self, x, cos_sin, meta: AttentionMetadata, k_cache, v_cache):
        return self.o_proj(self.attend(x, cos_sin, meta, k_cache, v_cache))

    def attend(self, x, cos_sin, meta: AttentionMetadata, k_cache, v_cache) -> torch.Tensor:
        """Everything before ``o_proj``: the attention output ``[T, q_size]`` (``tp_overlap`` runs
        ``o_proj`` and its all-reduce itself)."""
        qkv = self.qkv_proj(x)
        qk, v = qkv.split([self.q_size + self.kv_size, self.kv_size], dim=-1)
        # q and k rotated at once, k and v into the cache (one kernel on CUDA)
        qk = fused.rope_store_kv(qk.view(-1, self.num_heads + self.num_kv_heads, self.head_dim),
                                 v.view(-1, self.num_kv_heads, self.head_dim), *cos_sin, k_cache, v_cache,
                                 meta.slot_mapping, self.num_heads)
        q = qk[:, :self.num_heads]
        t, padded = meta.slot_mapping.shape[0], x.shape[0]  # rows past the step's tokens pad the GEMMs' shapes
        if t < padded:
            q = q[:t]
        out = paged_attention(q, k_cache, v_cache, meta, self.scale)
        if t < padded:
            out = F.pad(out, (0, 0, 0, 0, 0, padded - t))
        return out.reshape(-1, self.q_size)


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        bias = bool(getattr(config, "mlp_bias", False))
        self.intermediate = config.intermediate_size
        self.gate_up_proj = nn.Linear(config.hidden_size, 2 * self.intermediate, bias=bias)
        self.down_proj = nn.Linear(self.intermediate, config.hidden_size, bias=bias)

    def forward(self, x):
        return self.down_proj(self.act(x))

    def act(self, x) -> torch.Tensor:
        """Everything before ``down_proj``: ``silu(gate) * up``, ``[T, intermediate]``."""
        return fused.silu_mul(self.gate_up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, config, qkv_bias: bool):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config, qkv_bias)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)

    def forward(self, x, residual, cos_sin, meta, k_cache, v_cache):
        """``(x, residual)`` → the same pair one layer on: the residual stream is ``x + residual``, whose add
        is fused into the norm that follows it (``residual`` is None for the first layer)."""
        if residual is None:
            x, residual = self.input_layernorm(x), x
        else:
            x, residual = self.input_layernorm(x, residual)
        x = self.self_attn(x, cos_sin, meta, k_cache, v_cache)
        x, residual = self.post_attention_layernorm(x, residual)
        return self.mlp(x), residual


class CausalLM(nn.Module):
    """Decoder + LM head. ``forward`` returns hidden states; ``compute_logits`` the fp32 logits of chosen rows."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        qkv_bias = config.model_type == "qwen2" or bool(getattr(config, "attention_bias", False))
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, qkv_bias) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.tie = bool(getattr(config, "tie_word_embeddings", False))
        self.lm_head = None if self.tie else nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        head_dim = self.layers[0].self_attn.head_dim
        theta, scaling = rope_settings(config)
        self.rope = RotaryEmbedding(head_dim, config.max_position_embeddings, theta, scaling)
        self.gather_logits = None  # tensor parallelism: the vocab shards' logits → the full logits

    @property
    def head_dim(self) -> int:
        return self.layers[0].self_attn.head_dim

    def forward(self, input_ids, positions, meta: AttentionMetadata, kv_cache: torch.Tensor) -> torch.Tensor:
        """``kv_cache``: ``[2, layers, num_blocks, block_size, kv_heads, head_dim]``.

        ``input_ids`` may be longer than ``meta.slot_mapping``: the extra rows are padding (so that few
        distinct GEMM shapes occur); attention skips them and their outputs are meaningless.
        """
        state = self.run_layers(self.start(input_ids, positions), meta, kv_cache, 0, len(self.layers))
        return self.finish(state)

    # forward in pieces (the piecewise decode CUDA graphs): start → run_layers over ranges → finish
    def start(self, input_ids, positions, out: tuple | None = None) -> tuple:
        """The state before layer 0: ``(x, residual, cos_sin)``; with ``out`` (``start_buffers``) written into
        those tensors (the decode graphs capture it more than once, each time at the same addresses)."""
        if out is None:
            return self.embed_tokens(input_ids), None, self.rope(positions)
        x, cos, sin = out
        torch.index_select(self.embed_tokens.weight, 0, input_ids, out=x)
        return x, None, self.rope(positions, out=(cos, sin))

    def start_buffers(self, num_tokens: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Tensors for ``start(..., out=)`` of ``num_tokens`` rows: the embeddings, cos and sin."""
        w, table = self.embed_tokens.weight, self.rope.cos
        return w.new_empty(num_tokens, w.shape[1]), table.new_empty(num_tokens, table.shape[1]), \
            table.new_empty(num_tokens, table.shape[1])

    def run_layers(self, state: tuple, meta: AttentionMetadata, kv_cache: torch.Tensor, lo: int, hi: int) -> tuple:
        """``state`` after layers ``lo``..``hi - 1``."""
        x, residual, cos_sin = state
        for i in range(lo, hi):
            x, residual = self.layers[i](x, residual, cos_sin, meta, kv_cache[0, i], kv_cache[1, i])
        return x, residual, cos_sin

    def finish(self, state: tuple) -> torch.Tensor:
        """The final norm: hidden states from the state after the last layer."""
        x, residual, _ = state
        return self.norm(x, residual)[0]

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        weight = self.embed_tokens.weight if self.tie else self.lm_head.weight
        logits = F.linear(hidden, weight)
        return (logits if self.gather_logits is None else self.gather_logits(logits)).float()


@torch.no_grad()
def init_random_weights(model: CausalLM, seed: int) -> None:
    """Deterministic random weights (normal, std 0.02; norms 1; biases 0) on the model's device."""
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    for name, p in model.named_parameters():
        if name.endswith("norm.weight"):
            p.fill_(1.0)
        elif name.endswith(".bias"):
            p.zero_()
        else:
            p.copy_(torch.randn(p.shape, generator=gen, device=p.device, dtype=torch.float32).mul_(0.02))


@torch.no_grad()
def load_hf_weights(model: CausalLM, tensors) -> None:
    """Load transformers-named tensors (``model.layers.0.self_attn.q_proj.weight`` ...) into the fused model.

    ``tensors``: an iterable of (name, tensor) pairs, e.g. ``hf_model.state_dict().items()``.
    """
    params = dict(model.named_parameters())
    fused = {"q_proj": ("qkv_proj", 0), "k_proj": ("qkv_proj", 1), "v_proj": ("qkv_proj", 2),
             "gate_proj": ("gate_up_proj", 0), "up_proj": ("gate_up_proj", 1)}
    seen = set()
    for name, tensor in tensors:
        name = name.removeprefix("model.")
        if "rotary_emb" in name:
            continue
        parts = name.split(".")
        if len(parts) >= 2 and parts[-2] in fused:
            target, shard = fused[parts[-2]]
            pname = ".".join(parts[:-2] + [target, parts[-1]])
            p = params[pname]
            layer = model.layers[int(parts[1])]
            if target == "qkv_proj":
                attn = layer.self_attn
                offsets = [0, attn.q_size, attn.q_size + attn.kv_size, attn.q_size + 2 * attn.kv_size]
            else:
                n = layer.mlp.intermediate
                offsets = [0, n, 2 * n]
            p[offsets[shard]:offsets[shard + 1]].copy_(tensor)
            seen.add((pname, shard))
            continue
        if name == "lm_head.weight" and model.tie:
            continue
        if name not in params:
            raise ValueError(f"unexpected weight {name!r} in checkpoint")
        params[name].copy_(tensor)
        seen.add((name, None))
    loaded = {n for n, _ in seen}
    missing = [n for n in params if n not in loaded]
    if missing:
        raise ValueError(f"checkpoint is missing weights: {missing[:5]}{' ...' if len(missing) > 5 else ''}")


def load_checkpoint_config(folder: str):
    from transformers import AutoConfig

    with open(os.path.join(folder, "config.json")) as f:
        model_type = json.load(f).get("model_type")
    if model_type not in ("llama", "qwen2", "mistral"):
        raise ValueError(f"checkpoint model_type {model_type!r} is not a Llama-family decoder this engine supports")
    return AutoConfig.from_pretrained(folder)


def load_checkpoint_weights(model: CausalLM, folder: str) -> None:
    from safetensors import safe_open

    files = sorted(glob.glob(os.path.join(folder, "*.safetensors")))
    if not files:
        raise ValueError(f"no *.safetensors files in {folder}")

    def tensors():
        for path in files:
            with safe_open(path, framework="pt", device="cpu") as f:
                for key in f.keys():
                    yield key, f.get_tensor(key)

    load_hf_weights(model, tensors())
