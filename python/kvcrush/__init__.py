"""KVCrush: a paged mixed-precision KV cache, from numpy (ctypes over the C ABI, kvcrush.h).

    store = kvcrush.Store(layers=1, query_heads=9, kv_heads=3, head_dim=64)
    seq = store.add_sequence()
    store.append(seq, 0, keys, values)            # [kv_heads, tokens, head_dim], float32 or float16
    out = store.attend(seq, 0, queries)           # [query_heads, n, head_dim] -> same shape, float32
    store.compress(seq, "tiered", 0.25, [window]) # one [query_heads, n, head_dim] array per layer

Arrays are passed to the library without a copy when they are C-contiguous float32 (or float16 for
append) in the layout asked for; anything else is converted once. Every error the library reports
raises a subclass of `kvcrush.Error` carrying its message, and the store is then unchanged.

Thread safety: a `Store` may be used from several threads (the library locks); a `DecodeSession`
from one thread at a time.

`kvcrush.hf` (needs torch and transformers: `pip install ./python[hf]`) is a Hugging Face
`transformers` cache over a store, `KVCrushCache`, with the "kvcrush" attention implementation.
"""
import ctypes
import os
from ctypes import byref, c_char_p, c_double, c_int32, c_int64, c_size_t, c_uint64, c_void_p

import numpy as np

from . import _lib
from ._lib import lib

__all__ = ["Store", "DecodeSession", "Error", "NullPointerError", "InvalidArgumentError", "UnknownSequenceError",
           "InvalidValueError", "ByteLimitError", "PolicyError", "StateError", "SnapshotError", "StoreIOError",
           "presets", "__version__"]

__version__ = lib.kvcrush_version().decode()


class Error(Exception):
    """An error the library reported: `status` (the C status code) and `message` (its text)."""

    def __init__(self, message, status=None):
        super().__init__(message)
        self.message, self.status = message, status


class NullPointerError(Error):
    """A required argument was missing."""


class InvalidArgumentError(Error, ValueError):
    """A shape, count, index, layout, dtype or configuration field is wrong."""


class UnknownSequenceError(Error, KeyError):
    """No sequence with this id in the store."""

    def __str__(self):
        return self.message


class InvalidValueError(Error, ValueError):
    """A non-finite value, one beyond FP16's range, or queries so large their scores overflow."""


class ByteLimitError(Error, MemoryError):
    """The store's byte limit would be exceeded (nothing was changed)."""


class PolicyError(Error, ValueError):
    """An unknown policy or preset name, or a budget it cannot meet."""


class StateError(Error):
    """The sequence is not in the state the call needs (e.g. compress on a sequence compressed already)."""


class SnapshotError(Error):
    """A snapshot is unreadable, corrupt, or does not fit."""


class StoreIOError(Error, OSError):
    """A snapshot could not be written."""


_ERRORS = {1: NullPointerError, 2: InvalidArgumentError, 3: UnknownSequenceError, 4: InvalidValueError,
           5: ByteLimitError, 6: PolicyError, 7: StateError, 8: SnapshotError, 9: StoreIOError}


def _check(status):
    if status != 0:
        raise _ERRORS.get(status, Error)(lib.kvcrush_last_error().decode(), status)


def presets():
    """The presets, least compression first: {name: (budget, page_capacity)}."""
    result = {}
    for i in range(lib.kvcrush_preset_count()):
        name, budget, page = c_char_p(), c_double(), c_int32()
        _check(lib.kvcrush_preset_info(i, byref(name), byref(budget), byref(page)))
        result[name.value.decode()] = (budget.value, page.value)
    return result


_LAYOUTS = {"head_major": _lib.HEAD_MAJOR, "token_major": _lib.TOKEN_MAJOR}


def _array(x, name, heads, head_dim, layout, float16=True):
    """`x` as a C-contiguous float32 (or float16) array of [heads, n, head_dim] (head-major) or
    [n, heads, head_dim] (token-major), with its dtype code and n; a copy only when needed."""
    x = np.asarray(x)
    if x.dtype != np.float32 and not (float16 and x.dtype == np.float16):
        x = x.astype(np.float32)
    x = np.ascontiguousarray(x)
    if x.ndim != 3:
        raise InvalidArgumentError(f"{name} must have 3 dimensions, got shape {x.shape}")
    n = x.shape[1] if layout == _lib.HEAD_MAJOR else x.shape[0]
    expected = (heads, n, head_dim) if layout == _lib.HEAD_MAJOR else (n, heads, head_dim)
    if x.shape != expected:
        raise InvalidArgumentError(f"{name} has shape {x.shape}, expected {expected}")
    return x, (_lib.F16 if x.dtype == np.float16 else _lib.F32), n


def _layout(layout):
    try:
        return _LAYOUTS[layout]
    except KeyError:
        raise InvalidArgumentError(f"layout must be 'head_major' or 'token_major', got {layout!r}") from None


class Store:
    """A paged mixed-precision KV cache for many sequences (`kvcrush_store`).

    `Store(layers, query_heads, kv_heads, head_dim, byte_limit=None, **options)`, options:
    `page_capacity` (token slots per page, default 32), `attention_scale` (default 1/sqrt(head_dim)),
    `attend_threads` (default: all cores), `preset` ("2x", "4x", "6x", "8x": that preset's formats).
    """

    _OPTIONS = ("page_capacity", "attention_scale", "attend_threads", "preset")

    def __init__(self, layers, query_heads, kv_heads, head_dim, byte_limit=None, **options):
        unknown = set(options) - set(self._OPTIONS)
        if unknown:
            raise TypeError(f"Store: unknown options {sorted(unknown)} (expected {', '.join(self._OPTIONS)})")
        config = _lib.Config()
        lib.kvcrush_config_init(byref(config))
        config.layers, config.query_heads, config.kv_heads, config.head_dim = layers, query_heads, kv_heads, head_dim
        config.byte_limit = -1 if byte_limit is None else byte_limit
        if "page_capacity" in options:
            config.page_capacity = options["page_capacity"]
        if "attention_scale" in options:
            config.attention_scale = options["attention_scale"]
        if "attend_threads" in options:
            config.attend_threads = options["attend_threads"]
        if options.get("preset") is not None:
            config.preset = str(options["preset"]).encode()
        handle = c_void_p()
        _check(lib.kvcrush_store_create(byref(config), byref(handle)))
        self._adopt(handle)

    def _adopt(self, handle):
        self._handle = handle
        config = _lib.Config()
        _check(lib.kvcrush_store_config(handle, byref(config)))
        self.layers, self.query_heads, self.kv_heads, self.head_dim = (
            config.layers, config.query_heads, config.kv_heads, config.head_dim)
        self.byte_limit = None if config.byte_limit < 0 else config.byte_limit
        self.preset = config.preset.decode() if config.preset else None

    @classmethod
    def load(cls, path):
        """A new store restored from the snapshot at `path` (configuration and sequence ids)."""
        handle = c_void_p()
        _check(lib.kvcrush_store_load(os.fsencode(path), byref(handle)))
        store = cls.__new__(cls)
        store._adopt(handle)
        return store

    def close(self):
        """Releases the store (sessions keep it alive until they are closed)."""
        if getattr(self, "_handle", None):
            lib.kvcrush_store_destroy(self._handle)
            self._handle = None

    __del__ = close

    def __enter__(self):
        return self

    def __exit__(self, *_):
        self.close()

    # Sequences

    def add_sequence(self):
        """Adds an empty sequence and returns its id."""
        seq = c_uint64()
        _check(lib.kvcrush_sequence_add(self._handle, byref(seq)))
        return seq.value

    def fork(self, seq):
        """A new sequence sharing every page with `seq` (copy-on-write); returns its id."""
        new = c_uint64()
        _check(lib.kvcrush_sequence_fork(self._handle, seq, byref(new)))
        return new.value

    def remove(self, seq):
        """Removes a sequence, freeing the pages no other sequence shares."""
        _check(lib.kvcrush_sequence_remove(self._handle, seq))

    @property
    def sequences(self):
        """The ids of the store's sequences, in creation order."""
        count = c_size_t()
        _check(lib.kvcrush_sequences(self._handle, None, 0, byref(count)))
        ids = (c_uint64 * max(count.value, 1))()
        _check(lib.kvcrush_sequences(self._handle, ids, count.value, byref(count)))
        return list(ids[: count.value])

    def length(self, seq, layer=0):
        """Tokens ever appended to `layer` of `seq`."""
        n = c_int64()
        _check(lib.kvcrush_sequence_length(self._handle, seq, layer, byref(n)))
        return n.value

    # Appending and attention

    def append(self, seq, layer, keys, values, layout="head_major"):
        """Appends tokens at FP16 at the next positions of `layer`: keys and values
        [kv_heads, tokens, head_dim] (or [tokens, kv_heads, head_dim] with layout="token_major"),
        float32 or float16 (read in place when C-contiguous)."""
        code = _layout(layout)
        k, kt, n = _array(keys, "keys", self.kv_heads, self.head_dim, code)
        v, vt, nv = _array(values, "values", self.kv_heads, self.head_dim, code)
        if k.shape != v.shape or kt != vt:
            if k.shape != v.shape:
                raise InvalidArgumentError(f"keys have shape {k.shape}, values {v.shape}")
            k, v, kt = k.astype(np.float32), v.astype(np.float32), _lib.F32
        _check(lib.kvcrush_append(self._handle, seq, layer, k.ctypes.data, v.ctypes.data, k.size, n, kt, code))

    def attend(self, seq, layer, queries, weights=False, positions=None, layout="head_major"):
        """Decode attention of each query row over every token stored in `layer` of `seq` (or, with
        `positions`, over those at or before each query's position). `queries` [query_heads, n,
        head_dim] -> an array of the same shape (float32). With `weights=True`, also the attention
        weights [query_heads, n, length] over positions 0 ..< length (0 where nothing is stored)."""
        code = _layout(layout)
        q, qt, n = _array(queries, "queries", self.query_heads, self.head_dim, code)
        out = np.empty(q.shape, dtype=np.float32)
        pos = None
        if positions is not None:
            pos = np.ascontiguousarray(positions, dtype=np.int32)
            if pos.shape != (n,):
                raise InvalidArgumentError(f"positions has shape {pos.shape}, expected ({n},)")
        w = None
        if weights:
            w = np.empty((self.query_heads, n, self.length(seq, layer)), dtype=np.float32)
        _check(lib.kvcrush_attend(self._handle, seq, layer, q.ctypes.data, q.size, n, qt, code,
                                  None if pos is None else pos.ctypes.data, out.ctypes.data, out.size,
                                  None if w is None else w.ctypes.data, 0 if w is None else w.size))
        return (out, w) if weights else out

    # Compression

    def compress(self, seq, policy, budget=0.0, observation_queries=None, session=False):
        """Compresses a freshly prefilled sequence with `policy` (names as in `kvcrush run`:
        "tiered", "snapkv+kvcrush", "plain", "uniform-int4", "preset:4x", ...) to `budget` (a
        fraction of the FP16 bytes), scoring tokens by `observation_queries` (one [query_heads, n,
        head_dim] array per layer: the prompt's last n queries). With `session=True`, returns the
        `DecodeSession` that keeps the budget while generating (None for unbudgeted policies)."""
        arrays = []
        n = 0
        if observation_queries is not None:
            if len(observation_queries) != self.layers:
                raise InvalidArgumentError(f"observation_queries has {len(observation_queries)} arrays, expected one per layer ({self.layers})")
            for l, q in enumerate(observation_queries):
                a, _, nl = _array(q, f"observation_queries[{l}]", self.query_heads, self.head_dim, _lib.HEAD_MAJOR, float16=False)
                if l and nl != n:
                    raise InvalidArgumentError(f"observation_queries[{l}] has {nl} queries, [0] has {n}")
                arrays.append(a)
                n = nl
        pointers = (ctypes.c_void_p * max(len(arrays), 1))(*[a.ctypes.data for a in arrays])
        handle = c_void_p()
        _check(lib.kvcrush_compress(self._handle, seq, str(policy).encode(), float(budget),
                                    pointers if arrays else None, arrays[0].size if arrays else 0, n,
                                    byref(handle) if session else None))
        if session and handle.value:
            return DecodeSession(self, handle)
        return None

    # Memory and snapshots

    @property
    def byte_count(self):
        """Bytes of every page in use, each counted once."""
        b = c_int64()
        _check(lib.kvcrush_byte_count(self._handle, byref(b)))
        return b.value

    def tier_counts(self, seq, layer=-1):
        """({tier: bytes}, {tier: tokens}) of `seq` over `layer`'s streams, or every layer's (-1)."""
        b, t = (c_int64 * 4)(), (c_int64 * 4)()
        _check(lib.kvcrush_tier_counts(self._handle, seq, layer, b, t))
        return dict(zip(_lib.TIERS, b)), dict(zip(_lib.TIERS, t))

    def save(self, path, sequences=None):
        """Saves `sequences` (default: all) to `path` atomically."""
        if sequences is None:
            _check(lib.kvcrush_store_save(self._handle, os.fsencode(path), None, 0))
        else:
            ids = (c_uint64 * max(len(sequences), 1))(*sequences)
            _check(lib.kvcrush_store_save(self._handle, os.fsencode(path), ids, len(sequences)))


class DecodeSession:
    """Keeps one sequence within its compression budget while generating (`kvcrush_session`).

    Per decode step and layer: `store.append(...)` the new token, `session.attend(layer, queries)`
    (attention that also feeds the session's scores), then `session.appended(layer)`."""

    def __init__(self, store, handle):
        self.store, self._handle = store, handle

    def attend(self, layer, queries, layout="head_major"):
        """Like `Store.attend` over the session's sequence, recording the attention weights."""
        code = _layout(layout)
        s = self.store
        q, qt, n = _array(queries, "queries", s.query_heads, s.head_dim, code)
        out = np.empty(q.shape, dtype=np.float32)
        _check(lib.kvcrush_session_attend(self._handle, layer, q.ctypes.data, q.size, n, qt, code, out.ctypes.data, out.size))
        return out

    def appended(self, layer, count=1):
        """Notes `count` tokens appended to `layer`; re-plans the layer when enough have arrived."""
        _check(lib.kvcrush_session_appended(self._handle, layer, count))

    @property
    def sequence(self):
        seq = c_uint64()
        _check(lib.kvcrush_session_info(self._handle, byref(seq), None))
        return seq.value

    @property
    def replan_count(self):
        n = c_int64()
        _check(lib.kvcrush_session_info(self._handle, None, byref(n)))
        return n.value

    def close(self):
        if getattr(self, "_handle", None):
            lib.kvcrush_session_destroy(self._handle)
            self._handle = None

    __del__ = close
