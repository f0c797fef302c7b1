#!/usr/bin/env python3
"""llama.cpp's quantised KV caches on the protocol of `kvcrush run`, as reference points.

Runs a GGUF model through llama-cpp-python (an independent implementation; not a dependency of
the package) once per KV-cache type: the first --prompt-tokens tokens of the text in one prefill,
then the next --continue tokens teacher-forced through one-token decode steps, flash attention,
--threads threads. Reports per cache type the perplexity over the continuation (the prefill's
prediction of the first continued token included, llama.cpp's count), its change against the f16
cache, the mean KL divergence of the next-token distributions to the f16 run, and the cache's bytes
as a share of f16 (ggml block sizes: q8_0 34 B and q4_0 18 B per 32 elements, f16 64 B).

Writes CSV (name,ratio,kld,perplexityDelta,perplexity) that `kvcrush run --reference-points FILE`
draws beside its own configurations. Install: `CMAKE_ARGS="-DGGML_NATIVE=ON" pip install
llama-cpp-python==0.3.36` (about 10 minutes to build). The tokenizer is llama.cpp's own, with BOS
when the model asks for it, so token counts can differ slightly from `kvcrush run`'s.

  python3 python/tools/llama_cpp_reference.py --model M.gguf --text T.txt --output ref.csv
"""
import argparse
import math
import sys

import numpy as np

BYTES_PER_32 = {"f16": 64, "q8_0": 34, "q4_0": 18, "q4_1": 20, "q5_0": 22, "q5_1": 24}


def run(model, tokens, prompt, cont, cache, threads):
    import llama_cpp

    kind = getattr(llama_cpp, "GGML_TYPE_" + cache.upper())
    llm = llama_cpp.Llama(model_path=model, n_ctx=prompt + cont + 8, n_batch=prompt, n_ubatch=512, n_threads=threads,
                          n_threads_batch=threads, flash_attn=True, type_k=kind, type_v=kind, logits_all=True, verbose=False)
    llm.reset()
    llm.eval(tokens[:prompt])
    logps = []

    def logprobs():
        z = np.asarray(llm.scores[llm.n_tokens - 1], dtype=np.float64)
        z = z - z.max()
        return z - math.log(np.exp(z).sum())

    logps.append(logprobs())
    for t in tokens[prompt:prompt + cont - 1]:
        llm.eval([t])
        logps.append(logprobs())
    del llm
    return np.stack(logps)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--text", required=True)
    ap.add_argument("--prompt-tokens", type=int, default=1536)
    ap.add_argument("--continue", dest="cont", type=int, default=512)
    ap.add_argument("--caches", default="q8_0,q4_0", help="cache types besides the f16 reference")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--output", default="-")
    a = ap.parse_args()
    import llama_cpp

    vocab_only = llama_cpp.Llama(model_path=a.model, vocab_only=True, verbose=False)
    text = open(a.text, encoding="utf-8").read()
    tokens = vocab_only.tokenize(text.encode("utf-8"), add_bos=True)
    if len(tokens) < a.prompt_tokens + a.cont:
        sys.exit(f"the text has {len(tokens)} tokens, fewer than {a.prompt_tokens + a.cont}")
    targets = np.array(tokens[a.prompt_tokens:a.prompt_tokens + a.cont])
    ref = run(a.model, tokens, a.prompt_tokens, a.cont, "f16", a.threads)
    ref_ppl = math.exp(-ref[np.arange(a.cont), targets].mean())
    rows = [("llama.cpp f16", 1.0, 0.0, 0.0, ref_ppl)]
    for cache in a.caches.split(","):
        lp = run(a.model, tokens, a.prompt_tokens, a.cont, cache, a.threads)
        ppl = math.exp(-lp[np.arange(a.cont), targets].mean())
        kld = float((np.exp(ref) * (ref - lp)).sum(axis=1).mean())
        rows.append((f"llama.cpp {cache}", BYTES_PER_32[cache] / BYTES_PER_32["f16"], kld, ppl / ref_ppl - 1, ppl))
        print(f"{cache}: perplexity {ppl:.4f} ({100 * (ppl / ref_ppl - 1):+.2f}%), KLD {kld:.5f}", file=sys.stderr)
    out = sys.stdout if a.output == "-" else open(a.output, "w")
    out.write(f"# llama-cpp-python {llama_cpp.__version__}, {a.model.split('/')[-1]}, {a.text.split('/')[-1]}, "
              f"prompt {a.prompt_tokens} + {a.cont}, {len(tokens)} tokens with BOS, {a.threads} threads, flash attention\n")
    out.write("name,ratio,kld,perplexityDelta,perplexity\n")
    for r in rows:
        out.write(f"{r[0]},{r[1]:.6f},{r[2]:.6f},{r[3]:.6f},{r[4]:.6f}\n")


if __name__ == "__main__":
    main()
