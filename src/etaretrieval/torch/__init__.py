"""PyTorch plugin: ETA retrieval as custom ops and modules.

Importing this package registers the custom operators
``torch.ops.etaretrieval.pack_signatures``, ``.topk_hamming``,
``.topk_hamming_lookup`` and their ragged forms ``.topk_hamming_ragged`` and
``.topk_hamming_lookup_ragged`` (flat values + offsets, which
:func:`topk_hamming` and :func:`topk_hamming_lookup` run for ``offsets=`` or a
``torch.nested`` jagged tensor; int64 tensors carry the uint64 signature words, since
torch has no uint64 arithmetic; fake kernels make them usable under
``torch.compile(fullgraph=True)``; CPU kernels run the Numba kernels, CUDA
kernels the numba-cuda ones on torch's current stream), and provides the retrieval step as an
autograd function (:class:`HammingTopK`) and the ETA building blocks
(:class:`ETARetriever`, :class:`SignatureCache`, :class:`TargetAttention`,
:class:`ETAAttention`), time information (:class:`TimeEncoding`), the
retrieval baselines that share ETA's interest-block interface
(:class:`RecentWindowAttention`, :class:`CategoryMatchAttention`,
:class:`InnerProductTopKAttention`, :class:`TWINAttention`, :class:`MeanPooling`) and a reference
long+short CTR model (:class:`ETAModel`).
"""

from __future__ import annotations

from . import _cuda
from . import native as native  # etaretrieval.torch.native: the native C++ top-K kernels, for serving from C++
from ._ops import pack_signatures, topk_hamming, topk_hamming_lookup
from .attention import ETAAttention, TargetAttention
from .baselines import (
    CategoryMatchAttention,
    InnerProductTopKAttention,
    MeanPooling,
    RecentWindowAttention,
    RetrievalAttention,
    SDIMBlock,
    TWINAttention,
    select_top,
)
from .cache import SignatureCache
from .deploy import decompositions
from .function import HammingTopK
from .model import ETAModel
from .retriever import ETARetriever, Retrieved
from .sdim import SDIMAttention, sdim_buckets, sdim_from_buckets, sdim_group_sums
from .time import TimeEncoding, gather_positions

_cuda.register()

__all__ = [
    "CategoryMatchAttention",
    "ETAAttention",
    "ETAModel",
    "ETARetriever",
    "HammingTopK",
    "InnerProductTopKAttention",
    "MeanPooling",
    "RecentWindowAttention",
    "RetrievalAttention",
    "Retrieved",
    "SDIMAttention",
    "SDIMBlock",
    "SignatureCache",
    "TWINAttention",
    "TargetAttention",
    "TimeEncoding",
    "decompositions",
    "gather_positions",
    "pack_signatures",
    "sdim_buckets",
    "sdim_from_buckets",
    "sdim_group_sums",
    "select_top",
    "topk_hamming",
    "topk_hamming_lookup",
]
