"""SimHash: random hyperplanes and packed sign-bit signatures."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from . import config
from ._device import DeviceArray, describe, placement
from ._validate import (
    DTypeError,
    _shape,
    as_array,
    check_bits,
    check_dim,
    check_plane_size,
    check_planes_finite,
    check_x_shape,
)
from .cpu.pack import pack_signatures as host_pack

__all__ = ["hyperplanes", "pack_signatures", "SimHasher"]

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def _raw_generator(seed: int | np.random.Generator) -> np.random.BitGenerator:
    if isinstance(seed, np.random.Generator):
        return seed.bit_generator
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be a non-negative int or a numpy.random.Generator, got {type(seed).__name__}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    return np.random.PCG64(int(seed))


def hyperplanes(
    dim: int, bits: int, seed: int | np.random.Generator = 0, *, orthogonal: bool = False
) -> npt.NDArray[np.float32]:
    """Random SimHash hyperplanes with standard normal entries.

    The entries come from the raw 64-bit stream of a ``PCG64`` bit generator
    (whose output NumPy guarantees across versions and platforms) through a
    float64 Box-Muller transform rounded to float32, so the same seed gives the
    same planes everywhere, whatever NumPy's ``Generator.normal`` does.

    With ``orthogonal=True`` (super-bit LSH, Ji et al. 2012) the same draws
    are made orthogonal in groups of ``dim`` consecutive planes (Gram-Schmidt
    in plane order, each plane keeping its length): the Hamming distance then
    estimates the angle with a lower variance, and each plane is still a
    standard normal vector (a uniform direction times an independent length).
    The orthogonalisation (a QR decomposition per group) runs in float64
    before the rounding to float32, so another LAPACK may change a last bit,
    rarely.

    Parameters
    ----------
    dim : int
        Embedding dimension, ``>= 1``; ``dim * bits`` is at most ``2**28``
        (1 GiB of planes), a larger request is a :class:`ValueError`.
    bits : int
        Number of hyperplanes (signature bits), ``1..1024``.
    seed : int or numpy.random.Generator, default 0
        A non-negative seed, or a generator whose bit generator is advanced.
    orthogonal : bool, default False
        Make each group of ``dim`` consecutive planes orthogonal.

    Returns
    -------
    numpy.ndarray
        ``(dim, bits)`` float32; column ``j`` is the normal of hyperplane ``j``.

    Examples
    --------
    >>> import etaretrieval as er
    >>> planes = er.hyperplanes(64, 128, seed=0)
    >>> planes.shape, planes.dtype
    ((64, 128), dtype('float32'))
    >>> bool((planes == er.hyperplanes(64, 128, seed=0)).all())
    True
    >>> ortho = er.hyperplanes(64, 128, seed=0, orthogonal=True)
    >>> gram = ortho[:, :64].T.astype(np.float64) @ ortho[:, :64]
    >>> bool(np.allclose(gram - np.diag(np.diag(gram)), 0, atol=1e-4))
    True
    """
    dim = check_dim(dim)
    bits = check_bits(bits)
    check_plane_size(dim, bits)
    if not isinstance(orthogonal, (bool, np.bool_)):
        raise TypeError(f"orthogonal must be a bool, got {type(orthogonal).__name__}")
    gen = _raw_generator(seed)
    n = dim * bits
    raw = gen.random_raw(2 * ((n + 1) // 2)).reshape(2, -1)
    scale = 2.0**-53
    u1 = ((raw[0] >> np.uint64(11)).astype(np.float64) + 1.0) * scale  # (0, 1]
    u2 = (raw[1] >> np.uint64(11)).astype(np.float64) * scale  # [0, 1)
    radius = np.sqrt(-2.0 * np.log(u1))
    angle = 2.0 * np.pi * u2
    z = np.concatenate([radius * np.cos(angle), radius * np.sin(angle)])[:n].reshape(dim, bits)
    if orthogonal:
        z = _orthogonal_groups(z)
    return z.astype(np.float32)


def _orthogonal_groups(z: np.ndarray) -> np.ndarray:
    """``z`` ``(dim, bits)`` float64 with each group of ``dim`` consecutive columns orthogonalised, lengths kept.

    The Q factor of each group's QR decomposition with a positive diagonal
    in R: what Gram-Schmidt in column order gives, computed stably.
    """
    dim, bits = z.shape
    out = np.empty_like(z)
    for lo in range(0, bits, dim):
        group = z[:, lo : lo + dim]
        q, r = np.linalg.qr(group)
        out[:, lo : lo + dim] = q * (np.where(np.diag(r) < 0, -1.0, 1.0) * np.linalg.norm(group, axis=0))
    return out


def _check_planes(planes: Any) -> Any:
    p = as_array(planes, "planes")
    if p.dtype not in _FLOATS:
        raise DTypeError(f"planes must have dtype float32 or float64, got dtype {p.dtype}")
    if p.ndim != 2 or p.shape[0] < 1 or not 1 <= p.shape[1] <= config.MAX_BITS:
        raise ValueError(
            f"planes must have shape (dim, bits) with dim >= 1 and bits in 1..{config.MAX_BITS}, "
            f"got shape {_shape(p.shape)}"
        )
    if not isinstance(p, DeviceArray):
        check_planes_finite(p)
    return p


def check_offset_shape(shape: tuple[int, ...], planes: tuple[int, ...]) -> None:
    """Refuse an ``offset`` whose shape is not ``(bits,)`` of ``(dim, bits)`` ``planes``."""
    if tuple(shape) != (planes[1],):
        raise ValueError(
            f"offset must have shape (bits,) = ({planes[1]},) to match planes {_shape(planes)}, "
            f"got shape {_shape(tuple(shape))}"
        )


def check_offset_finite(finite: bool) -> None:
    """Refuse an ``offset`` holding a NaN or an infinity (``finite``: whether all its values are finite)."""
    if not finite:
        raise ValueError("offset must be finite, got a NaN or an infinity")


def _check_offset(offset: Any, planes: Any) -> Any:
    o = as_array(offset, "offset")
    if o.dtype not in _FLOATS:
        raise DTypeError(f"offset must have dtype float32 or float64, got dtype {o.dtype}")
    check_offset_shape(o.shape, planes.shape)
    if not isinstance(o, DeviceArray):
        check_offset_finite(bool(np.isfinite(o).all()))
    return o


def pack_signatures(
    x: Any, planes: Any, *, check_finite: bool = True, offset: Any = None
) -> npt.NDArray[np.uint64]:
    """SimHash signatures of embeddings, packed into uint64 words.

    Bit ``j`` of a signature is ``1`` iff ``x @ planes[:, j] > 0`` (exactly 0
    and NaN give 0), or ``x @ planes[:, j] + offset[j] > 0`` with an
    ``offset``; it lives in word ``j // 64`` at bit ``j % 64`` (least
    significant first) and unused high bits are 0. Request-sized inputs
    (``rows x dim x bits`` up to :data:`etaretrieval.config.PACK_BLAS_WORK`)
    are projected by a Numba kernel on the library's threads (summed in
    order, no BLAS thread pool involved); larger ones (table builds) in
    chunks with BLAS, so the extra memory is ``O(chunk x bits)`` whatever
    the number of rows.

    Parameters
    ----------
    x : array_like
        ``(..., dim)`` float32 or float64 embeddings; any strides. float16
        (host arrays) is projected in float32.
    planes : array_like
        ``(dim, bits)`` float32 or float64 hyperplanes, ``bits`` in ``1..1024``
        (see :func:`hyperplanes`).
    check_finite : bool, default True
        Raise :class:`ValueError` naming the first row of ``x`` holding a NaN
        or an infinity. With ``False`` such rows are hashed as they come.
    offset : array_like, optional
        ``(bits,)`` float32 or float64 finite values added to the projections:
        hyperplanes that need not pass through the origin (an affine hash,
        e.g. of ``x @ W.T + b`` with planes ``W.T @ R`` and offset ``b @ R``),
        at the cost of one addition per bit. It is rounded to the dtype of
        the projection (the result type of ``x`` and ``planes``). Default:
        none, the plain SimHash.

    Returns
    -------
    numpy.ndarray
        ``(..., W)`` uint64 with ``W = ceil(bits / 64)``. For device arrays
        (``x``, ``planes`` and ``offset`` all with ``__cuda_array_interface__``),
        a device array of ``x``'s library, packed on the GPU.

    Notes
    -----
    The two CPU paths and the GPU sum the projection in different orders: a
    bit can differ between them only where its projection lies within
    rounding of 0. Integer-valued inputs give identical signatures.

    The offset is added after the sum over ``dim``. The request-sized CPU
    path and the GPU sum in order, so there ``x @ planes[:, j] + offset[j]``
    is bit for bit the projection of ``[x, 1]`` on the planes
    ``[planes; offset]`` (one more row) without copying ``x`` one column
    wider; the table-sized path adds it to BLAS's product, which may differ
    from BLAS's product of the wider arrays only within rounding of 0.

    Examples
    --------
    >>> import numpy as np, etaretrieval as er
    >>> planes = np.array([[1.0, -1.0, 0.0]], dtype=np.float32)  # dim 1, 3 bits
    >>> er.pack_signatures(np.array([[2.0], [-1.0], [0.0]]), planes).ravel()
    array([1, 2, 0], dtype=uint64)
    >>> er.pack_signatures(np.array([[2.0], [-1.0], [0.0]]), planes, offset=np.array([-1.0, 0.0, 0.5])).ravel()
    array([5, 6, 4], dtype=uint64)
    """
    device = placement(x=x, planes=planes, offset=offset)
    p = _check_planes(planes)
    dim, bits = p.shape
    a = as_array(x, "x")
    if a.dtype not in _FLOATS and (device or a.dtype != np.float16):
        raise DTypeError(
            f"x must have dtype float32 or float64 (or float16 on the host, projected in float32), got dtype {a.dtype}"
        )
    check_x_shape(a.shape, p.shape)
    o = None if offset is None else _check_offset(offset, p)
    if device:
        from .cuda.pack import pack_signatures as device_pack

        return device_pack(a, p, check_finite, o)
    return host_pack(a, p, check_finite, o)


class SimHasher:
    """Random hyperplanes bundled with packing: ``hasher(x)`` gives signatures.

    Parameters
    ----------
    dim : int
        Embedding dimension.
    bits : int
        Signature length in bits, ``1..1024``.
    seed : int or numpy.random.Generator, default 0
        Seed of :func:`hyperplanes`.

    Attributes
    ----------
    planes : numpy.ndarray
        ``(dim, bits)`` float32 hyperplanes (read-only).
    dim, bits, words : int
        Embedding dimension, signature bits and ``ceil(bits / 64)``.

    Examples
    --------
    >>> import numpy as np, etaretrieval as er
    >>> hasher = er.SimHasher(dim=8, bits=100, seed=1)
    >>> sig = hasher(np.ones((5, 8), dtype=np.float32))
    >>> sig.shape, sig.dtype
    ((5, 2), dtype('uint64'))
    """

    def __init__(self, dim: int, bits: int, seed: int | np.random.Generator = 0) -> None:
        planes = hyperplanes(dim, bits, seed)
        planes.flags.writeable = False
        self.planes: npt.NDArray[np.float32] = planes
        self.dim: int = planes.shape[0]
        self.bits: int = planes.shape[1]
        self.words: int = (self.bits + 63) // 64

    def __call__(self, x: Any, *, check_finite: bool = True) -> npt.NDArray[np.uint64]:
        """Signatures of ``x`` (``(..., dim)``) as ``(..., words)`` uint64; see :func:`pack_signatures`.

        For a device array ``x`` the planes are copied to its device once and kept.
        """
        return pack_signatures(x, self.device_planes(x), check_finite=check_finite)

    def device_planes(self, x: Any) -> Any:
        """:attr:`planes` on the device of ``x`` (uploaded once, then cached), or as is for host ``x``."""
        d = describe(x)
        if d is None:
            return self.planes
        from .cuda.pack import planes_for

        cache = self.__dict__.setdefault("_device_planes", {})
        return planes_for(cache, self.planes, d)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_device_planes", None)  # device copies are not pickled; re-uploaded on use
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.planes.flags.writeable = False  # unpickled arrays come back writeable

    def __repr__(self) -> str:
        return f"SimHasher(dim={self.dim}, bits={self.bits})"
