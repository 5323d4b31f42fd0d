"""The inputs of ``test_torch_inputs.py`` on a real GPU: torch CUDA tensors against the CPU.

Front-padded lengths (the device left-padding kernel), numeric masks,
float16 / bfloat16 embeddings (cast before the CUDA pack kernel), NaN at
masked positions, and the NumPy API's device path with left padding. Skipped
unless torch and numba both see a CUDA GPU (``scripts/gpu_check.sh`` runs it).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest

import etaretrieval as er


def _gpu() -> bool:
    if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0"):
        return False
    try:
        import torch
        from numba import cuda
    except ImportError:
        return False
    try:
        return bool(cuda.is_available() and torch.cuda.is_available())
    except Exception:  # pragma: no cover - broken driver setups
        return False


pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not _gpu(), reason="needs a CUDA GPU visible to numba and torch"),
    pytest.mark.filterwarnings("ignore:Grid size"),
]


def _torch() -> Any:
    import torch

    import etaretrieval.torch  # noqa: F401  (registers the ops)

    return torch


def test_left_padding_ops_on_cuda_equal_cpu() -> None:
    torch = _torch()
    ops = torch.ops.etaretrieval
    gen = torch.Generator().manual_seed(0)
    query = torch.randint(0, 4, (5, 1), generator=gen)
    keys = torch.randint(0, 4, (5, 300, 1), generator=gen)
    ids = torch.randint(0, 7, (5, 300), generator=gen)
    table = torch.randint(0, 4, (7, 1), generator=gen)
    for lengths in (torch.tensor([300, 0, 17, 299, 1]), torch.tensor([40, 40, 40, 40, 40], dtype=torch.int32)):
        for args_cpu in ((query, keys, 9, lengths, None, "left"), (query, keys, 9, lengths, None, "right")):
            args_gpu = tuple(a.cuda() if isinstance(a, torch.Tensor) else a for a in args_cpu)
            got, want = ops.topk_hamming(*args_gpu), ops.topk_hamming(*args_cpu)
            assert torch.equal(got[0].cpu(), want[0]) and torch.equal(got[1].cpu(), want[1])
        got = ops.topk_hamming_lookup(query.cuda(), ids.cuda(), table.cuda(), 9, lengths.cuda(), None, 3, "left")
        want = ops.topk_hamming_lookup(query, ids, table, 9, lengths, None, 3, "left")
        assert torch.equal(got[0].cpu(), want[0])
    with pytest.raises(ValueError, match=r"lengths must lie in 0\.\.300, got lengths\[1\] = 301"):
        ops.topk_hamming(query.cuda(), keys.cuda(), 3, torch.tensor([1, 301, 0, 0, 0]).cuda(), None, "left")


def test_numpy_api_left_padding_with_cuda_tensors() -> None:
    torch = _torch()
    rng = np.random.default_rng(1)
    q = rng.integers(0, 2**64, size=(4, 2), dtype=np.uint64)
    keys = rng.integers(0, 2**64, size=(4, 50, 2), dtype=np.uint64)
    lengths = np.array([50, 3, 0, 20])
    want = er.topk_hamming(q, keys, 6, lengths=lengths, padding_side="left")
    got = er.topk_hamming(torch.from_numpy(q).cuda(), torch.from_numpy(keys).cuda(), 6,
                          lengths=torch.from_numpy(lengths).cuda(), padding_side="left")
    np.testing.assert_array_equal(got[0].cpu().numpy(), want[0])


def test_numeric_masks_half_embeddings_and_masked_nan_on_cuda() -> None:
    torch = _torch()
    from etaretrieval.torch import ETAAttention

    gen = torch.Generator().manual_seed(2)
    target = torch.randint(-3, 4, (3, 16), generator=gen).float()
    seq = torch.randint(-3, 4, (3, 40, 16), generator=gen).float()
    mask = torch.rand(3, 40, generator=gen) < 0.7
    seq[~mask] = float("nan")
    torch.manual_seed(0)
    eta = ETAAttention(16, 64, k=5, heads=2)
    want = eta.retriever(target, seq, mask)
    eta_gpu = eta.cuda()
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        for m in (mask, mask.float(), mask.to(torch.uint8)):
            got = eta_gpu.retriever(target.cuda().to(dtype), seq.cuda().to(dtype), m.cuda())
            assert torch.equal(got.index.cpu(), want.index)
    seq[1, 0] = float("nan")
    mask[1, 0] = True
    with pytest.raises(ValueError, match=r"in row 1 at position 0, a valid one"):
        eta_gpu.retriever(target.cuda(), seq.cuda(), mask.cuda())


def test_huge_k_on_cuda_names_k() -> None:
    torch = _torch()
    ops = torch.ops.etaretrieval
    q, keys = torch.zeros(4, 1, dtype=torch.int64).cuda(), torch.zeros(4, 5, 1, dtype=torch.int64).cuda()
    with pytest.raises(ValueError, match=r"k = \d+ is too large"):
        ops.topk_hamming(q, keys, 2**45)
