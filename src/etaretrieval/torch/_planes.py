"""Hyperplanes of a linear or an affine hash, and hashing rows with them (shared by the retriever and the cache).

A SimHash over planes ``R`` ``(d, bits)`` gives bit ``j`` of a row ``e`` as
``e . R[:, j] > 0``. Hashing the image of a linear map ``y = W e + b``
(an ``nn.Linear``, weight ``W`` ``(d_out, d)``) with the same planes folds
the map into them::

    sign(R^T (W e + b)) = sign((W^T R)^T e + R^T b)

so the cost stays that of hashing ``e``. The offset ``R^T b`` is carried as
one more row of the planes, ``(d + 1, bits)``: planes with one row more than
the rows hashed are *affine* planes everywhere in this package. They hash
``e`` as ``e . (W^T R)[:, j] + (b^T R)[j] > 0``: the first ``d`` rows are the
planes and the last the ``offset`` of the hashing op (views, no copy of ``e``
or of the planes), which adds it after the sum over ``d``. That is what
``[e, 1] . [W^T R; b^T R]`` sums, and ``(W e + b) . R`` up to float rounding
(which can only flip a bit whose projection is within rounding of zero).
"""

from __future__ import annotations

import re
from typing import Optional, cast

import torch
from torch import nn

from .._validate import NonFiniteError
from . import _ops

__all__ = ["fold", "hash_rows", "is_affine"]


def fold(planes: torch.Tensor, linear: nn.Linear) -> torch.Tensor:
    """Affine planes ``(d_in + 1, bits)`` hashing ``linear(x)`` with ``planes`` ``(d_out, bits)``, given ``x``.

    Not differentiable (hashing is not): computed from the detached weights,
    in the wider of the two dtypes (float64 planes for a float64 projection).
    """
    with torch.no_grad():
        dtype = torch.promote_types(planes.dtype, linear.weight.dtype)
        planes = planes.to(dtype)
        rows = [linear.weight.detach().to(dtype).T @ planes]
        bias = linear.bias
        rows.append((bias.detach().to(dtype) @ planes).unsqueeze(0) if bias is not None
                    else planes.new_zeros(1, planes.shape[1]))
        return torch.cat(rows)


def is_affine(planes: torch.Tensor, dim: int) -> bool:
    """Whether ``planes`` hash ``dim``-wide rows as affine planes (``dim + 1`` rows, the last the offset)."""
    return planes.shape[0] == dim + 1


def hash_rows(
    x: torch.Tensor, planes: torch.Tensor, check_finite: bool = True, valid: Optional[torch.Tensor] = None,
    name: str = "x",
) -> torch.Tensor:
    """Signatures ``(..., W)`` of the rows of ``x`` ``(..., d)`` with linear ``(d, bits)`` or affine planes.

    Arguments as in :func:`etaretrieval.torch.pack_signatures`; affine planes
    ``(d + 1, bits)`` hash ``x`` with their first ``d`` rows and the last as
    the ``offset``, the projection of ``[x, 1]`` without copying ``x``.
    ``name`` is the caller's argument that ``x`` is, named in a non-finite row's error.
    """
    x = x.detach()
    offset = None
    if is_affine(planes, x.shape[-1]):
        planes, offset = planes[:-1], planes[-1]
    try:
        return cast(torch.Tensor, _ops.pack_signatures(x, planes, check_finite, valid, offset=offset))
    except NonFiniteError as err:
        if name == "x":
            raise
        raise NonFiniteError(re.sub(r"^x\b", name, str(err)), err.where) from None
