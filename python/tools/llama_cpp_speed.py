#!/usr/bin/env python3
"""llama.cpp's prefill and decode speed on the protocol of `kvcrush run`, as a reference point.

Runs a GGUF model through llama-cpp-python (an independent implementation; not a dependency of
the package): the first --prompt-tokens tokens of the text in one prefill call (one batch of the
whole prompt, llama.cpp's default micro-batch of 512), then --steps teacher-forced one-token decode
steps, flash attention, f16 KV cache, logits of the last token only (no log-softmax, no sampling).
Per repetition a fresh context; reports per thread count the median over --repeat runs of prefill
and decode tokens/s, by wall clock around the calls (Python's overhead per decode step is a few
microseconds against milliseconds). Run it on a quiet machine: with 2 threads llama.cpp's OpenMP barriers spin,
and another process on the other core slows it several-fold.

Install: `CMAKE_ARGS="-DGGML_NATIVE=ON" pip install llama-cpp-python==0.3.36` (about 10 minutes).

  python3 python/tools/llama_cpp_speed.py --model M.gguf --text T.txt --threads 2,1 --repeat 3
"""
import argparse
import json
import statistics
import sys
import time


def one_run(llama_cpp, model, tokens, prompt, steps, threads, ubatch):
    llm = llama_cpp.Llama(model_path=model, n_ctx=prompt + steps + 8, n_batch=prompt, n_ubatch=ubatch, n_threads=threads,
                          n_threads_batch=threads, flash_attn=True, type_k=llama_cpp.GGML_TYPE_F16,
                          type_v=llama_cpp.GGML_TYPE_F16, logits_all=False, verbose=False)
    llm.reset()
    t0 = time.perf_counter()
    llm.eval(tokens[:prompt])
    t1 = time.perf_counter()
    for t in tokens[prompt:prompt + steps]:
        llm.eval([t])
    t2 = time.perf_counter()
    del llm
    return {
        "prefillTokensPerSecond": prompt / (t1 - t0),
        "decodeTokensPerSecond": steps / (t2 - t1),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--text", required=True)
    ap.add_argument("--prompt-tokens", type=int, default=1536)
    ap.add_argument("--steps", type=int, default=256, help="one-token decode steps after the prefill")
    ap.add_argument("--threads", default="2,1", help="comma-separated thread counts")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--ubatch", type=int, default=512, help="llama.cpp's micro-batch (its default 512)")
    a = ap.parse_args()
    import llama_cpp

    vocab_only = llama_cpp.Llama(model_path=a.model, vocab_only=True, verbose=False)
    text = open(a.text, encoding="utf-8").read()
    tokens = vocab_only.tokenize(text.encode("utf-8"), add_bos=True)
    del vocab_only
    if len(tokens) < a.prompt_tokens + a.steps:
        sys.exit(f"the text has {len(tokens)} tokens, fewer than {a.prompt_tokens + a.steps}")
    result = {"llamaCppPython": llama_cpp.__version__, "model": a.model.split("/")[-1], "text": a.text.split("/")[-1],
              "promptTokens": a.prompt_tokens, "decodeSteps": a.steps, "ubatch": a.ubatch, "repeat": a.repeat, "threads": {}}
    for threads in [int(t) for t in a.threads.split(",")]:
        runs = [one_run(llama_cpp, a.model, tokens, a.prompt_tokens, a.steps, threads, a.ubatch) for _ in range(a.repeat)]
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        result["threads"][str(threads)] = {"median": med, "runs": runs}
        print(f"{threads} thread(s): prefill {med['prefillTokensPerSecond']:.1f} tok/s, "
              f"decode {med['decodeTokensPerSecond']:.1f} tok/s; runs (prefill/decode): "
              + ", ".join(f"{r['prefillTokensPerSecond']:.0f}/{r['decodeTokensPerSecond']:.1f}" for r in runs), file=sys.stderr)
    try:
        result["loadAverageAfter"] = open("/proc/loadavg").read().split()[:3]
    except OSError:
        pass
    json.dump(result, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
