"""Metrics of the study: AUC (rank statistic, ties averaged), log loss, retrieval recall. Numpy only."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["auc", "logloss", "recall_at_k"]


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x``, equal values sharing the mean of their ranks."""
    order = np.argsort(x, kind="stable")
    sorted_x = x[order]
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
    ends = np.r_[starts[1:], x.size]  # each tie group is sorted_x[start:end]
    mean_rank = (starts + ends + 1) / 2.0  # mean of start+1 .. end
    ranks = np.empty(x.size, dtype=np.float64)
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def auc(label: npt.ArrayLike, score: npt.ArrayLike) -> float:
    """Area under the ROC curve: the chance a random positive scores above a random negative.

    Rank-based (Mann-Whitney U), ``O(n log n)``; tied scores count one half.

    Parameters
    ----------
    label : array_like
        ``(n,)`` 0/1 (or bool) labels.
    score : array_like
        ``(n,)`` real scores, no NaN.

    Returns
    -------
    float
        In ``[0, 1]``.

    Raises
    ------
    ValueError
        Shapes differ, a score is NaN, or only one class is present.

    Examples
    --------
    >>> from etaretrieval.study import auc
    >>> auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    0.75
    >>> auc([0, 1], [0.5, 0.5])  # a tie counts one half
    0.5
    """
    y = np.asarray(label).astype(bool).ravel()
    s = np.asarray(score, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"label and score must have the same length, got {y.size} and {s.size}")
    if np.isnan(s).any():
        raise ValueError("score must not contain NaN")
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"AUC needs both classes, got {n_pos} positives and {n_neg} negatives")
    ranks = _average_ranks(s)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def logloss(label: npt.ArrayLike, prob: npt.ArrayLike, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy of probabilities (clipped to ``[eps, 1 - eps]``).

    Parameters
    ----------
    label : array_like
        ``(n,)`` 0/1 labels.
    prob : array_like
        ``(n,)`` predicted click probabilities.
    eps : float, default 1e-7
        Clipping of the probabilities.

    Returns
    -------
    float

    Examples
    --------
    >>> from etaretrieval.study import logloss
    >>> round(logloss([1, 0], [0.5, 0.5]), 4)
    0.6931
    """
    y = np.asarray(label, dtype=np.float64).ravel()
    p = np.clip(np.asarray(prob, dtype=np.float64).ravel(), eps, 1 - eps)
    if y.shape != p.shape:
        raise ValueError(f"label and prob must have the same length, got {y.size} and {p.size}")
    return float(-(y * np.log(p) + (1 - y) * np.log1p(-p)).mean())


def recall_at_k(found: npt.ArrayLike, truth: npt.ArrayLike) -> float:
    """Share of the true top-K positions that a retrieval found, over all rows.

    Parameters
    ----------
    found, truth : array_like
        ``(B, K)`` integer positions; ``-1`` marks an empty slot (ignored).

    Returns
    -------
    float
        ``|found & truth| / |truth|`` summed over rows; ``nan`` when ``truth`` is empty.

    Examples
    --------
    >>> from etaretrieval.study import recall_at_k
    >>> recall_at_k([[1, 2, 3], [4, 5, -1]], [[3, 2, 9], [5, -1, -1]])
    0.75
    """
    f, t = np.asarray(found), np.asarray(truth)
    if f.ndim != 2 or t.ndim != 2 or f.shape[0] != t.shape[0]:
        raise ValueError(f"found and truth must be (B, K) arrays with the same B, got {f.shape} and {t.shape}")
    hit = (t[:, :, None] == f[:, None, :]).any(-1) & (t >= 0)
    total = int((t >= 0).sum())
    return float(hit.sum() / total) if total else float("nan")
