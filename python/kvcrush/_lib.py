"""ctypes declarations of kvcrush.h (the C ABI), and the status -> exception mapping."""
import ctypes
import os
from ctypes import POINTER, c_char_p, c_double, c_float, c_int32, c_int64, c_size_t, c_uint32, c_uint64, c_void_p
from pathlib import Path

ABI_VERSION = 1


class Config(ctypes.Structure):
    _fields_ = [
        ("struct_size", c_uint32),
        ("layers", c_int32),
        ("query_heads", c_int32),
        ("kv_heads", c_int32),
        ("head_dim", c_int32),
        ("page_capacity", c_int32),
        ("byte_limit", c_int64),
        ("attention_scale", c_float),
        ("attend_threads", c_int32),
        ("preset", c_char_p),
    ]


def _load():
    path = os.environ.get("KVCRUSH_LIBRARY") or str(Path(__file__).resolve().parent / "libKVCrushC.so")
    lib = ctypes.CDLL(path)
    status = c_int32
    store, session, seq = c_void_p, c_void_p, c_uint64
    signatures = {
        "kvcrush_version": (c_char_p, []),
        "kvcrush_abi_version": (c_uint32, []),
        "kvcrush_last_error": (c_char_p, []),
        "kvcrush_config_init": (None, [POINTER(Config)]),
        "kvcrush_preset_count": (c_size_t, []),
        "kvcrush_preset_info": (status, [c_size_t, POINTER(c_char_p), POINTER(c_double), POINTER(c_int32)]),
        "kvcrush_store_create": (status, [POINTER(Config), POINTER(c_void_p)]),
        "kvcrush_store_destroy": (None, [store]),
        "kvcrush_store_config": (status, [store, POINTER(Config)]),
        "kvcrush_sequence_add": (status, [store, POINTER(c_uint64)]),
        "kvcrush_sequence_fork": (status, [store, seq, POINTER(c_uint64)]),
        "kvcrush_sequence_remove": (status, [store, seq]),
        "kvcrush_sequences": (status, [store, POINTER(c_uint64), c_size_t, POINTER(c_size_t)]),
        "kvcrush_sequence_length": (status, [store, seq, c_int32, POINTER(c_int64)]),
        "kvcrush_append": (status, [store, seq, c_int32, c_void_p, c_void_p, c_size_t, c_size_t, c_int32, c_int32]),
        "kvcrush_attend": (status, [store, seq, c_int32, c_void_p, c_size_t, c_size_t, c_int32, c_int32, c_void_p,
                                    c_void_p, c_size_t, c_void_p, c_size_t]),
        "kvcrush_compress": (status, [store, seq, c_char_p, c_double, c_void_p, c_size_t, c_size_t, POINTER(c_void_p)]),
        "kvcrush_session_attend": (status, [session, c_int32, c_void_p, c_size_t, c_size_t, c_int32, c_int32, c_void_p, c_size_t]),
        "kvcrush_session_appended": (status, [session, c_int32, c_size_t]),
        "kvcrush_session_info": (status, [session, POINTER(c_uint64), POINTER(c_int64)]),
        "kvcrush_session_destroy": (None, [session]),
        "kvcrush_byte_count": (status, [store, POINTER(c_int64)]),
        "kvcrush_tier_counts": (status, [store, seq, c_int32, POINTER(c_int64), POINTER(c_int64)]),
        "kvcrush_store_save": (status, [store, c_char_p, POINTER(c_uint64), c_size_t]),
        "kvcrush_store_load": (status, [c_char_p, POINTER(c_void_p)]),
    }
    for name, (restype, argtypes) in signatures.items():
        f = getattr(lib, name)
        f.restype, f.argtypes = restype, argtypes
    if lib.kvcrush_abi_version() != ABI_VERSION:
        raise ImportError(f"kvcrush: {path} implements ABI {lib.kvcrush_abi_version()}, this package needs {ABI_VERSION}")
    return lib


lib = _load()

F32, F16 = 0, 1
HEAD_MAJOR, TOKEN_MAJOR = 0, 1
TIERS = ("fp16", "int8", "int4", "int2")
