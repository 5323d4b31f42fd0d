"""SDIM's CUDA kernels on a real GPU: numba device arrays and torch CUDA tensors, against the CPU exactly.

Skipped unless numba sees a CUDA GPU (and not under the simulator)::

    python -m pytest tests/test_sdim_gpu.py -m gpu -p no:cacheprovider
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest
import reference as ref

import etaretrieval as er


def _gpu() -> bool:
    if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0"):
        return False
    try:
        from numba import cuda
    except ImportError:
        return False
    try:
        return bool(cuda.is_available())
    except Exception:  # pragma: no cover - broken driver setups
        return False


pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not _gpu(), reason="needs a CUDA GPU visible to numba"),
    pytest.mark.filterwarnings("ignore:Grid size"),
]


def dev(a: Any) -> Any:
    from numba import cuda

    return None if a is None else cuda.to_device(np.ascontiguousarray(a))


def inputs(tau: int, bits: int, batch: int = 8, length: int = 3000, d: int = 64, seed: int = 0) -> tuple:
    rng = np.random.default_rng(seed)
    words = ref.words_for(bits)
    query = ref.random_signatures(rng, (batch, words), bits=bits)
    keys = ref.random_signatures(rng, (batch, length, words), bits=bits)
    hit = rng.random((batch, length)) < 0.3
    keys[hit] = np.broadcast_to(query[:, None], keys.shape)[hit]
    values = rng.standard_normal((batch, length, d)).astype(np.float32)
    lengths = rng.integers(0, length + 1, size=batch)
    return query, keys, values, lengths


@pytest.mark.parametrize(("tau", "bits"), [(4, 128), (12, 72), (1, 64), (16, 64)])
def test_numba_device_arrays_equal_cpu(tau: int, bits: int) -> None:
    query, keys, values, lengths = inputs(tau, bits)
    for dtype in (np.float32, np.float64):
        v = values.astype(dtype)
        kw = {"bits": bits, "lengths": lengths}
        dkw = {"bits": bits, "lengths": dev(lengths)}
        for fn in (er.sdim_pool, er.sdim_group_sums):
            np.testing.assert_array_equal(fn(dev(query), dev(keys), dev(v), tau, **dkw).copy_to_host(),
                                          fn(query, keys, v, tau, **kw))
        if tau <= 12:
            want = er.sdim_buckets(keys, v, tau, **kw)
            got = er.sdim_buckets(dev(keys), dev(v), tau, **dkw)
            np.testing.assert_array_equal(got.copy_to_host(), want)
            np.testing.assert_array_equal(er.sdim_from_buckets(dev(query), got).copy_to_host(),
                                          er.sdim_from_buckets(query, want))
    np.testing.assert_array_equal(er.sdim_codes(dev(keys), tau, bits=bits).copy_to_host(),
                                  er.sdim_codes(keys, tau, bits=bits))


def test_torch_ops_and_module_on_cuda_match_cpu() -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA")
    from etaretrieval.torch import SDIMAttention

    ops = torch.ops.etaretrieval
    query, keys, values, lengths = inputs(4, 128, batch=4, length=500, d=16)
    q, k = (torch.from_numpy(a.view(np.int64)) for a in (query, keys))
    v, n = torch.from_numpy(values), torch.from_numpy(lengths)
    cpu = ops.sdim_group_sums(q, k, v, 4, 128, n)
    gpu = ops.sdim_group_sums(q.cuda(), k.cuda(), v.cuda(), 4, 128, n.cuda())
    assert gpu.is_cuda
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=0, atol=0)
    grad = torch.randn_like(cpu)
    torch.testing.assert_close(
        ops.sdim_group_sums_backward(q.cuda(), k.cuda(), grad.cuda(), 4, 128, n.cuda()).cpu(),
        ops.sdim_group_sums_backward(q, k, grad, 4, 128, n), rtol=0, atol=0,
    )
    buckets = ops.sdim_buckets(k[0].cuda(), v[0].cuda(), 4, 128)
    torch.testing.assert_close(buckets.cpu(), ops.sdim_buckets(k[0], v[0], 4, 128), rtol=0, atol=0)
    torch.testing.assert_close(ops.sdim_from_buckets(q.cuda(), buckets).cpu(),
                               ops.sdim_from_buckets(q, buckets.cpu()), rtol=0, atol=0)
    # the module on CUDA: the serving form equals training there too (signatures hashed on the GPU)
    torch.manual_seed(0)
    module = SDIMAttention(dim=16, bits=128, tau=4).cuda()
    seq = torch.randn(1, 200, 16, device="cuda", requires_grad=True)
    targets = torch.randn(5, 16, device="cuda")
    out = module(targets, seq.expand(5, -1, -1))
    out.sum().backward()
    assert out.is_cuda and seq.grad is not None and seq.grad.abs().sum() > 0
    with torch.no_grad():
        served = module.forward_from_buckets(targets, module.summarize(seq)[0])
    torch.testing.assert_close(served, out.detach(), rtol=1e-5, atol=1e-6)
