"""A signature lookup table kept in step with an embedding table."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from ._device import describe
from ._validate import DTypeError, _shape, weight_nonfinite_error
from .simhash import SimHasher

__all__ = ["SignatureTable"]


class SignatureTable:
    """Signatures of every row of an embedding table, for :func:`topk_hamming_lookup`.

    Parameters
    ----------
    weight : numpy.ndarray or device array
        ``(N, dim)`` float32/float64 embedding table. Held by reference, not
        copied: after changing rows of it in place, call :meth:`refresh`.
        A device array (``__cuda_array_interface__``) keeps the signatures on
        its device, hashed and refreshed by CUDA kernels.
    hasher : SimHasher
        Hyperplanes with ``hasher.dim == dim``.

    Attributes
    ----------
    signatures : numpy.ndarray or device array
        ``(N, W)`` uint64, row ``i`` the signature of ``weight[i]`` (on the
        device of a device ``weight``, in its library).

    Examples
    --------
    >>> import numpy as np, etaretrieval as er
    >>> weight = np.random.default_rng(0).standard_normal((1000, 16)).astype(np.float32)
    >>> table = er.SignatureTable(weight, er.SimHasher(16, 64))
    >>> weight[7] *= -1.0
    >>> table.refresh(rows=[7])
    >>> bool((table.signatures[7] == ~er.SimHasher(16, 64)(-weight[7])).all())
    True
    """

    def __init__(self, weight: Any, hasher: SimHasher) -> None:
        if not isinstance(hasher, SimHasher):
            raise TypeError(f"hasher must be a SimHasher, got {type(hasher).__name__}")
        device = describe(weight)
        if not isinstance(weight, np.ndarray) and device is None:
            raise TypeError(
                "weight must be a numpy.ndarray or a CUDA device array (held by reference), "
                f"got {type(weight).__name__}"
            )
        shape = weight.shape if device is None else device.shape
        dtype = weight.dtype if device is None else device.dtype
        if dtype not in (np.float32, np.float64):
            raise DTypeError(f"weight must have dtype float32 or float64, got dtype {dtype}")
        if len(shape) != 2 or shape[1] != hasher.dim:
            raise ValueError(f"weight must have shape (N, {hasher.dim}), got shape {_shape(tuple(shape))}")
        self.weight = weight
        self.hasher = hasher
        self.signatures: npt.NDArray[np.uint64] = hasher(weight)

    def refresh(self, rows: Any = None) -> None:
        """Rehash all rows (``rows=None``) or only the given row ids.

        Parameters
        ----------
        rows : array_like of int, optional
            Ids of the rows of ``weight`` that changed; duplicates are fine.
        """
        device = describe(self.weight)
        if rows is None:
            if device is not None:
                from .cuda.pack import refresh_all

                refresh_all(device, self.hasher.device_planes(device), self.signatures)
                return
            self.signatures[...] = self.hasher(self.weight)
            return
        rows_device = describe(rows)
        if rows_device is not None:  # a short id list: read it on the host, after the work that wrote it
            from .cuda import _backend

            with _backend.device_scope(rows_device):
                r = _backend.read_back(_backend.as_numba(rows_device), _backend.launch_stream(rows_device))
        else:
            r = np.asarray(rows)
        if r.size == 0:  # nothing changed (an empty list is float64 to NumPy)
            return
        if not np.issubdtype(r.dtype, np.integer):
            raise DTypeError(f"rows must have an integer dtype, got dtype {r.dtype}")
        r = r.reshape(-1)
        n = self.weight.shape[0] if device is None else device.shape[0]
        if r.size and (r.min() < 0 or r.max() >= n):
            bad = int(r[(r < 0) | (r >= n)][0])
            raise IndexError(f"rows must lie in [0, {n}), got row {bad}")
        r = np.unique(r)
        if device is not None:
            from .cuda.pack import refresh_rows

            refresh_rows(device, self.hasher.device_planes(device), r, self.signatures)
            return
        changed = self.weight[r]
        finite = np.isfinite(changed).all(axis=1)
        if not finite.all():  # name the row of weight, not of the subset
            raise weight_nonfinite_error(int(r[np.argmin(finite)]))
        self.signatures[r] = self.hasher(changed, check_finite=False)

    def __len__(self) -> int:
        return int(self.signatures.shape[0])

    def __repr__(self) -> str:
        return f"SignatureTable(rows={len(self)}, bits={self.hasher.bits})"
