"""Tests of kvcrush.hf (the transformers cache over the store) on tiny randomly initialised Llama
models built from a LlamaConfig (nothing downloaded): uncompressed logits against DynamicCache
within the FP16 bound, attention of every layer and step within its derived bound, generate, the
budget at every decode step when compressed, presets, and errors as kvcrush.Error subclasses.
Skipped when torch or transformers is missing (pip install ./python[hf])."""
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import kvcrush  # noqa: E402
from kvcrush.hf import KVCrushCache, kvcrush_attention_forward  # noqa: E402
from transformers import AttentionInterface, DynamicCache, LlamaConfig, LlamaForCausalLM  # noqa: E402
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask  # noqa: E402

SEED = 2026
U16 = 2.0 ** -11  # FP16 unit roundoff (round to nearest): |fl16(x) - x| <= U16 |x| in the normal range


def tiny_model(head_dim=32, layers=2, init=0.1, attn="kvcrush"):
    """A 2-layer Llama with 4 query heads over 2 KV heads (GQA). init 0.1 (not 0.02) so that
    attention is far from uniform and logits are O(1)."""
    torch.manual_seed(SEED)
    config = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=head_dim, max_position_embeddings=4096,
                         initializer_range=init)
    model = LlamaForCausalLM(config).eval()
    model.set_attn_implementation(attn)
    return model


def tokens(n, seed=SEED):
    print(f"seed {seed}")
    return torch.randint(0, 128, (1, n), generator=torch.Generator().manual_seed(seed))


class FP16DynamicCache(DynamicCache):
    """DynamicCache holding keys and values rounded to FP16 (what the store keeps), in FP32."""

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        return super().update(key_states.half().float(), value_states.half().float(), layer_idx, *args, **kwargs)


def teacher_forced(model, cache, ids, prompt):
    """Last-position logits of the prefill of ids[:prompt], then of each one-token step."""
    with torch.no_grad():
        out = [model(ids[:, :prompt], cache=cache).logits[0, -1]]
        for t in range(prompt, ids.shape[1]):
            out.append(model(ids[:, t:t + 1], cache=cache).logits[0, -1])
    return torch.stack(out)


def test_uncompressed_logits_match_dynamic_cache():
    """KVCrushCache() keeps every token at FP16: its logits are those of a DynamicCache holding
    FP16-rounded keys and values up to FP32 reordering (the store sums in its own order; measured
    4e-6 x max|logit|, allowed 1e-4 x max|logit|), so their distance to plain DynamicCache is the
    FP16 rounding's own effect plus that slack."""
    model = tiny_model()
    ids = tokens(80)
    dynamic = teacher_forced(model, DynamicCache(config=model.config), ids, 64)
    fp16 = teacher_forced(model, FP16DynamicCache(config=model.config), ids, 64)
    cache = KVCrushCache()
    store = teacher_forced(model, cache, ids, 64)
    scale = dynamic.abs().max().item()
    slack = 1e-4 * scale
    fp16_effect = (fp16 - dynamic).abs().max().item()
    print(f"max|logit| {scale:.3f}; |store - fp16| {(store - fp16).abs().max().item():.2e}; "
          f"|store - dynamic| {(store - dynamic).abs().max().item():.2e}; |fp16 - dynamic| {fp16_effect:.2e}")
    assert (store - fp16).abs().max().item() <= slack
    assert (store - dynamic).abs().max().item() <= fp16_effect + slack
    # And FP16 storage is a small perturbation: relative to the logits, a few FP16 roundoffs.
    assert fp16_effect <= 8 * U16 * scale
    assert cache.get_seq_length() == 80 and cache.tier_counts()[1] == {"fp16": 2 * 2 * 80, "int8": 0, "int4": 0, "int2": 0}


def test_multi_token_forward_after_prefill_is_causal():
    """A second multi-token forward (a chunked prompt) attends causally through the store (the
    materialised causal mask is recognised), with the same bound as one-token steps."""
    model = tiny_model()
    ids = tokens(96)
    outs = {}
    for name, cache in (("fp16", FP16DynamicCache(config=model.config)), ("store", KVCrushCache())):
        with torch.no_grad():
            model(ids[:, :64], cache=cache)
            outs[name] = model(ids[:, 64:], cache=cache).logits[0]
    assert (outs["store"] - outs["fp16"]).abs().max().item() <= 1e-4 * outs["fp16"].abs().max().item()


@pytest.mark.parametrize("head_dim", [16, 32])
def test_attention_within_fp16_bound_every_layer_and_step(head_dim):
    """Every attention output the store returns, against float64 attention over the unrounded
    keys and values the model produced (same queries). Rounding keys and values to FP16 moves
    each score s_i by at most D_i = scale U16 sum_d |q_d k_id| and each value by U16 |v|, so
    softmax weights move by a factor within e^(+-2D), D = max_i D_i, and
    |o' - o| <= max|v| (U16 + (1 + U16)(e^(2D) - 1)), plus FP32 rounding (1e-5 max|v|)."""
    model = tiny_model(head_dim=head_dim)
    seen = []

    def probe(module, query, key, value, attention_mask, **kwargs):
        out, w = kvcrush_attention_forward(module, query, key, value, attention_mask, **kwargs)
        seen.append((module.layer_idx, query.clone(), key.clone(), value.clone(), out.clone(), module.scaling))
        return out, w

    AttentionInterface.register("kvcrush_probe", probe)
    AttentionMaskInterface.register("kvcrush_probe", sdpa_mask)
    model.set_attn_implementation("kvcrush_probe")
    teacher_forced(model, KVCrushCache(), tokens(50), 40)
    keys, values, checked = {}, {}, 0
    for layer, q, k, v, out, scale in seen:
        keys[layer] = torch.cat([keys[layer], k], 2) if layer in keys else k
        values[layer] = torch.cat([values[layer], v], 2) if layer in values else v
        K = keys[layer][0].double().repeat_interleave(2, 0)  # [query_heads, T, D]
        V = values[layer][0].double().repeat_interleave(2, 0)
        Q = q[0].double()
        n, T = Q.shape[1], K.shape[1]
        s = torch.einsum("hnd,htd->hnt", Q, K) * scale
        s = s.masked_fill(torch.arange(T)[None, :] > torch.arange(T - n, T)[:, None], -math.inf)
        exact = torch.einsum("hnt,htd->hnd", torch.softmax(s, -1), V).transpose(0, 1)  # [n, heads, D]
        delta = (scale * U16 * torch.einsum("hnd,htd->hnt", Q.abs(), K.abs())).max().item()
        vmax = V.abs().max().item()
        bound = vmax * (U16 + (1 + U16) * math.expm1(2 * delta)) + 1e-5 * vmax
        err = (out[0].double() - exact).abs().max().item()
        assert err <= bound, f"layer {layer}, {n} queries over {T}: error {err:.3e} > bound {bound:.3e}"
        checked += 1
    assert checked == 2 * (1 + 10)
    print(f"head_dim {head_dim}: {checked} attention calls within the bound (last: error {err:.2e}, bound {bound:.2e})")


def test_generate_uncompressed_and_compressed():
    model = tiny_model()
    ids = tokens(512)
    reference = model.generate(ids, cache=DynamicCache(config=model.config), max_new_tokens=24, do_sample=False)
    full = model.generate(ids, cache=KVCrushCache(), max_new_tokens=24, do_sample=False)
    assert torch.equal(full, reference)
    cache = KVCrushCache(policy="tiered", budget=0.25)
    compressed = model.generate(ids, cache=cache, max_new_tokens=24, do_sample=False)
    assert compressed.shape == (1, 512 + 24) and torch.equal(compressed[:, :512], ids)
    assert cache.get_seq_length() == 512 + 23 and cache.sessions[0] is not None
    agree = (compressed[0, 512:] == reference[0, 512:]).float().mean().item()
    print(f"greedy tokens equal to DynamicCache's: uncompressed 24/24, tiered 0.25 {agree:.2f}")
    # The deprecated past_key_values= spelling reaches the same cache.
    again = model.generate(ids, past_key_values=KVCrushCache(), max_new_tokens=4, do_sample=False)
    assert torch.equal(again, reference[:, :516])


def fp16_page_bytes(head_dim, page):
    """Bytes of one FP16 page of `page` slots of one stream (a scratch store's first page)."""
    s = kvcrush.Store(1, 1, 1, head_dim, page_capacity=page)
    seq = s.add_sequence()
    x = np.zeros((1, 1, head_dim), np.float32)
    s.append(seq, 0, x, x)
    return s.byte_count


@pytest.mark.parametrize("policy,budget,page", [("tiered", 0.25, 32), ("snapkv", 0.25, 32), ("preset:4x", None, 64)])
def test_compressed_cache_stays_within_budget_every_step(policy, budget, page):
    """After the prefill and after every decode step: bytes <= budget x (the FP16 bytes of the
    tokens held) + slack, slack = one page per tier (4) per stream at FP16 page size (each tier
    may have one partly filled page; lower tiers' pages are smaller)."""
    model = tiny_model()
    layers, kv_heads, head_dim = 2, 2, 32
    preset = policy[len("preset:"):] if policy.startswith("preset:") else None
    fraction = budget if budget is not None else kvcrush.presets()[preset][0]
    # Presets keep FP16 (the decode headroom) in pages of 16 slots (and INT8 too), INT4 in pages of `page`.
    fp16_page = 16 if preset else page
    page_bytes = fp16_page_bytes(head_dim, fp16_page)
    slack = layers * kv_heads * 4 * fp16_page_bytes(head_dim, page)
    ids = tokens(512 + 96)
    cache = KVCrushCache(policy=policy, budget=budget)
    worst = 0.0
    with torch.no_grad():
        model(ids[:, :512], cache=cache)
        for t in range(512, ids.shape[1] + 1):
            n = cache.get_seq_length()
            fp16 = layers * kv_heads * math.ceil(n / fp16_page) * page_bytes
            assert cache.byte_count <= fraction * fp16 + slack, f"{n} tokens: {cache.byte_count} bytes > {fraction} x {fp16} + {slack}"
            worst = max(worst, cache.byte_count / fp16)
            if t < ids.shape[1]:
                model(ids[:, t:t + 1], cache=cache)
    assert cache.sessions[0].replan_count >= layers  # the decode session re-planned every layer
    assert worst < 0.5
    print(f"{policy} {fraction}: largest bytes / FP16 bytes over 97 steps {worst:.3f} (bound {fraction} + slack)")


def test_errors_are_kvcrush_errors():
    model = tiny_model()
    ids = tokens(512)
    with pytest.raises(kvcrush.PolicyError, match="budget must be finite"):
        KVCrushCache(policy="tiered", budget=float("nan"))
    with pytest.raises(kvcrush.PolicyError, match="unknown preset"):
        KVCrushCache(policy="preset:3x")
    with pytest.raises(kvcrush.InvalidArgumentError, match="observation_window"):
        KVCrushCache(observation_window=0)
    # An unknown policy name is the store's PolicyError (at the end of the prefill); the cache is then unusable.
    cache = KVCrushCache(policy="bogus", budget=0.25)
    with torch.no_grad(), pytest.raises(kvcrush.PolicyError, match="unknown base 'bogus'"):
        model(ids, cache=cache)
    with torch.no_grad(), pytest.raises(kvcrush.StateError, match="unusable after an earlier error"):
        model(ids[:, :1], cache=cache)
    # A prompt too short for the budget to hold the sinks and recent window.
    with torch.no_grad(), pytest.raises(kvcrush.PolicyError, match="sinks and recent window"):
        model(ids[:, :100], cache=KVCrushCache(policy="tiered", budget=0.25))
    # A byte limit the prompt does not fit in.
    with torch.no_grad(), pytest.raises(kvcrush.ByteLimitError, match="byte limit"):
        model(ids, cache=KVCrushCache(byte_limit=10_000))
    # Padding (a 2D attention mask with zeros) is not plain causal attention.
    mask = torch.ones_like(ids[:, :64])
    mask[0, :3] = 0
    with torch.no_grad(), pytest.raises(kvcrush.InvalidArgumentError, match="only plain causal attention"):
        model(ids[:, :64], attention_mask=mask, cache=KVCrushCache())
    # A KVCrushCache with another attention implementation would attend over the new tokens only.
    sdpa = tiny_model(attn="sdpa")
    with torch.no_grad(), pytest.raises(kvcrush.StateError, match="attn_implementation='kvcrush'"):
        sdpa(ids[:, :8], cache=KVCrushCache())
    with pytest.raises(kvcrush.StateError, match="beam search"):
        KVCrushCache().reorder_cache(torch.tensor([0]))
    assert all(issubclass(e, kvcrush.Error) for e in (kvcrush.PolicyError, kvcrush.StateError, kvcrush.ByteLimitError))


def test_kvcrush_attention_without_a_kvcrush_cache_is_sdpa():
    model = tiny_model()
    ids = tokens(40)
    sdpa = tiny_model(attn="sdpa")
    with torch.no_grad():
        a = model(ids, cache=DynamicCache(config=model.config)).logits
        b = sdpa(ids, cache=DynamicCache(config=model.config)).logits
    assert torch.equal(a, b)


def test_readme_hf_example():
    # --- README HF example starts ---
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    import kvcrush.hf                                   # registers attn_implementation="kvcrush"
    from kvcrush.hf import KVCrushCache

    # A real model: AutoModelForCausalLM.from_pretrained(path, attn_implementation="kvcrush")
    config = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=32, initializer_range=0.1)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    model.set_attn_implementation("kvcrush")
    prompt = torch.randint(0, 128, (1, 512))

    cache = KVCrushCache(policy="tiered", budget=0.25)   # KVCrushCache(): every token at FP16
    out = model.generate(prompt, cache=cache, max_new_tokens=32, do_sample=False)
    print(cache.byte_count, cache.tier_counts()[1])     # bytes; tokens per tier (both layers)
    # --- README HF example ends ---
    assert out.shape == (1, 544)
    assert sum(cache.tier_counts()[1].values()) < 2 * 2 * 543
