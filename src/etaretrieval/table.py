"""A signature lookup table kept in step with an embedding table."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from ._device import DeviceArray, describe
from ._tablefile import TableFileError, Verification, open_table, write_table
from ._tablefile import fingerprint as _fingerprint
from ._validate import DTypeError, NonFiniteError, _shape, as_array, is_integer_dtype, weight_nonfinite_error
from .simhash import SimHasher

__all__ = ["SignatureTable", "TableFileError"]

def _rows_of(rows: Any, n: int) -> np.ndarray:
    """``rows`` checked like every id argument: 1-D, an integer dtype, each in ``[0, n)``; the distinct ids.

    A device array is checked from its description, then read on the host
    (a short id list, after the work that wrote it).
    """
    r = as_array(rows, "rows")
    if r.ndim != 1:
        raise ValueError(f"rows must have shape (R,) (row ids of weight), got shape {_shape(tuple(r.shape))}")
    if r.shape[0] == 0:  # nothing changed (an empty list is float64 to NumPy)
        return np.zeros(0, dtype=np.int64)
    if not is_integer_dtype(r.dtype):
        raise DTypeError(f"rows must have an integer dtype, got dtype {r.dtype}")
    if isinstance(r, DeviceArray):
        from .cuda import _backend

        with _backend.device_scope(r):
            r = _backend.read_back(_backend.as_numba(r), _backend.launch_stream(r))
    outside = (r < 0) | (r >= n)
    if outside.any():
        at = int(np.argmax(outside))
        raise IndexError(f"rows must lie in [0, {n}) (the rows of weight), got rows[{at}] = {r[at]}")
    return np.unique(r)


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
    #: The directory a loaded table was read from, and the check of its file (None: built in memory; version 1).
    _source: Path | None = None
    _verification: Verification | None = None
    #: The digest of the saved description (``meta_sha256``: every checksum of the file), None if there is none.
    _saved_digest: str | None = None

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
            ``(R,)`` ids of the rows of ``weight`` that changed, of any
            integer dtype, each in ``[0, N)``; duplicates are fine.

        Raises
        ------
        ValueError
            ``rows`` is not 1-D, or the table was loaded without its weight.
        DTypeError
            ``rows`` has no integer dtype (bool and float ids are refused).
        IndexError
            An id outside ``[0, N)``, named with its position.
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
        r = _rows_of(rows, self.weight.shape[0] if device is None else device.shape[0])
        if r.size == 0:
            return
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
        """Write the table to the directory ``path``: signatures, planes and a checksummed description.

        The directory holds ``signatures.npy`` (the ``(N, W)`` uint64 table,
        memory-mappable), ``planes.npy`` (the ``(dim, bits)`` float32 planes)
        and ``table.json`` (format version 2: shapes, the planes' fingerprint
        and SHA-256 digests of the signatures, block by block). The files are
        written and synced in a new directory beside ``path``, then swapped
        with ``path`` in one step: a reader sees the old table or the new one,
        and an interrupted save leaves the old one intact. An existing table
        at ``path`` is replaced; processes that mapped it keep reading it.
        The format is described in the user guide (*Signature tables on disk*).

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
        if target.exists() and not (target / "table.json").is_file():
            raise FileExistsError(f"path {str(target)!r} exists and is not a saved SignatureTable; pick a new path")
        signatures = self.signatures
        device = describe(signatures)
        if device is not None:  # a device table: copy it to the host once
            from .cuda import _backend

            with _backend.device_scope(device):
                signatures = _backend.read_back(_backend.as_numba(device), _backend.launch_stream(device))
        planes = np.ascontiguousarray(self.hasher.planes, dtype=np.float32)
        write_table(target, signatures, planes, {
            "rows": int(signatures.shape[0]),
            "words": int(signatures.shape[1]),
            "bits": int(self.hasher.bits),
            "dim": int(self.hasher.dim),
            "embedding_shape": [int(signatures.shape[0]), int(self.hasher.dim)],
            "planes_sha256": _fingerprint(planes),
        })

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        *,
        mmap: bool = True,
        weight: Any = None,
        hasher: SimHasher | None = None,
        verify: bool | Literal["background"] = False,
    ) -> SignatureTable:
        """Open a table written by :meth:`save`, memory-mapped by default.

        With ``mmap=True`` opening costs the same for ``10**3`` or ``10**9``
        rows: the signatures are paged in from the file as lookups touch them,
        and processes that open the same file share those pages (the OS page
        cache), so worker processes do not each hold a copy.

        Opening always checks what costs O(1): the description and its
        digest, the signatures' ``.npy`` header, the file sizes and the
        planes. Checking every byte of the signatures against their digests
        reads the whole file: ask for it with ``verify``, or later with
        :meth:`verify`.

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
        verify : {False, True, "background"}, default False
            ``True``: check every block of the signatures before returning
            (with ``mmap=False`` in the same pass that reads them).
            ``"background"``: return at once and check in a daemon thread;
            :meth:`verify` waits for it and raises what it found (a failure
            is also logged to the ``etaretrieval`` logger). ``False``: check
            when :meth:`verify` is called.

        Returns
        -------
        SignatureTable

        Raises
        ------
        TableFileError
            ``path`` is no table directory (a file, missing, no
            ``table.json``), or the table is damaged or incomplete (a
            malformed ``table.json``, a truncated file, a damaged ``.npy``
            header, a wrong dtype or shape, data that fail their checksums
            with ``verify=True``), or of a newer format version. A
            :class:`ValueError`, naming the path and what is wrong.
        ValueError
            A table made with other planes than ``hasher``'s, or ``weight``
            of another shape.

        Examples
        --------
        >>> import numpy as np, tempfile, os, etaretrieval as er
        >>> weight = np.random.default_rng(0).standard_normal((1000, 16)).astype(np.float32)
        >>> hasher = er.SimHasher(16, 64)
        >>> path = os.path.join(tempfile.mkdtemp(), "items.sigtable")
        >>> er.SignatureTable(weight, hasher).save(path)
        >>> table = er.SignatureTable.load(path, weight=weight, hasher=hasher, verify=True)
        >>> bool((table.signatures == hasher(weight)).all())
        True
        >>> er.SignatureTable.load(path, hasher=er.SimHasher(16, 64, seed=1))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: the table at ... was made with other planes than hasher's (fingerprint ...); ...
        """
        if not (verify is True or verify is False or verify == "background"):
            raise ValueError(f"verify must be False, True or 'background', got {verify!r}")
        where = Path(path)
        if hasher is not None and not isinstance(hasher, SimHasher):
            raise TypeError(f"hasher must be a SimHasher, got {type(hasher).__name__}")
        if weight is not None and describe(weight) is not None:
            raise ValueError(
                "weight must be a host (numpy) array to load a table from disk; for a table on the GPU "
                "build SignatureTable(device_weight, hasher)"
            )
        opened = open_table(where, mmap=bool(mmap), writeable=weight is not None, verify=verify)
        meta, planes = opened.meta, opened.planes
        if hasher is not None:
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
            shape = tuple(np.shape(weight))
            if shape != want:
                raise ValueError(
                    f"weight must have the shape of the embedding the table at {str(where)!r} was made for, "
                    f"{_shape(want)}, got shape {_shape(shape)}"
                )
            table = cls(weight[:0], hasher)  # the constructor's checks of weight, on no rows: nothing hashed
        else:
            table = cls.__new__(cls)
        table.weight = weight
        table.hasher = hasher
        table.signatures = opened.signatures
        table._source = where
        table._verification = opened.verification
        table._saved_digest = meta.get("meta_sha256")
        return table

    def verify(self, timeout: float | None = None) -> bool:
        """Check the saved signatures this table was loaded from against their checksums.

        Reads the file as it was opened by :meth:`load` (still the same file
        if the table was saved again since), in threads, at disk or memory
        speed. The outcome is kept: later calls return at once. A serving
        process loads with ``verify="background"``, warms up, and calls
        ``table.verify()`` before taking traffic (or ``verify(timeout=0)``
        from a readiness probe).

        Parameters
        ----------
        timeout : float, optional
            Seconds to wait for a check still running (started by
            ``load(..., verify="background")`` or by this call); ``None``
            waits until it ends.

        Returns
        -------
        bool
            True once the signatures are verified; False if the check was
            still running after ``timeout``.

        Raises
        ------
        TableFileError
            Signatures that do not match their checksums (naming the first
            damaged rows), a file that could not be read, or a table of
            format version 1 (no checksums: save it again).
        ValueError
            A table that was not loaded from disk.

        Examples
        --------
        >>> import numpy as np, tempfile, os, etaretrieval as er
        >>> weight = np.random.default_rng(0).standard_normal((1000, 16)).astype(np.float32)
        >>> path = os.path.join(tempfile.mkdtemp(), "items.sigtable")
        >>> er.SignatureTable(weight, er.SimHasher(16, 64)).save(path)
        >>> table = er.SignatureTable.load(path, verify="background")
        >>> table.verify()
        True
        """
        source = getattr(self, "_source", None)
        if source is None:
            raise ValueError("this table was built in memory, not loaded by SignatureTable.load: nothing to verify")
        if self._verification is None:
            raise TableFileError(
                source, "has format version 1, which carries no checksums, so it cannot be verified: "
                "save it again (SignatureTable.load(path).save(path))"
            )
        return self._verification.wait(timeout)

    def __len__(self) -> int:
        return int(self.signatures.shape[0])

    def __repr__(self) -> str:
        return f"SignatureTable(rows={len(self)}, bits={self.hasher.bits})"
