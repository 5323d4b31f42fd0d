"""CUDA kernels on a real GPU: numba device arrays, torch CUDA tensors, CuPy, streams.

Skipped unless numba sees a CUDA GPU (and not under the simulator). Run on a
GPU machine with ``scripts/gpu_check.sh`` (or
``python -m pytest tests/test_gpu.py -m gpu``). Every result is compared with
the CPU kernels exactly.
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
        from numba import cuda
    except ImportError:
        return False
    try:
        return bool(cuda.is_available())
    except Exception:  # pragma: no cover - broken driver setups
        return False


GPU = _gpu()
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not GPU, reason="needs a CUDA GPU visible to numba"),
    # one block per row: small batches are small grids, which numba flags as under-utilisation
    pytest.mark.filterwarnings("ignore:Grid size"),
]


def _torch() -> Any:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA")
    return torch


def dev(a: Any) -> Any:
    from numba import cuda

    return None if a is None else cuda.to_device(np.ascontiguousarray(a))


def host(a: Any) -> np.ndarray:
    if type(a).__module__.startswith("torch"):
        return a.cpu().numpy()
    if type(a).__module__.startswith("cupy"):
        return a.get()
    return a.copy_to_host()


def sigs(rng: np.random.Generator, shape: tuple[int, ...], ties: bool) -> np.ndarray:
    a = rng.integers(0, 2**64, size=shape, dtype=np.uint64)
    return a & np.uint64(0xFF) if ties else a


def same(got: tuple[Any, Any], want: tuple[np.ndarray, np.ndarray]) -> None:
    np.testing.assert_array_equal(host(got[0]), want[0])
    np.testing.assert_array_equal(host(got[1]), want[1])


@pytest.mark.parametrize("words", [1, 2, 16])
@pytest.mark.parametrize("length", [0, 500, 20000])  # 20000 positions: global scratch (> 32 KiB of uint16)
def test_topk_numba(words: int, length: int) -> None:
    rng = np.random.default_rng(words * 7 + length)
    batch = 33
    q = sigs(rng, (batch, words), ties=True)
    keys = sigs(rng, (batch, length, words), ties=True)
    lengths = rng.integers(0, length + 1, size=batch)
    for k in (0, 1, 64, length + 3):
        same(er.topk_hamming(dev(q), dev(keys), k), er.topk_hamming(q, keys, k))
        same(er.topk_hamming(dev(q), dev(keys[0]), k, lengths=dev(lengths)),
             er.topk_hamming(q, keys[0], k, lengths=lengths))
    mask = rng.random((batch, length)) < 0.3
    same(er.topk_hamming(dev(q), dev(keys), 50, mask=dev(mask)), er.topk_hamming(q, keys, 50, mask=mask))


@pytest.mark.parametrize("length", [300, 20000])
def test_lookup_numba(length: int) -> None:
    rng = np.random.default_rng(length)
    batch, nrows, words = 40, 1000, 2
    q = sigs(rng, (batch, words), ties=True)
    table = sigs(rng, (nrows, words), ties=True)
    ids = rng.integers(0, nrows, size=(batch, length)).astype(np.int32)
    lengths = rng.integers(0, length + 1, size=batch)
    for k in (0, 10, 200):
        same(er.topk_hamming_lookup(dev(q), dev(ids), dev(table), k, lengths=dev(lengths), padding_id=0),
             er.topk_hamming_lookup(q, ids, table, k, lengths=lengths, padding_id=0))
    ids[17, length // 2] = nrows
    with pytest.raises(IndexError) as cpu:
        er.topk_hamming_lookup(q, ids, table, 5)
    with pytest.raises(IndexError) as gpu:
        er.topk_hamming_lookup(dev(q), dev(ids), dev(table), 5)
    assert str(gpu.value) == str(cpu.value)


def test_hamming_and_pack_numba() -> None:
    rng = np.random.default_rng(1)
    a = sigs(rng, (64, 1, 3), ties=False)
    b = sigs(rng, (5, 3), ties=False)
    np.testing.assert_array_equal(host(er.hamming(dev(a), dev(b))), er.hamming(a, b))
    x = rng.integers(-3, 4, size=(2000, 32)).astype(np.float32)  # integer-valued: exact projections
    planes = rng.integers(-2, 3, size=(32, 200)).astype(np.float32)
    np.testing.assert_array_equal(host(er.pack_signatures(dev(x), dev(planes))), er.pack_signatures(x, planes))
    hasher = er.SimHasher(32, 130, seed=0)
    g = rng.standard_normal((3000, 32)).astype(np.float32)
    agree = host(hasher(dev(g))) == hasher(g)
    assert agree.mean() > 0.999  # bits may differ only where a projection is within rounding of 0


def test_torch_tensors_stay_on_device_and_match() -> None:
    torch = _torch()
    rng = np.random.default_rng(2)
    q = sigs(rng, (16, 2), ties=True)
    keys = sigs(rng, (16, 700, 2), ties=True)
    tq = torch.from_numpy(q).cuda()
    tk = torch.from_numpy(keys).cuda()
    idx, dist = er.topk_hamming(tq, tk, 32)
    assert isinstance(idx, torch.Tensor) and idx.is_cuda and idx.dtype == torch.int64 and dist.dtype == torch.int32
    same((idx, dist), er.topk_hamming(q, keys, 32))
    lengths = torch.randint(0, 701, (16,), device="cuda", dtype=torch.int32)
    same(er.topk_hamming(tq, tk[:, ::2], 8, lengths=lengths // 2),
         er.topk_hamming(q, keys[:, ::2], 8, lengths=(lengths // 2).cpu().numpy()))
    ids = torch.randint(0, 50, (16, 700), device="cuda")
    table = torch.from_numpy(sigs(rng, (50, 2), ties=True)).cuda()
    same(er.topk_hamming_lookup(tq, ids, table, 10, padding_id=3),
         er.topk_hamming_lookup(q, ids.cpu().numpy(), table.cpu().numpy(), 10, padding_id=3))
    emb = torch.nn.Embedding(50, 16).cuda()  # requires grad: read through a detached view
    hasher = er.SimHasher(16, 64, seed=1)
    sig = hasher(emb.weight)
    assert isinstance(sig, torch.Tensor) and sig.dtype == torch.uint64 and sig.is_cuda
    table_t = er.SignatureTable(emb.weight, hasher)
    with torch.no_grad():
        emb.weight[3] *= -1
    table_t.refresh(rows=[3])
    want = hasher(emb.weight.detach().cpu().numpy())
    agree = table_t.signatures.cpu().numpy() == want
    assert agree.mean() > 0.99
    with pytest.raises(ValueError, match="is host data"):
        er.topk_hamming(tq, keys, 3)


def test_torch_streams() -> None:
    """Kernels run on torch's current stream, in order after the work that produced the inputs."""
    torch = _torch()
    rng = np.random.default_rng(3)
    q = sigs(rng, (64, 1), ties=True)
    keys = sigs(rng, (64, 4000, 1), ties=True)
    want = er.topk_hamming(q, keys, 16)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        big = torch.randn(4096, 4096, device="cuda")
        for _ in range(3):
            big = big @ big  # keep the stream busy before the inputs are written
        tk = torch.from_numpy(keys).to("cuda", non_blocking=True)
        tq = torch.from_numpy(q).to("cuda", non_blocking=True)
        idx, dist = er.topk_hamming(tq, tk, 16)
    stream.synchronize()
    same((idx, dist), want)

    from etaretrieval.cuda import topk_hamming_into

    out_i = torch.empty((64, 16), dtype=torch.int64, device="cuda")
    out_d = torch.empty((64, 16), dtype=torch.int32, device="cuda")
    with torch.cuda.stream(stream):  # int64 tensors carry the signature bits, as in the torch ops
        q64 = torch.from_numpy(q.view(np.int64)).to("cuda", non_blocking=True)
        k64 = torch.from_numpy(keys.view(np.int64)).to("cuda", non_blocking=True)
        topk_hamming_into(q64, k64, 16, out_i, out_d, stream=torch.cuda.current_stream().cuda_stream)
    stream.synchronize()
    same((out_i, out_d), want)


def test_cupy_arrays() -> None:
    cupy = pytest.importorskip("cupy")
    rng = np.random.default_rng(4)
    q = sigs(rng, (8, 1), ties=True)
    keys = sigs(rng, (300, 1), ties=True)
    idx, dist = er.topk_hamming(cupy.asarray(q), cupy.asarray(keys), 12)
    assert isinstance(idx, cupy.ndarray)
    same((idx, dist), er.topk_hamming(q, keys, 12))
    rev = cupy.asarray(keys)[::-1]  # negative strides
    same(er.topk_hamming(cupy.asarray(q), rev, 12), er.topk_hamming(q, keys[::-1], 12))


def test_torch_ops_cuda_kernels() -> None:
    """The custom ops run their CUDA kernels on CUDA tensors, eagerly and compiled, like the CPU kernels."""
    torch = _torch()
    import etaretrieval.torch  # noqa: F401  (registers the ops and their CUDA kernels)

    ops = torch.ops.etaretrieval
    rng = np.random.default_rng(5)
    q = torch.from_numpy(sigs(rng, (32, 2), ties=True).view(np.int64))
    keys = torch.from_numpy(sigs(rng, (32, 900, 2), ties=True).view(np.int64))
    ids = torch.from_numpy(rng.integers(0, 40, size=(32, 900)).astype(np.int32))
    table = torch.from_numpy(sigs(rng, (40, 2), ties=True).view(np.int64))
    lengths = torch.from_numpy(rng.integers(0, 901, size=32))
    x = torch.from_numpy(rng.standard_normal((7, 5, 16)))
    planes = torch.from_numpy(er.hyperplanes(16, 100))

    def body(qq: Any, kk: Any, ii: Any, tt: Any, nn: Any, xx: Any, pp: Any) -> tuple[Any, ...]:
        return (*ops.topk_hamming(qq, kk[:, ::3], 20, nn // 3), *ops.topk_hamming(qq, kk[0], 20),
                *ops.topk_hamming_lookup(qq, ii, tt, 20, lengths=nn, padding_id=7),
                # integer-valued embeddings: no projection lies within rounding of 0, so the bits agree exactly
                ops.pack_signatures(xx.round(), pp.round()))

    inputs = (q, keys, ids, table, lengths, x, planes)
    cpu = body(*inputs)
    on_gpu = [t.cuda() for t in inputs]
    for fn in (body, torch.compile(body, fullgraph=True)):
        got = fn(*on_gpu)
        assert all(t.is_cuda for t in got)
        for a, b in zip(got, cpu):
            torch.testing.assert_close(a.cpu(), b, rtol=0, atol=0)
    # edge cases: B = 0, k = 0, L = 0, shared (L,) ids and keys, int32 lengths, (L,) mask
    shared_mask = keys[0, :, 0] % 3 == 0
    cases = [
        (ops.topk_hamming, (q[:0], keys[0], 5), {}),
        (ops.topk_hamming, (q, keys, 0), {}),
        (ops.topk_hamming, (q, keys[:, :0], 3), {}),
        (ops.topk_hamming, (q, keys[0], 7), {"lengths": lengths.int()}),
        (ops.topk_hamming, (q, keys[0], 7), {"mask": shared_mask}),
        (ops.topk_hamming_lookup, (q, ids[0], table, 7), {"mask": shared_mask, "padding_id": 3}),
        (ops.topk_hamming_lookup, (q, ids[:, :0], table, 4), {}),
    ]
    for op, args, kwargs in cases:
        want = op(*args, **kwargs)
        got = op(*[a.cuda() if isinstance(a, torch.Tensor) else a for a in args],
                 **{name: v.cuda() if isinstance(v, torch.Tensor) else v for name, v in kwargs.items()})
        for a, b in zip(got, want):
            assert a.is_cuda
            torch.testing.assert_close(a.cpu(), b, rtol=0, atol=0)
    torch.library.opcheck(ops.topk_hamming, (q.cuda(), keys.cuda(), 5))
    torch.library.opcheck(ops.topk_hamming_lookup, (q.cuda(), ids.cuda(), table.cuda(), 5))
    with pytest.raises(IndexError, match=r"ids\[0, 0\]"):
        ops.topk_hamming_lookup(q.cuda(), torch.full((32, 900), 40, device="cuda"), table.cuda(), 5)


def test_torch_modules_on_cuda_match_cpu() -> None:
    """ETARetriever / SignatureCache / ETAAttention on CUDA retrieve what they retrieve on the CPU."""
    torch = _torch()
    from etaretrieval.torch import ETAAttention, ETARetriever, SignatureCache

    torch.manual_seed(0)
    emb = torch.nn.Embedding(300, 16)
    with torch.no_grad():
        emb.weight.copy_(emb.weight.mul(8).round())  # integer-valued: exact bits on both devices
    retriever = ETARetriever(16, 64, 12, seed=3)
    retriever.planes.copy_(retriever.planes.mul(4).round())  # integer planes too: exact projections
    seq_ids = torch.randint(0, 300, (8, 400))
    target = emb(torch.randint(0, 300, (8,)))
    cache = SignatureCache(emb, retriever)
    cpu = retriever(target, seq_ids=seq_ids, cache=cache)
    emb_c, retriever_c = emb.cuda(), retriever.cuda()
    cache_c = SignatureCache(emb_c, retriever_c)
    got = retriever_c(target.cuda(), seq_ids=seq_ids.cuda(), cache=cache_c)
    torch.testing.assert_close(got.index.cpu(), cpu.index, rtol=0, atol=0)
    block = ETAAttention(16, 64, 12, heads=2).cuda()
    out = block(target.cuda(), emb_c(seq_ids.cuda()))
    assert out.shape == (8, 16) and torch.isfinite(out).all()
    out.sum().backward()
