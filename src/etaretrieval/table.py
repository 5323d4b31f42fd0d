"""A signature lookup table kept in step with an embedding table."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from ._device import describe
from ._validate import DTypeError, NonFiniteError, _shape, is_integer_dtype, weight_nonfinite_error
from .simhash import SimHasher

__all__ = ["SignatureTable"]

_FORMAT = "etaretrieval.SignatureTable"
_VERSION = 1
_META, _SIGNATURES, _PLANES = "table.json", "signatures.npy", "planes.npy"


def _fingerprint(planes: np.ndarray) -> str:
    """SHA-256 of float32 planes: shape and little-endian bytes."""
    p = np.ascontiguousarray(planes, dtype="<f4")
    return hashlib.sha256(repr(p.shape).encode() + p.tobytes()).hexdigest()


def _read_meta(where: Path) -> dict[str, Any]:
    """The description of a saved table, checked to be one this version reads."""
    try:
        meta = json.loads((where / _META).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(
            f"path {str(where)!r} holds no saved SignatureTable (no {_META}); write one with SignatureTable.save"
        ) from None
    if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
        raise ValueError(f"{str(where / _META)!r} does not describe a SignatureTable")
    if meta.get("version") != _VERSION:
        raise ValueError(
            f"the table at {str(where)!r} has format version {meta.get('version')}; this etaretrieval reads "
            f"version {_VERSION}: save it again with a matching etaretrieval"
        )
    return meta


def _hasher_of(planes: np.ndarray) -> SimHasher:
    """A SimHasher holding given planes (the pickle protocol's way in: planes, dim, bits, words)."""
    hasher = SimHasher.__new__(SimHasher)
    dim, bits = planes.shape
    hasher.__setstate__({"planes": planes, "dim": int(dim), "bits": int(bits), "words": (int(bits) + 63) // 64})
    return hasher


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
    check_finite : bool, default True
        Raise :class:`ValueError` naming the first row of ``weight`` holding a
        NaN or an infinity (when built and on :meth:`refresh`). With ``False``
        such rows are hashed as they come (their signatures mean nothing).

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

    #: Whether hashing raises on a non-finite row (the class default serves tables made without ``__init__``).
    check_finite: bool = True

    def __init__(self, weight: Any, hasher: SimHasher, *, check_finite: bool = True) -> None:
        if not isinstance(hasher, SimHasher):
            raise TypeError(f"hasher must be a SimHasher, got {type(hasher).__name__}")
        device = describe(weight)
        if not isinstance(weight, np.ndarray) and device is None:
            torch_hint = "; for a torch.nn.Embedding use etaretrieval.torch.SignatureCache"
            hint = torch_hint if "torch" in type(weight).__module__ else ""
            raise TypeError(
                "weight must be a numpy.ndarray or a CUDA device array (held by reference), "
                f"got {type(weight).__name__}{hint}"
            )
        shape = weight.shape if device is None else device.shape
        dtype = weight.dtype if device is None else device.dtype
        if dtype not in (np.float32, np.float64):
            raise DTypeError(f"weight must have dtype float32 or float64, got dtype {dtype}")
        if len(shape) != 2 or shape[1] != hasher.dim:
            raise ValueError(f"weight must have shape (N, {hasher.dim}), got shape {_shape(tuple(shape))}")
        self.weight = weight
        self.hasher = hasher
        self.check_finite = bool(check_finite)
        self.signatures: npt.NDArray[np.uint64] = self._hash_all()

    def _hash_all(self) -> Any:
        """Signatures of every row of ``weight``; a non-finite row is named as a row of ``weight``."""
        try:
            return self.hasher(self.weight, check_finite=self.check_finite)
        except NonFiniteError as err:
            raise weight_nonfinite_error(err.where[0]) from None

    def refresh(self, rows: Any = None) -> None:
        """Rehash all rows (``rows=None``) or only the given row ids.

        Parameters
        ----------
        rows : array_like of int, optional
            Ids of the rows of ``weight`` that changed; duplicates are fine.
        """
        if self.weight is None:
            raise ValueError(
                "this table was loaded without its weight, so it cannot rehash rows: pass weight= to "
                "SignatureTable.load (the (N, dim) embedding it was made from) to refresh it"
            )
        device = describe(self.weight)
        if rows is None:
            if device is not None:
                from .cuda.pack import refresh_all

                refresh_all(device, self.hasher.device_planes(device), self.signatures, self.check_finite)
                return
            self.signatures[...] = self._hash_all()
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
        if not is_integer_dtype(r.dtype):
            raise DTypeError(f"rows must have an integer dtype, got dtype {r.dtype}")
        r = r.reshape(-1)
        n = self.weight.shape[0] if device is None else device.shape[0]
        if r.size and (r.min() < 0 or r.max() >= n):
            bad = int(r[(r < 0) | (r >= n)][0])
            raise IndexError(f"rows must lie in [0, {n}), got row {bad}")
        r = np.unique(r)
        if device is not None:
            from .cuda.pack import refresh_rows

            refresh_rows(device, self.hasher.device_planes(device), r, self.signatures, self.check_finite)
            return
        changed = self.weight[r]
        finite = np.isfinite(changed).all(axis=1)
        if self.check_finite and not finite.all():  # name the row of weight, not of the subset
            raise weight_nonfinite_error(int(r[np.argmin(finite)]))
        self.signatures[r] = self.hasher(changed, check_finite=False)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the table to the directory ``path``: signatures, planes and a description.

        The directory holds ``signatures.npy`` (the ``(N, W)`` uint64 table,
        memory-mappable), ``planes.npy`` (the ``(dim, bits)`` float32 planes)
        and ``table.json`` (format version, ``bits``, ``dim``, ``N``, ``W``,
        the embedding shape and a SHA-256 fingerprint of the planes). The
        files are written next to ``path`` and moved into place, so a reader
        never sees half a table; an existing table at ``path`` is replaced.

        Parameters
        ----------
        path : str or os.PathLike
            A directory to create (or a table directory to replace).

        Raises
        ------
        FileExistsError
            ``path`` exists and is not a table directory.

        Examples
        --------
        >>> import numpy as np, tempfile, os, etaretrieval as er
        >>> weight = np.random.default_rng(0).standard_normal((1000, 16)).astype(np.float32)
        >>> table = er.SignatureTable(weight, er.SimHasher(16, 64))
        >>> path = os.path.join(tempfile.mkdtemp(), "items.sigtable")
        >>> table.save(path)
        >>> sorted(os.listdir(path))
        ['planes.npy', 'signatures.npy', 'table.json']
        """
        target = Path(path)
        if target.exists() and not (target / _META).is_file():
            raise FileExistsError(f"path {str(target)!r} exists and is not a saved SignatureTable; pick a new path")
        signatures = self.signatures
        device = describe(signatures)
        if device is not None:  # a device table: copy it to the host once
            from .cuda import _backend

            with _backend.device_scope(device):
                signatures = _backend.read_back(_backend.as_numba(device), _backend.launch_stream(device))
        planes = np.ascontiguousarray(self.hasher.planes, dtype=np.float32)
        meta = {
            "format": _FORMAT,
            "version": _VERSION,
            "rows": int(signatures.shape[0]),
            "words": int(signatures.shape[1]),
            "bits": int(self.hasher.bits),
            "dim": int(self.hasher.dim),
            "embedding_shape": [int(signatures.shape[0]), int(self.hasher.dim)],
            "planes_sha256": _fingerprint(planes),
        }
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            np.save(staging / _SIGNATURES, np.ascontiguousarray(signatures, dtype=np.uint64))
            np.save(staging / _PLANES, planes)
            (staging / _META).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
            if target.exists():  # replace an older table; readers that mapped it keep their (unlinked) files
                shutil.rmtree(target)
            os.replace(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        *,
        mmap: bool = True,
        weight: Any = None,
        hasher: SimHasher | None = None,
    ) -> SignatureTable:
        """Open a table written by :meth:`save`, memory-mapped by default.

        With ``mmap=True`` opening costs the same for ``10**3`` or ``10**9``
        rows: the signatures are paged in from the file as lookups touch them,
        and processes that open the same file share those pages (the OS page
        cache), so worker processes do not each hold a copy.

        Parameters
        ----------
        path : str or os.PathLike
            A directory written by :meth:`save`.
        mmap : bool, default True
            Map the signatures instead of reading them into memory. The map
            is read-only without ``weight``; with ``weight`` it is
            copy-on-write (:meth:`refresh` changes this process's copy, never
            the file).
        weight : numpy.ndarray, optional
            The ``(N, dim)`` embedding table the signatures were hashed from,
            held by reference as in the constructor; needed by
            :meth:`refresh`. Its shape must be the saved embedding shape.
        hasher : SimHasher, optional
            Check that the table was made with these planes. Without it, the
            saved planes become the table's hasher.

        Returns
        -------
        SignatureTable

        Raises
        ------
        ValueError
            Not a table directory, another format version, a table made with
            other planes than ``hasher``'s, or ``weight`` of another shape.

        Examples
        --------
        >>> import numpy as np, tempfile, os, etaretrieval as er
        >>> weight = np.random.default_rng(0).standard_normal((1000, 16)).astype(np.float32)
        >>> hasher = er.SimHasher(16, 64)
        >>> path = os.path.join(tempfile.mkdtemp(), "items.sigtable")
        >>> er.SignatureTable(weight, hasher).save(path)
        >>> table = er.SignatureTable.load(path, weight=weight, hasher=hasher)
        >>> bool((table.signatures == hasher(weight)).all())
        True
        >>> er.SignatureTable.load(path, hasher=er.SimHasher(16, 64, seed=1))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: the table at ... was made with other planes than hasher's (fingerprint ...); ...
        """
        where = Path(path)
        meta = _read_meta(where)
        planes = np.load(where / _PLANES)
        if planes.dtype != np.float32 or planes.shape != (meta["dim"], meta["bits"]):
            raise ValueError(f"the table at {str(where)!r} is damaged: planes.npy does not match table.json")
        if _fingerprint(planes) != meta["planes_sha256"]:
            raise ValueError(f"the table at {str(where)!r} is damaged: planes.npy does not match its fingerprint")
        if hasher is not None:
            if not isinstance(hasher, SimHasher):
                raise TypeError(f"hasher must be a SimHasher, got {type(hasher).__name__}")
            mine = np.ascontiguousarray(hasher.planes, dtype=np.float32)
            if mine.shape != planes.shape or _fingerprint(mine) != meta["planes_sha256"]:
                raise ValueError(
                    f"the table at {str(where)!r} was made with other planes than hasher's (fingerprint "
                    f"{meta['planes_sha256'][:12]}, shape {_shape(planes.shape)}; hasher's {_fingerprint(mine)[:12]}, "
                    f"shape {_shape(mine.shape)}); load it with the hasher that made it, or rebuild the table"
                )
        else:
            hasher = _hasher_of(planes)
        want = tuple(meta["embedding_shape"])
        if weight is not None:
            if describe(weight) is not None:
                raise ValueError(
                    "weight must be a host (numpy) array to load a table from disk; for a table on the GPU "
                    "build SignatureTable(device_weight, hasher)"
                )
            shape = tuple(np.shape(weight))
            if shape != want:
                raise ValueError(
                    f"weight must have the shape of the embedding the table at {str(where)!r} was made for, "
                    f"{_shape(want)}, got shape {_shape(shape)}"
                )
        mode: Literal["r", "c"] | None = ("c" if weight is not None else "r") if mmap else None
        signatures = np.load(where / _SIGNATURES, mmap_mode=mode)
        if signatures.dtype != np.uint64 or signatures.shape != (meta["rows"], meta["words"]):
            raise ValueError(f"the table at {str(where)!r} is damaged: signatures.npy does not match table.json")
        signatures = signatures.view(np.ndarray)  # a plain array viewing the map (the map stays open)
        if weight is not None:
            table = cls(weight[:0], hasher)  # the constructor's checks of weight, on no rows: nothing hashed
        else:
            table = cls.__new__(cls)
        table.weight = weight
        table.hasher = hasher
        table.signatures = signatures
        return table

    def __len__(self) -> int:
        return int(self.signatures.shape[0])

    def __repr__(self) -> str:
        return f"SignatureTable(rows={len(self)}, bits={self.hasher.bits})"
