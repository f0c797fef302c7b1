"""Hugging Face `transformers` integration: a `Cache` whose keys and values live in a KVCrush store,
and the "kvcrush" attention implementation that reads them back through the store.

    import kvcrush.hf                                  # registers attn_implementation="kvcrush"
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="kvcrush")
    cache = kvcrush.hf.KVCrushCache(policy="tiered", budget=0.25)
    model.generate(**inputs, past_key_values=cache, max_new_tokens=64)

Why an attention implementation as well as a cache: transformers' attention layers call
`cache.update(keys, values, layer)` and then compute attention themselves over the tensors it
returns. The store never hands keys and values back (its tiers are read only through its
dequantising attention, `kvcrush_attend`), so `KVCrushCache.update` only takes the new tokens, and
the "kvcrush" attention function (registered in `AttentionInterface`, with a mask function in
`AttentionMaskInterface`) appends them and computes every query's attention with
`Store.attend` (prefill: causal positions) or the decode session's attend (one-token steps).
A KVCrushCache used with another attention implementation raises `kvcrush.StateError` at the
next layer's update instead of computing attention over the new tokens only; the "kvcrush"
implementation with any other cache (or none) is plain SDPA.

Compression: right after the prefill (the first forward through every layer), each sequence is
compressed with `policy` to `budget`, scored by its own last `observation_window` prompt queries
per layer (after RoPE), and, when the policy keeps a budget, a decode session re-plans every layer
within it while generating. Without a policy every token stays at FP16.

Limits: one store sequence per batch row, without padding (a padding, sliding-window or packed
attention mask raises `kvcrush.InvalidArgumentError`); no beam search, cropping or batch
reordering (`kvcrush.StateError`); after any error the cache is unusable (`StateError`).
"""
import numpy as np
import torch
from transformers import AttentionInterface
from transformers.cache_utils import Cache
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from . import InvalidArgumentError, PolicyError, StateError, Store, presets

__all__ = ["KVCrushCache", "ATTENTION"]

ATTENTION = "kvcrush"


def _rows(t):
    """A [heads, n, head_dim] torch tensor as a numpy array the store reads without a copy when
    its memory allows: (array, layout). float32 and float16 pass as they are, others as float32."""
    if t.dtype not in (torch.float32, torch.float16):
        t = t.float()
    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    if t.is_contiguous():
        return t.numpy(), "head_major"
    tm = t.transpose(0, 1)
    if tm.is_contiguous():
        return tm.numpy(), "token_major"
    return t.contiguous().numpy(), "head_major"


def _is_causal(mask, n):
    """Whether a [batch, 1, n, kv] boolean mask is the plain causal mask of n queries at the last
    n of kv positions (what sdpa_mask materialises when it cannot skip it)."""
    if mask.dtype != torch.bool or mask.ndim != 4 or mask.shape[2] != n:
        return False
    kv = mask.shape[3]
    causal = torch.arange(kv, device=mask.device)[None, :] <= torch.arange(kv - n, kv, device=mask.device)[:, None]
    return bool((mask == causal).all())


class KVCrushCache(Cache):
    """A `transformers.Cache` backed by a `kvcrush.Store` (one sequence per batch row).

    `KVCrushCache(policy=None, budget=None, observation_window=32, decode_budget=True,
    byte_limit=None, page_capacity=None, attend_threads=None)`:

    - `policy`: None (every token kept at FP16), a name as in `kvcrush run` ("tiered", "snapkv",
      "plain", "snapkv+kvcrush", "uniform-int4", ...), or a preset "preset:2x|4x|6x|8x" (the store
      then uses that preset's formats and page capacity).
    - `budget`: bytes each stream may keep, as a fraction of its FP16 bytes (sinks and recent window
      included); None means 0, which a preset reads as its own budget and budgeted names reject.
      The prompt must be long enough for the budget to hold the 4 sinks and 32 recent tokens.
    - `decode_budget`: keep the budget while generating (a decode session re-plans each layer
      after every page of new tokens); False compresses the prompt only.
    - `byte_limit`, `page_capacity`, `attend_threads`: the store's options (`kvcrush.Store`).

    The model must run with `attn_implementation="kvcrush"` (registered by importing this module).
    The store is created at the first forward, from the attention module's shapes and scale.
    Attention outputs are FP32 attention over the stored (FP16 or compressed) keys and values,
    returned in the query's dtype. Complexity per layer and step: the store's attend, O(tokens
    stored x head_dim) per query head; the prefill's causal attention O(n^2 x head_dim) per head.
    """

    def __init__(self, policy=None, budget=None, *, observation_window=32, decode_budget=True,
                 byte_limit=None, page_capacity=None, attend_threads=None):
        super().__init__(layers=[])
        if budget is not None:
            budget = float(budget)
            if not np.isfinite(budget) or budget < 0:
                raise PolicyError(f"KVCrushCache: budget must be finite and >= 0, got {budget}")
        if int(observation_window) < 1:
            raise InvalidArgumentError(f"KVCrushCache: observation_window must be >= 1, got {observation_window}")
        self.preset = None
        if policy is not None:
            policy = str(policy)
            if policy.startswith("preset:"):
                self.preset = policy[len("preset:"):]
                if self.preset not in presets():
                    raise PolicyError(f"KVCrushCache: unknown preset {self.preset!r} (expected one of {', '.join(presets())})")
            if policy in ("uncompressed", "full"):
                policy = None
        self.policy, self.budget = policy, budget
        self.observation_window = int(observation_window)
        self.decode_budget = bool(decode_budget)
        self._options = {k: v for k, v in (("page_capacity", page_capacity), ("attend_threads", attend_threads))
                         if v is not None}
        self.byte_limit = byte_limit
        self.store = None
        self.sequences = []
        self.sessions = []
        self._pending = {}
        self._observations = {}
        self._compressed = False
        self._failure = None

    # --- what transformers asks of a Cache ---

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        """Takes the new tokens' keys and values ([batch, kv_heads, n, head_dim], after RoPE) for
        layer `layer_idx`; the "kvcrush" attention appends them. Returns them unchanged (tagged so
        the attention function finds this cache)."""
        self._check_usable()
        if self._pending:
            (stale,) = self._pending
            self._pending.clear()
            raise self._fail(StateError(
                f"KVCrushCache: layer {stale}'s keys and values were never read by the 'kvcrush' attention: run the model "
                f"with attn_implementation='kvcrush' (from_pretrained(..., attn_implementation='kvcrush') or "
                f"model.set_attn_implementation('kvcrush'), after `import kvcrush.hf`)"))
        self._pending[layer_idx] = (key_states, value_states)
        key_states._kvcrush_cache = self
        return key_states, value_states

    def get_seq_length(self, layer_idx=0):
        """Tokens ever appended to `layer_idx` (of the first batch row); 0 before the first forward."""
        if self.store is None or not self.sequences:
            return 0
        return self.store.length(self.sequences[0], layer_idx)

    def get_mask_sizes(self, query_length, layer_idx=0):
        return self.get_seq_length(layer_idx) + query_length, 0

    def get_max_length(self, layer_idx=None):
        return -1

    @property
    def batch_size(self):
        return len(self.sequences) if self.sequences else -1

    @property
    def is_initialized(self):
        return self.store is not None

    @property
    def is_compileable(self):
        return False

    @property
    def is_croppable(self):
        return False

    def reset(self):
        """Drops every sequence (the cache can then be used for a new prompt)."""
        for s in self.sessions:
            if s is not None:
                s.close()
        if self.store is not None:
            for seq in self.sequences:
                self.store.remove(seq)
        self.sequences, self.sessions = [], []
        self._pending.clear()
        self._observations.clear()
        self._compressed = False
        self._failure = None

    def crop(self, tokens_to_remove):
        if tokens_to_remove:
            raise StateError("KVCrushCache: crop is not supported (the store never removes appended tokens)")

    def reorder_cache(self, beam_idx):
        raise StateError("KVCrushCache: beam search (reorder_cache) is not supported")

    def batch_repeat_interleave(self, repeats):
        raise StateError("KVCrushCache: batch_repeat_interleave is not supported")

    def batch_select_indices(self, indices):
        raise StateError("KVCrushCache: batch_select_indices is not supported")

    # --- what the store adds ---

    @property
    def byte_count(self):
        """Bytes of the store's pages (0 before the first forward)."""
        return 0 if self.store is None else self.store.byte_count

    def tier_counts(self, row=0, layer=-1):
        """({tier: bytes}, {tier: tokens}) of batch row `row` (`Store.tier_counts`)."""
        return self.store.tier_counts(self.sequences[row], layer)

    # --- the attention ---

    def _check_usable(self):
        if self._failure is not None:
            raise StateError(f"KVCrushCache: unusable after an earlier error ({self._failure}); make a new cache")

    def _fail(self, error):
        self._failure = f"{type(error).__name__}: {error}"
        return error

    def _create(self, module, query, key):
        config = module.config
        layers = getattr(config, "num_hidden_layers", None)
        if layers is None:
            raise self._fail(InvalidArgumentError("KVCrushCache: the model's config has no num_hidden_layers"))
        self.store = Store(layers, query.shape[1], key.shape[1], query.shape[3], byte_limit=self.byte_limit,
                           attention_scale=float(module.scaling), preset=self.preset, **self._options)

    def attend(self, module, query, attention_mask):
        """The "kvcrush" attention of `module` (layer `module.layer_idx`) for `query` [batch,
        query_heads, n, head_dim]: appends the layer's pending keys and values, then attends
        through the store. Returns [batch, n, query_heads, head_dim] in the query's dtype."""
        self._check_usable()
        layer = module.layer_idx
        if layer not in self._pending:
            raise self._fail(StateError(f"KVCrushCache: attention for layer {layer} without update() first"))
        key, value = self._pending.pop(layer)
        try:
            return self._attend(module, layer, query, key, value, attention_mask)
        except Exception as e:
            self._fail(e)
            raise

    def _attend(self, module, layer, query, key, value, attention_mask):
        batch, _, n, _ = query.shape
        if attention_mask is not None and not _is_causal(attention_mask, n):
            raise InvalidArgumentError(
                "KVCrushCache: only plain causal attention is supported (this forward has a padding, sliding-window or "
                "packed-sequence mask)")
        if self.store is None:
            self._create(module, query, key)
        if not self.sequences:
            self.sequences = [self.store.add_sequence() for _ in range(batch)]
            self.sessions = [None] * batch
        if batch != len(self.sequences):
            raise InvalidArgumentError(f"KVCrushCache: batch of {batch} rows, the cache holds {len(self.sequences)}")
        prefill = not self._compressed and self.policy is not None
        outputs = []
        for b, seq in enumerate(self.sequences):
            k, layout = _rows(key[b])
            v, vlayout = _rows(value[b])
            if vlayout != layout:
                v = np.ascontiguousarray(v.transpose(1, 0, 2))
            self.store.append(seq, layer, k, v, layout=layout)
            length = self.store.length(seq, layer)
            q, qlayout = _rows(query[b])
            session = self.sessions[b]
            if session is not None and n == 1:
                out = session.attend(layer, q, layout=qlayout)
                session.appended(layer, 1)
            else:
                positions = None if n == 1 else np.arange(length - n, length, dtype=np.int32)
                out = self.store.attend(seq, layer, q, positions=positions, layout=qlayout)
                if session is not None:
                    session.appended(layer, n)
            if prefill:
                head_major = q if qlayout == "head_major" else q.transpose(1, 0, 2)
                self._observations[(b, layer)] = np.array(head_major[:, -self.observation_window:, :], dtype=np.float32)
            outputs.append(out if qlayout == "token_major" else out.transpose(1, 0, 2))
        if prefill and layer == self.store.layers - 1:
            self._compress()
        result = torch.from_numpy(np.stack(outputs))
        return result.to(device=query.device, dtype=query.dtype)

    def _compress(self):
        policy = self.policy
        for b, seq in enumerate(self.sequences):
            window = [self._observations.pop((b, l)) for l in range(self.store.layers)]
            self.sessions[b] = self.store.compress(seq, policy, self.budget or 0.0, window, session=self.decode_budget)
        self._compressed = True


def kvcrush_attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """The "kvcrush" attention implementation: through the store when `key` came from a
    KVCrushCache's update, else `transformers`' SDPA."""
    cache = getattr(key, "_kvcrush_cache", None)
    if cache is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
    return cache.attend(module, query, attention_mask), None


AttentionInterface.register(ATTENTION, kvcrush_attention_forward)
AttentionMaskInterface.register(ATTENTION, sdpa_mask)
