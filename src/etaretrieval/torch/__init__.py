"""PyTorch plugin: ETA retrieval as custom ops and modules.

Importing this package registers the custom operators
``torch.ops.etaretrieval.pack_signatures``, ``.topk_hamming`` and
``.topk_hamming_lookup`` (int64 tensors carry the uint64 signature words, since
torch has no uint64 arithmetic; fake kernels make them usable under
``torch.compile(fullgraph=True)``; CPU kernels run the Numba kernels, CUDA
kernels the numba-cuda ones on torch's current stream), and provides the retrieval step as an
autograd function (:class:`HammingTopK`) and the ETA building blocks
(:class:`ETARetriever`, :class:`SignatureCache`, :class:`TargetAttention`,
:class:`ETAAttention`).
"""

from __future__ import annotations

from . import _cuda
from ._ops import pack_signatures, topk_hamming, topk_hamming_lookup
from .function import HammingTopK
from .modules import ETAAttention, ETARetriever, Retrieved, SignatureCache, TargetAttention
from .sdim import SDIMAttention, sdim_buckets, sdim_from_buckets, sdim_group_sums

_cuda.register()

__all__ = [
    "ETAAttention",
    "ETARetriever",
    "HammingTopK",
    "Retrieved",
    "SDIMAttention",
    "SignatureCache",
    "TargetAttention",
    "pack_signatures",
    "sdim_buckets",
    "sdim_from_buckets",
    "sdim_group_sums",
    "topk_hamming",
    "topk_hamming_lookup",
]
