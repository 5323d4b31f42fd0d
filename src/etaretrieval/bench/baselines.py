"""The alternatives to :func:`etaretrieval.topk_hamming_lookup`, written as their users write them.

Every function here retrieves ``k`` positions per target from the same
inputs as the library (target signatures or embeddings, item ids, and a
signature or embedding table). Ids are ``(B, L)``, or ``(L,)`` shared by every
target; each function then does the shared work once, which is what a careful
user of that tool would do.

torch and faiss are imported only inside the functions that need them.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "numpy_oneliner",
    "numpy_topk_lookup",
    "torch_inner_product",
    "torch_eta_port",
    "faiss_knn_lookup",
]


def numpy_oneliner(query: np.ndarray, ids: np.ndarray, table: np.ndarray, k: int) -> np.ndarray:
    """What a user writes first: ``np.bitwise_count(table[ids] ^ q).sum(-1)``, then ``np.argpartition``.

    The ``k`` nearest positions of each row, unordered and with ties broken
    anyhow (less than the library returns): the baseline of a single small
    call. ``ids`` ``(B, L)`` with ``k < L``.

    Examples
    --------
    >>> table = np.array([[0], [1], [3]], dtype=np.uint64)
    >>> sorted(numpy_oneliner(table[:1], np.array([[2, 1, 0]]), table, 1)[0].tolist())
    [2]
    """
    dist = np.bitwise_count(table[ids] ^ query[:, None, :]).sum(-1)
    return np.argpartition(dist, k, axis=-1)[:, :k]


def numpy_topk_lookup(
    query: np.ndarray, ids: np.ndarray, table: np.ndarray, k: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int32]]:
    """Brute force in NumPy: gather, ``np.bitwise_count`` of the XOR, partition and sort.

    Ties are broken like the library (larger position first) through a
    composite ``distance * L + (L - 1 - position)`` key, so the result is the
    library's exactly.

    Parameters
    ----------
    query : numpy.ndarray
        ``(B, W)`` uint64 signatures.
    ids : numpy.ndarray
        ``(B, L)`` or shared ``(L,)`` ids into ``table``.
    table : numpy.ndarray
        ``(N, W)`` uint64 signature table.
    k : int
        Positions per row, ``0 <= k``.

    Returns
    -------
    idx : numpy.ndarray
        ``(B, k)`` int64 positions, ``-1`` past the end of the sequence.
    dist : numpy.ndarray
        ``(B, k)`` int32 distances, ``-1`` past the end of the sequence.

    Examples
    --------
    >>> import numpy as np
    >>> table = np.array([[0b00], [0b01], [0b11]], dtype=np.uint64)
    >>> numpy_topk_lookup(np.array([[0b11]], dtype=np.uint64), np.array([2, 0, 1, 2]), table, 3)
    (array([[3, 0, 2]]), array([[0, 0, 1]], dtype=int32))
    """
    length = ids.shape[-1]
    dist = np.bitwise_count(query[:, None, :] ^ table[ids]).sum(axis=-1, dtype=np.int64)
    key = dist * length + (length - 1 - np.arange(length))
    take = min(k, length)
    if take < length:
        key = np.take_along_axis(key, np.argpartition(key, take - 1, axis=1)[:, :take], axis=1)
    key = np.sort(key, axis=1)[:, :take]
    idx = np.full((query.shape[0], k), -1, dtype=np.int64)
    out = np.full((query.shape[0], k), -1, dtype=np.int32)
    idx[:, :take] = length - 1 - key % length
    out[:, :take] = key // length
    return idx, out


def torch_inner_product(
    target: torch.Tensor, ids: torch.Tensor, embedding: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact inner-product retrieval as DIN / SIM-soft style code does it.

    Gathers the sequence's embeddings, scores them against the target with
    ``einsum`` and keeps the ``k`` best with ``torch.topk``.

    Parameters
    ----------
    target : torch.Tensor
        ``(B, d)`` float target embeddings.
    ids : torch.Tensor
        ``(B, L)`` or shared ``(L,)`` int64 ids into ``embedding``.
    embedding : torch.Tensor
        ``(N, d)`` float embedding table.
    k : int
        Positions per row, ``<= L``.

    Returns
    -------
    values, indices : torch.Tensor
        ``(B, k)`` scores and positions, best first.
    """
    import torch

    seq = embedding[ids]
    equation = "bd,ld->bl" if ids.dim() == 1 else "bd,bld->bl"
    scores = torch.einsum(equation, target, seq)
    return torch.topk(scores, k, dim=1)


def torch_eta_port(
    target: torch.Tensor, ids: torch.Tensor, embedding: torch.Tensor, planes: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The common pure-torch ETA: float 0/1 bits, absolute-difference sum, ``torch.topk``.

    Hashes the target and the gathered sequence with ``x @ planes > 0`` into
    float tensors (``(B, L, m)`` for the sequence), sums ``|a - b|`` over the
    bits and keeps the ``k`` smallest; ``torch.topk`` leaves the order of
    equal distances unspecified.

    Parameters
    ----------
    target : torch.Tensor
        ``(B, d)`` float target embeddings.
    ids : torch.Tensor
        ``(B, L)`` or shared ``(L,)`` int64 ids into ``embedding``.
    embedding : torch.Tensor
        ``(N, d)`` float embedding table.
    planes : torch.Tensor
        ``(d, m)`` float hyperplanes.
    k : int
        Positions per row, ``<= L``.

    Returns
    -------
    values, indices : torch.Tensor
        ``(B, k)`` float Hamming distances and positions, nearest first.
    """
    import torch

    target_bits = (target @ planes > 0).float()
    seq_bits = (embedding[ids] @ planes > 0).float()
    if ids.dim() == 1:
        seq_bits = seq_bits.unsqueeze(0)
    dist = (target_bits.unsqueeze(1) - seq_bits).abs().sum(dim=-1)
    return torch.topk(dist, k, dim=1, largest=False)


def faiss_knn_lookup(
    query: np.ndarray, ids: np.ndarray, table: np.ndarray, k: int, *, threads: int = 1
) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.int64]]:
    """faiss ``knn_hamming`` on the gathered byte codes.

    Per-row sequences need one call per row (each row has its own database);
    ``threads`` workers share the rows. Shared ids make one call with every
    target as a query, faiss's best case.

    Parameters
    ----------
    query : numpy.ndarray
        ``(B, W)`` uint64 signatures.
    ids : numpy.ndarray
        ``(B, L)`` or shared ``(L,)`` ids into ``table``.
    table : numpy.ndarray
        ``(N, W)`` uint64 signature table (C-contiguous).
    k : int
        Positions per row, ``<= L``.
    threads : int, default 1
        Worker threads for the per-row calls (faiss's own OpenMP pool is set
        to one thread in each).

    Returns
    -------
    dist : numpy.ndarray
        ``(B, k)`` int32 distances, nearest first.
    idx : numpy.ndarray
        ``(B, k)`` int64 positions.
    """
    import faiss

    codes = table.view(np.uint8)
    qcodes = np.ascontiguousarray(query).view(np.uint8)
    if ids.ndim == 1:
        return faiss.knn_hamming(qcodes, codes[ids], k)

    def row(b: int) -> tuple[np.ndarray, np.ndarray]:
        return faiss.knn_hamming(qcodes[b : b + 1], codes[ids[b]], k)

    with ThreadPoolExecutor(threads, initializer=faiss.omp_set_num_threads, initargs=(1,)) as pool:
        rows = list(pool.map(row, range(query.shape[0])))
    return np.concatenate([d for d, _ in rows]), np.concatenate([i for _, i in rows])
