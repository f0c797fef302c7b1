"""Tests of the Python package over the C ABI: the issue's minimum API, numpy in and out (float32,
float16, both layouts, no copies where the layout allows), attention against a float64 reference,
compression and decode sessions, forks, snapshots, and every error as a kvcrush.Error subclass
carrying the C message, with the store unchanged."""
import numpy as np
import pytest

import kvcrush

L, QH, KVH, D, N, OBS = 2, 4, 2, 64, 512, 32
SEED = 2026


def exact(rng, *shape):
    """Values exactly representable in FP16 (multiples of 1/256 in [-2, 2])."""
    return (rng.integers(-512, 513, size=shape) / 256).astype(np.float32)


@pytest.fixture
def rng():
    print(f"seed {SEED}")
    return np.random.default_rng(SEED)


@pytest.fixture
def prompt(rng):
    keys = [exact(rng, KVH, N, D) for _ in range(L)]
    values = [exact(rng, KVH, N, D) for _ in range(L)]
    window = [exact(rng, QH, OBS, D) for _ in range(L)]
    return keys, values, window


def prefilled(store, prompt):
    keys, values, _ = prompt
    seq = store.add_sequence()
    for l in range(L):
        store.append(seq, l, keys[l], values[l])
    return seq


def reference(keys, values, queries, scale):
    """float64 attention of [QH, n, D] queries over [KVH, T, D] keys and values (every token)."""
    g = QH // KVH
    k = np.repeat(keys.astype(np.float64), g, axis=0)
    v = np.repeat(values.astype(np.float64), g, axis=0)
    s = np.einsum("hnd,htd->hnt", queries.astype(np.float64), k) * scale
    w = np.exp(s - s.max(axis=-1, keepdims=True))
    w /= w.sum(axis=-1, keepdims=True)
    return np.einsum("hnt,htd->hnd", w, v), w


def test_version_and_presets():
    assert kvcrush.__version__
    p = kvcrush.presets()
    assert list(p) == ["2x", "4x", "6x", "8x"] and p["4x"] == (0.25, 64) and p["6x"] == (1 / 6, 64)


def test_attend_matches_float64_and_layouts(rng):
    store = kvcrush.Store(L, QH, KVH, D)
    k, v, q = exact(rng, KVH, 37, D), exact(rng, KVH, 37, D), exact(rng, QH, 3, D)
    a, b, c = store.add_sequence(), store.add_sequence(), store.add_sequence()
    store.append(a, 0, k, v)
    store.append(b, 0, k.transpose(1, 0, 2), v.transpose(1, 0, 2), layout="token_major")
    store.append(c, 0, k.astype(np.float16), v.astype(np.float16))
    out, w = store.attend(a, 0, q, weights=True)
    assert out.shape == q.shape and out.dtype == np.float32 and w.shape == (QH, 3, 37)
    ref, ref_w = reference(k, v, q, 1 / np.sqrt(D))
    assert np.abs(out - ref).max() < 1e-5
    assert np.abs(w - ref_w).max() < 1e-5
    assert np.array_equal(store.attend(b, 0, q), out)
    assert np.array_equal(store.attend(c, 0, q.astype(np.float16)), out)
    qt = np.ascontiguousarray(q.transpose(1, 0, 2))
    assert np.array_equal(store.attend(a, 0, qt, layout="token_major"), out.transpose(1, 0, 2))
    # float64 and non-contiguous input are converted.
    assert np.array_equal(store.attend(a, 0, q.astype(np.float64)), out)
    assert np.array_equal(store.attend(a, 0, qt.transpose(1, 0, 2)), out)
    # Causal positions: a query at position 0 sees token 0 only.
    causal = store.attend(a, 0, q, positions=[0, 5, 36])
    assert np.array_equal(causal[0, 0], v[0, 0])
    assert store.length(a, 0) == 37 and store.length(a, 1) == 0


def test_sequences_fork_remove(prompt):
    store = kvcrush.Store(L, QH, KVH, D)
    a = prefilled(store, prompt)
    before = store.byte_count
    f = store.fork(a)
    assert store.byte_count == before and store.sequences == [a, f]
    assert store.tier_counts(a) == store.tier_counts(f)
    store.remove(a)
    assert store.sequences == [f] and store.byte_count == before
    with pytest.raises(kvcrush.UnknownSequenceError, match="no sequence"):
        store.remove(a)
    with pytest.raises(kvcrush.UnknownSequenceError):
        store.fork(a)


@pytest.mark.parametrize("policy", ["tiered", "snapkv", "plain", "snapkv+kvcrush", "preset:4x"])
def test_compress_to_budget(prompt, policy):
    store = kvcrush.Store(L, QH, KVH, D)
    seq = prefilled(store, prompt)
    full = store.byte_count
    store.compress(seq, policy, 0.25, prompt[2])
    byte_counts, token_counts = store.tier_counts(seq)
    assert sum(byte_counts.values()) == store.byte_count
    assert store.byte_count <= full / 4 + L * KVH * 4 * 64 * 258
    assert token_counts["fp16"] < L * KVH * N
    with pytest.raises(kvcrush.StateError, match="not a fresh FP16 prefill"):
        store.compress(seq, policy, 0.25, prompt[2])


def test_decode_session_keeps_budget(prompt, rng):
    store = kvcrush.Store(L, QH, KVH, D, preset="4x")
    assert store.preset == "4x"
    seq = prefilled(store, prompt)
    fp16 = store.byte_count
    session = store.compress(seq, "preset:4x", 0, prompt[2], session=True)
    assert session.sequence == seq and session.replan_count == 0
    for step in range(32):
        for l in range(L):
            store.append(seq, l, exact(rng, KVH, 1, D), exact(rng, KVH, 1, D))
            out = session.attend(l, exact(rng, QH, 1, D))
            assert out.shape == (QH, 1, D) and np.isfinite(out).all()
            session.appended(l)
        assert store.byte_count <= fp16 * (N + step + 1) / N / 4 + L * KVH * 4 * 64 * 258
    assert session.replan_count == L * 2
    assert store.compress(store.add_sequence(), "uncompressed", session=True) is None


def test_errors_carry_the_c_message_and_change_nothing(prompt, rng):
    store = kvcrush.Store(L, QH, KVH, D, byte_limit=700_000)
    seq = prefilled(store, prompt)
    before, counts = store.byte_count, store.tier_counts(seq)
    with pytest.raises(kvcrush.PolicyError, match="unknown base 'bogus'"):
        store.compress(seq, "bogus", 0.25, prompt[2])
    with pytest.raises(kvcrush.PolicyError, match="give observation queries"):
        store.compress(seq, "snapkv", 0.25)
    with pytest.raises(kvcrush.InvalidArgumentError, match="one per layer"):
        store.compress(seq, "snapkv", 0.25, prompt[2][:1])
    with pytest.raises(kvcrush.PolicyError, match="sinks and recent window"):
        store.compress(seq, "snapkv", 0.01, prompt[2])
    assert store.byte_count == before and store.tier_counts(seq) == counts
    k = exact(rng, KVH, 1, D)
    bad = k.copy()
    bad[1, 0, 5] = np.nan
    with pytest.raises(kvcrush.InvalidValueError, match=r"kvcrush_append: layer 0, KV head 1, token 0, element 5"):
        store.append(seq, 0, k, bad)
    with pytest.raises(kvcrush.InvalidValueError):
        store.append(seq, 0, np.full((KVH, 1, D), 1e6, np.float32), k)
    with pytest.raises(kvcrush.InvalidArgumentError, match="layer 2 outside"):
        store.append(seq, 2, k, k)
    with pytest.raises(kvcrush.InvalidArgumentError, match="expected"):
        store.append(seq, 0, exact(rng, KVH + 1, 1, D), exact(rng, KVH + 1, 1, D))
    with pytest.raises(kvcrush.UnknownSequenceError, match="no sequence 99"):
        store.append(99, 0, k, k)
    with pytest.raises(kvcrush.ByteLimitError, match="byte limit"):
        for _ in range(100):
            store.append(seq, 0, exact(rng, KVH, 64, D), exact(rng, KVH, 64, D))
    grown, length = store.byte_count, store.length(seq, 0)
    with pytest.raises(kvcrush.ByteLimitError):
        store.append(seq, 0, exact(rng, KVH, 64, D), exact(rng, KVH, 64, D))
    assert store.byte_count == grown and store.length(seq, 0) == length
    q = exact(rng, QH, 1, D)
    q[0, 0, 0] = np.inf
    with pytest.raises(kvcrush.InvalidValueError, match="must be finite"):
        store.attend(seq, 0, q)
    with pytest.raises(kvcrush.Error):
        kvcrush.Store(L, QH, 3, D)
    with pytest.raises(kvcrush.PolicyError, match="unknown preset"):
        kvcrush.Store(L, QH, KVH, D, preset="3x")
    with pytest.raises(TypeError, match="unknown options"):
        kvcrush.Store(L, QH, KVH, D, pages=4)
    assert issubclass(kvcrush.ByteLimitError, kvcrush.Error)


def test_snapshot_round_trip_and_corruption(prompt, rng, tmp_path):
    store = kvcrush.Store(L, QH, KVH, D)
    a = prefilled(store, prompt)
    b = prefilled(store, prompt)
    store.compress(b, "tiered", 0.25, prompt[2])
    path = tmp_path / "store.kvcs"
    store.save(path)
    restored = kvcrush.Store.load(path)
    assert restored.sequences == [a, b] and restored.byte_count == store.byte_count
    q = exact(rng, QH, 2, D)
    for seq in (a, b):
        for l in range(L):
            assert np.array_equal(restored.attend(seq, l, q), store.attend(seq, l, q))
    store.save(tmp_path / "one.kvcs", [b])
    assert kvcrush.Store.load(tmp_path / "one.kvcs").sequences == [b]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40
    (tmp_path / "bad.kvcs").write_bytes(bytes(data))
    with pytest.raises(kvcrush.SnapshotError, match="corrupted"):
        kvcrush.Store.load(tmp_path / "bad.kvcs")
    with pytest.raises(kvcrush.SnapshotError):
        kvcrush.Store.load(tmp_path / "missing.kvcs")
    with pytest.raises(kvcrush.StoreIOError):
        store.save("/nonexistent-dir/x.kvcs")
    with pytest.raises(kvcrush.UnknownSequenceError):
        store.save(tmp_path / "x.kvcs", [12345])


def test_no_copy_for_contiguous_float32(rng):
    """Head-major float32 input is passed by pointer: the library reads the caller's memory."""
    store = kvcrush.Store(1, QH, KVH, D)
    seq = store.add_sequence()
    k = exact(rng, KVH, 5, D)
    from kvcrush import _array, _lib
    a, dtype, n = _array(k, "keys", KVH, D, _lib.HEAD_MAJOR)
    assert a is k and dtype == _lib.F32 and n == 5
    h = k.astype(np.float16)
    assert _array(h, "keys", KVH, D, _lib.HEAD_MAJOR)[0] is h
    store.append(seq, 0, k, k)


def test_readme_example():
    # --- README Python example starts ---
    import numpy as np
    import kvcrush

    rng = np.random.default_rng(0)
    store = kvcrush.Store(layers=1, query_heads=9, kv_heads=3, head_dim=64)
    seq = store.add_sequence()
    keys = rng.standard_normal((3, 300, 64), dtype=np.float32)    # [kv_heads, tokens, head_dim]
    values = rng.standard_normal((3, 300, 64), dtype=np.float32)
    store.append(seq, 0, keys, values)                              # read in place, stored at FP16

    window = rng.standard_normal((9, 32, 64), dtype=np.float32)    # the prompt's last 32 queries
    store.compress(seq, "tiered", 0.25, [window])                   # one array per layer
    out = store.attend(seq, 0, rng.standard_normal((9, 1, 64), dtype=np.float32))  # [9, 1, 64]
    print(store.byte_count, store.tier_counts(seq)[1])              # bytes; tokens per tier

    try:
        store.append(seq, 0, keys[:, :1] * np.inf, values[:, :1])
    except kvcrush.InvalidValueError as e:                          # every error is a kvcrush.Error
        print(e)                                                    # kvcrush_append: layer 0, KV head 0, token 0, element 0: ...
    # --- README Python example ends ---
    assert out.shape == (9, 1, 64) and np.isfinite(out).all()
    assert store.length(seq, 0) == 300
    assert sum(store.tier_counts(seq)[1].values()) < 3 * 300
