"""The engine's model gives transformers' logits for the same weights (fp32, CPU), through the paged cache."""

from __future__ import annotations

import pytest
import torch

from reference_engine.attention import AttentionMetadata
from reference_engine.config import preset_config
from reference_engine.model import CausalLM, load_hf_weights


def _paged_logits(model: CausalLM, chunks: list[list[list[int]]], block_size: int = 4) -> list[torch.Tensor]:
    """Run sequences through the model in steps; ``chunks[step][i]`` are sequence i's tokens in that step.

    Blocks are handed out in a scrambled order so that block tables are not the identity.
    Returns each sequence's logits for all of its tokens, in order.
    """
    cfg = model.config
    attn = model.layers[0].self_attn
    nseq = len(chunks[0])
    total = [sum(len(step[i]) for step in chunks) for i in range(nseq)]
    per_seq = [-(-n // block_size) for n in total]
    num_blocks = sum(per_seq)
    order = torch.randperm(num_blocks, generator=torch.Generator().manual_seed(1)).tolist()
    tables, it = [], iter(order)
    for n in per_seq:
        tables.append([next(it) for _ in range(n)])
    width = max(per_seq)
    bt = torch.tensor([t + [0] * (width - len(t)) for t in tables], dtype=torch.int32)
    kv = torch.zeros(2, cfg.num_hidden_layers, num_blocks, block_size, attn.num_kv_heads, attn.head_dim)
    done = [0] * nseq
    outs: list[list[torch.Tensor]] = [[] for _ in range(nseq)]
    for step in chunks:
        ids, pos, slots, qsl, ctx = [], [], [], [0], []
        for i, toks in enumerate(step):
            for j, tok in enumerate(toks):
                p = done[i] + j
                ids.append(tok)
                pos.append(p)
                slots.append(tables[i][p // block_size] * block_size + p % block_size)
            done[i] += len(toks)
            qsl.append(qsl[-1] + len(toks))
            ctx.append(done[i])
        meta = AttentionMetadata(torch.tensor(slots), torch.tensor(qsl, dtype=torch.int32),
                                 torch.tensor(ctx, dtype=torch.int32), bt,
                                 max(len(t) for t in step), max(ctx), qsl, ctx)
        with torch.no_grad():
            logits = model.compute_logits(model(torch.tensor(ids), torch.tensor(pos), meta, kv))
        for i in range(nseq):
            outs[i].append(logits[qsl[i]:qsl[i + 1]])
    return [torch.cat(o) for o in outs]


def _hf_logits(hf, seqs: list[list[int]]) -> list[torch.Tensor]:
    with torch.no_grad():
        return [hf(torch.tensor([s])).logits[0].float() for s in seqs]


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def _check(hf_cls, config, seed=0):
    torch.manual_seed(seed)
    hf = hf_cls(config).eval()
    with torch.no_grad():  # make biases non-zero so that they are tested too
        for name, p in hf.named_parameters():
            if name.endswith(".bias"):
                p.normal_(0, 0.02)
    model = CausalLM(config).eval()
    load_hf_weights(model, hf.state_dict().items())
    g = torch.Generator().manual_seed(seed)
    seqs = [torch.randint(0, config.vocab_size, (n,), generator=g).tolist() for n in (37, 5, 20)]
    ref = _hf_logits(hf, seqs)
    # one prefill step for all, then the same again split into chunked prefill + decode steps
    one = _paged_logits(model, [seqs])
    chunked = _paged_logits(model, [[s[:3] for s in seqs], [s[3:4] for s in seqs], [s[4:] for s in seqs]])
    for r, a, b in zip(ref, one, chunked):
        assert a.shape == r.shape
        assert _rel_err(a, r) < 1e-4
        assert _rel_err(b, r) < 1e-4


def test_logits_match_transformers_llama():
    from transformers import LlamaForCausalLM

    _check(LlamaForCausalLM, preset_config("tiny"))


def test_logits_match_transformers_llama3_rope_scaling_and_tied_embeddings():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=2,
                         intermediate_size=96, vocab_size=300, max_position_embeddings=512,
                         tie_word_embeddings=True, attention_bias=True,
                         rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                          "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                          "original_max_position_embeddings": 16})
    _check(LlamaForCausalLM, config, seed=3)


def test_logits_match_transformers_qwen2():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         intermediate_size=128, vocab_size=400, max_position_embeddings=512,
                         tie_word_embeddings=False)
    _check(Qwen2ForCausalLM, config, seed=5)


def test_checkpoint_folder_roundtrip(tmp_path):
    """A folder with config.json + safetensors (as transformers saves it) loads into the engine."""
    from transformers import LlamaForCausalLM

    from reference_engine import EngineConfig, LLMEngine, Request

    torch.manual_seed(0)
    hf = LlamaForCausalLM(preset_config("tiny")).eval()
    hf.save_pretrained(tmp_path)
    engine = LLMEngine(EngineConfig(model=str(tmp_path), device="cpu", num_blocks=64))
    prompt = list(range(1, 12))
    out = engine.generate([Request(0, prompt, 4)]).records[0].output_token_ids
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(4):
            ids.append(int(hf(torch.tensor([ids])).logits[0, -1].argmax()))
    assert out == ids[len(prompt):]
    assert engine.describe()["preset"] is None


def test_batched_paged_attention_is_the_reference():
    """The engine's CPU attention (all sequences in one masked SDPA) against the per-sequence reference:
    decodes, prefill chunks and whole prompts in one batch, grouped heads, stale table entries past each
    sequence, a sequence with no query in this step, and padding rows after the last query (zero)."""
    import torch

    from reference_engine.attention import paged_attention_batched, paged_attention_reference
    from tests.kernels._cases import make_case

    seqs = [(1, 1), (37, 1), (64, 16), (5, 5), (90, 0), (17, 3), (130, 1)]
    for heads, kv_heads in ((4, 4), (8, 2)):
        q, kc, vc, meta = make_case(seqs, num_heads=heads, num_kv_heads=kv_heads, head_dim=16, block_size=16,
                                    dtype=torch.float64, device="cpu", seed=heads)
        padded = torch.cat([q, torch.randn(5, heads, 16, dtype=q.dtype)])  # bucketed rows past the last query
        out = paged_attention_batched(padded, kc, vc, meta, 0.25)
        ref = paged_attention_reference(q, kc, vc, meta, 0.25)
        torch.testing.assert_close(out[:q.shape[0]], ref, rtol=1e-10, atol=1e-10)
        assert torch.equal(out[q.shape[0]:], torch.zeros_like(out[q.shape[0]:]))


def test_padded_decode_attention_is_the_reference():
    """The traced decode step's attention (device tensors only, block-table columns past the longest context
    sliced off by the caller, a padding row with an empty context) against the reference, GQA and not."""
    import torch

    from reference_engine.attention import paged_attention_reference, paged_decode_padded
    from tests.kernels._cases import make_case

    seqs = [(1, 1), (37, 1), (64, 1), (130, 1), (17, 1)]
    for heads, kv_heads in ((4, 4), (8, 2)):
        q, kc, vc, meta = make_case(seqs, num_heads=heads, num_kv_heads=kv_heads, head_dim=16, block_size=16,
                                    dtype=torch.float64, device="cpu", seed=heads)
        blocks = -(-130 // 16)
        tables = torch.cat([meta.block_tables[:, :blocks], torch.zeros(1, blocks, dtype=meta.block_tables.dtype)])
        ctx = torch.cat([meta.context_lens, torch.zeros(1, dtype=meta.context_lens.dtype)])
        out = paged_decode_padded(torch.cat([q, torch.randn(1, heads, 16, dtype=q.dtype)]), kc, vc, tables, ctx, 0.25)
        torch.testing.assert_close(out[:-1], paged_attention_reference(q, kc, vc, meta, 0.25), rtol=1e-10, atol=1e-10)
        assert torch.isfinite(out[-1]).all()


def test_start_into_given_tensors_matches_start():
    """``start(out=...)`` (the decode graphs' first piece, captured more than once writing the same tensors) gives
    ``start``'s state, in the given tensors."""
    model = CausalLM(preset_config("tiny"))
    ids, pos = torch.tensor([3, 7, 0, 511]), torch.tensor([0, 5, 9, 2])
    with torch.inference_mode():
        x, res, (cos, sin) = model.start(ids, pos)
        out = model.start_buffers(4)
        x2, res2, (cos2, sin2) = model.start(ids, pos, out=out)
    assert res is None and res2 is None
    assert x2.data_ptr() == out[0].data_ptr() and cos2.data_ptr() == out[1].data_ptr()
    assert torch.equal(x, x2) and torch.equal(cos, cos2) and torch.equal(sin, sin2) and cos2.shape == cos.shape
