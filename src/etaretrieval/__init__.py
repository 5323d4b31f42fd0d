"""etaretrieval: SimHash + Hamming top-K retrieval for long user-behaviour sequences.

The ETA (End-to-end Target Attention) retrieval step as fast, exact kernels:
signatures (:func:`hyperplanes`, :func:`pack_signatures`, :class:`SimHasher`),
distances (:func:`hamming`), sort-free top-K (:func:`topk_hamming`), the
fused serving path (:func:`topk_hamming_lookup`) and lookup tables
(:class:`SignatureTable`). The PyTorch plugin lives in ``etaretrieval.torch``;
this package never imports torch.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from ._threads import threads
from ._validate import DTypeError
from .distance import hamming
from .sdim import sdim_buckets, sdim_codes, sdim_from_buckets, sdim_group_sums, sdim_pool
from .simhash import SimHasher, hyperplanes, pack_signatures
from .table import SignatureTable, TableFileError
from .topk import topk_hamming, topk_hamming_lookup

try:
    __version__ = version("etaretrieval")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

__all__ = [
    "DTypeError",
    "SignatureTable",
    "SimHasher",
    "TableFileError",
    "__version__",
    "hamming",
    "hyperplanes",
    "pack_signatures",
    "sdim_buckets",
    "sdim_codes",
    "sdim_from_buckets",
    "sdim_group_sums",
    "sdim_pool",
    "threads",
    "topk_hamming",
    "topk_hamming_lookup",
]
