"""The decomposition table for deploying an exported program: ATen forms, or the native top-K kernels."""

from __future__ import annotations

from typing import Callable

import torch

from . import aten
from . import native as _native

__all__ = ["decompositions"]


def decompositions(native: bool = False) -> dict[torch._ops.OpOverload, Callable[..., object]]:
    """The table for ``ExportedProgram.run_decompositions``: every etaretrieval operator -> its ATen form.

    Parameters
    ----------
    native : bool, default False
        Map ``topk_hamming`` and ``topk_hamming_lookup`` to the native C++
        kernels instead (:func:`etaretrieval.torch.native.decompositions`;
        the library must be loaded): the served program then needs
        ``libetaretrieval_native`` next to libtorch and retrieves at about
        the speed of the Numba kernels.

    Returns
    -------
    dict
        ``torch.ops.etaretrieval.<op>.default`` -> the function of
        ``etaretrieval.torch.aten`` with the same name (or of
        ``etaretrieval.torch.native``).

    Examples
    --------
    >>> import torch
    >>> from etaretrieval.torch import decompositions
    >>> table = decompositions()
    >>> table[torch.ops.etaretrieval.topk_hamming.default].__module__
    'etaretrieval.torch.aten'

    An exported program, decomposed, holds ATen operators only
    (``program.run_decompositions(decompositions())``; see the
    Deploying page of the user guide).
    """
    return _native.decompositions() if native else aten.decompositions()
