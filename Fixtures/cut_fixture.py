#!/usr/bin/env python3
"""Cut Fixtures/smollm2-135m-heapq-fixture.safetensors from the shared FP32 KV dump.

Usage (from anywhere; python3 + numpy only):

    python3 Fixtures/cut_fixture.py [SOURCE] [OUTPUT]

SOURCE defaults to <repo>/../shared/data/smollm2-135m-heapq.safetensors and OUTPUT to
<repo>/Fixtures/smollm2-135m-heapq-fixture.safetensors.

The cut: layers 1, 15 and 29, all 3 KV heads and 9 query heads, all 2048 tokens, all 64 queries
(positions 1984-2047); keys, values and queries rounded to F16 (numpy's float32 -> float16 cast,
round to nearest even); `tokens` kept as I32; metadata copied with `layers` = "1,15,29" and two
keys added, `fixture_of` (the source file name) and `cut` (a one-line description).

The output is written as the reference safetensors implementation writes: compact JSON header,
`__metadata__` first (keys sorted), tensors ordered by element size (largest first) then name,
header padded with spaces to a multiple of 8. The script then re-reads the output, checks it
against the source and prints the F16 rounding error, the size and the SHA-256.
"""

import hashlib
import json
import os
import struct
import sys

import numpy as np

LAYERS = [1, 15, 29]
KINDS = ["keys", "values", "queries"]
DTYPES = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "I32": np.dtype("<i4")}
F16_MIN_NORMAL = 2.0 ** -14


def read_safetensors(path):
    """Returns (metadata, {name: ndarray}) of a safetensors file, checking its layout strictly."""
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n].decode("utf-8"))
    metadata = header.pop("__metadata__", {})
    data = memoryview(blob)[8 + n:]
    tensors = {}
    covered = 0
    for name, info in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"]):
        begin, end = info["data_offsets"]
        assert begin == covered, f"{name}: hole or overlap at {begin}"
        dtype = DTYPES[info["dtype"]]
        count = int(np.prod(info["shape"], dtype=np.int64))
        assert end - begin == count * dtype.itemsize, f"{name}: byte count"
        tensors[name] = np.frombuffer(data[begin:end], dtype=dtype).reshape(info["shape"])
        covered = end
    assert covered == len(data), "trailing bytes"
    return metadata, tensors


def write_safetensors(path, metadata, tensors):
    """Writes {name: ndarray} (little-endian f4/f2/i4) with metadata, as the reference does."""
    names = sorted(tensors, key=lambda k: (-tensors[k].dtype.itemsize, k))
    dtype_names = {np.dtype("<f4"): "F32", np.dtype("<f2"): "F16", np.dtype("<i4"): "I32"}
    header = {"__metadata__": dict(sorted(metadata.items()))}
    offset = 0
    for name in names:
        t = tensors[name]
        header[name] = {"dtype": dtype_names[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * ((8 - len(text) % 8) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for name in names:
            f.write(np.ascontiguousarray(tensors[name]).tobytes())
    os.replace(tmp, path)


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    repo = os.path.dirname(here)
    source = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        repo, "..", "shared", "data", "smollm2-135m-heapq.safetensors")
    output = sys.argv[2] if len(sys.argv) > 2 else os.path.join(
        here, "smollm2-135m-heapq-fixture.safetensors")

    metadata, src = read_safetensors(source)
    assert metadata["format"] == "kv-dump/1"
    layer_list = ",".join(map(str, LAYERS))

    out = {}
    for layer in LAYERS:
        for kind in KINDS:
            name = f"layers.{layer}.{kind}"
            x = src[name]
            assert x.dtype == np.dtype("<f4"), f"{name} is not F32"
            assert np.all(np.abs(x) <= 65504), f"{name} has values outside the F16 range"
            out[name] = x.astype("<f2")  # round to nearest even
    out["tokens"] = src["tokens"].astype("<i4")

    meta = dict(metadata)
    meta["layers"] = layer_list
    meta["fixture_of"] = os.path.basename(source)
    meta["cut"] = (f"layers {layer_list} of {os.path.basename(source)}, all heads, all "
                   f"{meta['tokens']} tokens and {int(meta['tokens']) - int(meta['query_start'])} "
                   f"queries; keys/values/queries F32 -> F16 (round to nearest even); tokens I32")
    write_safetensors(output, meta, out)

    # Re-read and measure.
    meta2, back = read_safetensors(output)
    assert meta2 == meta and set(back) == set(out)
    assert np.array_equal(back["tokens"], src["tokens"])
    max_rel_normal = 0.0
    max_abs_small = 0.0
    small = 0
    total = 0
    for layer in LAYERS:
        for kind in KINDS:
            name = f"layers.{layer}.{kind}"
            x = src[name].astype(np.float64)
            y = back[name].astype(np.float64)
            assert np.all(np.isfinite(y)) and back[name].shape == src[name].shape
            err = np.abs(y - x)
            normal = np.abs(x) >= F16_MIN_NORMAL
            total += x.size
            small += int(np.count_nonzero(~normal))
            if normal.any():
                max_rel_normal = max(max_rel_normal, float(np.max(err[normal] / np.abs(x[normal]))))
            if (~normal).any():
                max_abs_small = max(max_abs_small, float(np.max(err[~normal])))

    size = os.path.getsize(output)
    with open(output, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    print(f"wrote {output}")
    print(f"size: {size} bytes ({size / 2**20:.2f} MiB)")
    print(f"sha256: {digest}")
    print(f"elements converted to F16: {total}")
    print(f"max relative error for |x| >= 2^-14 (F16 normal range): {max_rel_normal:.6e} "
          f"(bound 2^-11 = {2.0 ** -11:.6e})")
    print(f"elements with |x| < 2^-14 (F16 subnormal range): {small}; "
          f"max absolute error there: {max_abs_small:.3e} (bound 2^-25 = {2.0 ** -25:.3e})")


if __name__ == "__main__":
    main()
