"""CUDA kernels against the CPU kernels, exactly, under numba's CUDA simulator.

Run in a process of their own, with the simulator switched on before numba is
imported::

    NUMBA_ENABLE_CUDASIM=1 python -m pytest tests/test_cuda_sim.py -m cudasim -p no:cacheprovider

Without ``NUMBA_ENABLE_CUDASIM=1`` the ``cudasim`` tests are skipped. The few
unmarked tests at the end run in the ordinary CPU process: they check that the
package imports (and validates device arrays) without ``numba.cuda``.

The simulator runs every GPU thread as a Python thread, so shapes are small and
the kernels' tunables are set tiny (a handful of threads, tiles of a few
positions, shared scratch of a few bytes) to cross every tile boundary.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import etaretrieval as er

SIM = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")
#: The simulator is slow: few examples, no deadline.
FEW = settings(max_examples=12, deadline=None, derandomize=True, database=None)
#: More examples for the top-K kernels, the intricate ones.
MORE = settings(max_examples=40, deadline=None, derandomize=True, database=None)

#: (TOPK_THREADS, TOPK_ITEMS, TOPK_SHARED_SCRATCH_BYTES, HAMMING_THREADS, PACK_ROWS_PER_BLOCK)
CONFIGS = [(4, 2, 16, 8, 2), (8, 1, 4096, 16, 3), (2, 3, 0, 4, 1)]


@contextlib.contextmanager
def cuda_config(values: tuple[int, int, int, int, int]) -> Iterator[None]:
    from etaretrieval.cuda import config

    names = ["TOPK_THREADS", "TOPK_ITEMS", "TOPK_SHARED_SCRATCH_BYTES", "HAMMING_THREADS", "PACK_ROWS_PER_BLOCK"]
    old = [getattr(config, n) for n in names]
    for n, v in zip(names, values):
        setattr(config, n, v)
    try:
        yield
    finally:
        for n, v in zip(names, old):
            setattr(config, n, v)


@pytest.fixture(autouse=True)
def tiny_config() -> Iterator[None]:
    """Every test runs with the first tiny configuration unless it picks another."""
    if not SIM:
        yield
        return
    with cuda_config(CONFIGS[0]):
        yield


def dev(a: Any) -> Any:
    """A device copy of ``a`` (``None`` stays ``None``)."""
    from numba import cuda

    return None if a is None else cuda.to_device(np.ascontiguousarray(a))


def host(a: Any) -> np.ndarray:
    """A host copy of a result, which must be a device array."""
    assert getattr(a, "__cuda_ndarray__", False) is True, f"not a device array: {type(a)}"
    return np.asarray(a.copy_to_host())


def same(got: tuple[Any, Any], want: tuple[np.ndarray, np.ndarray]) -> None:
    """Device results ``(idx, dist)`` equal the CPU's exactly."""
    np.testing.assert_array_equal(host(got[0]), want[0])
    np.testing.assert_array_equal(host(got[1]), want[1])


def same_error(cpu: Any, gpu: Any) -> None:
    """Both calls raise the same exception type with the same message."""
    with pytest.raises(Exception) as e_cpu:
        cpu()
    with pytest.raises(Exception) as e_gpu:
        gpu()
    assert type(e_gpu.value) is type(e_cpu.value), (e_cpu.value, e_gpu.value)
    assert str(e_gpu.value) == str(e_cpu.value)


def signatures(rng: np.random.Generator, shape: tuple[int, ...], style: str) -> np.ndarray:
    """uint64 signatures: full random words, or a few bits only (many ties)."""
    a = rng.integers(0, 2**64, size=shape, dtype=np.uint64, endpoint=False)
    if style == "ties":
        a &= np.uint64(0b111)
    elif style == "pool":
        pool = rng.integers(0, 2**64, size=(3,) + shape[-1:], dtype=np.uint64)
        a = pool[rng.integers(0, 3, size=shape[:-1])] if len(shape) > 1 else pool[0]
    return a


def validity(rng: np.random.Generator, kind: str, batch: int, length: int) -> tuple[Any, Any]:
    if kind == "lengths":
        return rng.integers(0, length + 1, size=batch).astype(rng.choice([np.int64, np.int32, np.uint8])), None
    if kind == "mask2d":
        return None, rng.random((batch, length)) < 0.6
    if kind == "mask1d":
        return None, rng.random(length) < 0.6
    return None, None


WORDS = st.sampled_from([1, 1, 2, 3, 16])
STYLES = st.sampled_from(["random", "ties", "pool"])
VALIDITY = st.sampled_from(["none", "lengths", "mask2d", "mask1d"])


# ----------------------------------------------------------------------------- top-K


@pytest.mark.cudasim
@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("shared", [False, True])
def test_topk_fixed_cases(config: tuple[int, ...], shared: bool) -> None:
    rng = np.random.default_rng(sum(config) + shared)
    batch, length, words = 3, 21, 2
    query = signatures(rng, (batch, words), "ties")
    keys = signatures(rng, (length, words) if shared else (batch, length, words), "ties")
    with cuda_config(config):  # type: ignore[arg-type]
        for k, kind in ((0, "lengths"), (1, "none"), (5, "mask2d"), (length, "lengths"), (length + 4, "mask1d")):
            lengths, mask = validity(rng, kind, batch, length)
            want = er.topk_hamming(query, keys, k, lengths=lengths, mask=mask)
            got = er.topk_hamming(dev(query), dev(keys), k, lengths=dev(lengths), mask=dev(mask))
            same(got, want)
            assert host(got[0]).dtype == np.int64 and host(got[1]).dtype == np.int32


@pytest.mark.cudasim
@MORE
@given(
    seed=st.integers(0, 2**32 - 1),
    batch=st.integers(0, 4),
    length=st.integers(0, 24),
    words=WORDS,
    style=STYLES,
    kind=VALIDITY,
    shared=st.booleans(),
    extra_k=st.integers(-30, 4),
    config=st.sampled_from(CONFIGS),
)
def test_topk_matches_cpu(seed: int, batch: int, length: int, words: int, style: str, kind: str,
                          shared: bool, extra_k: int, config: tuple[int, int, int, int, int]) -> None:
    rng = np.random.default_rng(seed)
    k = max(0, length + extra_k)
    query = signatures(rng, (batch, words), style)
    keys = signatures(rng, (length, words) if shared else (batch, length, words), style)
    lengths, mask = validity(rng, kind, batch, length)
    want = er.topk_hamming(query, keys, k, lengths=lengths, mask=mask)
    with cuda_config(config):
        got = er.topk_hamming(dev(query), dev(keys), k, lengths=dev(lengths), mask=dev(mask))
    same(got, want)


@pytest.mark.cudasim
def test_topk_strided_device_inputs() -> None:
    """Non-contiguous device views (every other position and word) give the CPU's answer."""
    rng = np.random.default_rng(7)
    query = signatures(rng, (3, 4), "ties")
    keys = signatures(rng, (3, 30, 4), "ties")
    qd, kd = dev(query), dev(keys)
    want = er.topk_hamming(query[:, ::2], keys[:, ::3, ::2], 6)
    got = er.topk_hamming(qd[:, ::2], kd[:, ::3, ::2], 6)
    same(got, want)
    np.testing.assert_array_equal(host(qd), query)  # inputs untouched
    np.testing.assert_array_equal(host(kd), keys)


@pytest.mark.cudasim
def test_topk_all_tied_and_far() -> None:
    """A whole row in one bucket (ties everywhere) and the largest distance 64 W."""
    query = np.zeros((2, 1), dtype=np.uint64)
    keys = np.full((2, 17, 1), np.uint64(2**64 - 1), dtype=np.uint64)
    for k in (1, 8, 17, 20):
        want = er.topk_hamming(query, keys, k)
        got = er.topk_hamming(dev(query), dev(keys), k)
        same(got, want)


@pytest.mark.cudasim
def test_topk_errors_match_cpu() -> None:
    rng = np.random.default_rng(3)
    q = signatures(rng, (2, 1), "random")
    keys = signatures(rng, (2, 5, 1), "random")
    qd, kd = dev(q), dev(keys)
    same_error(lambda: er.topk_hamming(q, keys, 2, lengths=np.array([1, 6])),
               lambda: er.topk_hamming(qd, kd, 2, lengths=dev(np.array([1, 6]))))
    same_error(lambda: er.topk_hamming(q, keys, 2, lengths=np.array([-1, 9])),
               lambda: er.topk_hamming(qd, kd, 0, lengths=dev(np.array([-1, 9]))))
    same_error(lambda: er.topk_hamming(q, keys, -1), lambda: er.topk_hamming(qd, kd, -1))
    same_error(lambda: er.topk_hamming(q.astype(np.int64), keys, 2),
               lambda: er.topk_hamming(dev(q.astype(np.int64)), kd, 2))
    same_error(lambda: er.topk_hamming(q, keys[:, :, :0], 2), lambda: er.topk_hamming(qd, dev(keys[:, :, :0]), 2))
    same_error(lambda: er.topk_hamming(q, keys[:1], 2), lambda: er.topk_hamming(qd, dev(keys[:1]), 2))
    same_error(lambda: er.topk_hamming(q, keys, 2, mask=np.ones((2, 4), bool)),
               lambda: er.topk_hamming(qd, kd, 2, mask=dev(np.ones((2, 4), bool))))
    same_error(lambda: er.topk_hamming(q, keys, 2, mask=np.ones((2, 5), np.int8)),
               lambda: er.topk_hamming(qd, kd, 2, mask=dev(np.ones((2, 5), np.int8))))
    same_error(lambda: er.topk_hamming(q, keys, 2, lengths=np.ones(2), mask=np.ones(5, bool)),
               lambda: er.topk_hamming(qd, kd, 2, lengths=dev(np.ones(2)), mask=dev(np.ones(5, bool))))
    same_error(lambda: er.topk_hamming(q, keys, 2, lengths=np.ones(2)),
               lambda: er.topk_hamming(qd, kd, 2, lengths=dev(np.ones(2))))


@pytest.mark.cudasim
def test_host_device_mix_is_an_error() -> None:
    rng = np.random.default_rng(4)
    q = signatures(rng, (2, 1), "random")
    keys = signatures(rng, (2, 5, 1), "random")
    table = signatures(rng, (4, 1), "random")
    ids = np.zeros((2, 5), dtype=np.int64)
    mix = r"device \(CUDA\) array but .* is host data"
    with pytest.raises(ValueError, match=mix):
        er.topk_hamming(dev(q), keys, 2)
    with pytest.raises(ValueError, match=mix):
        er.topk_hamming(q, dev(keys), 2)
    with pytest.raises(ValueError, match=mix):
        er.topk_hamming(dev(q), dev(keys), 2, lengths=[1, 2])
    with pytest.raises(ValueError, match=mix):
        er.topk_hamming_lookup(dev(q), ids, dev(table), 2)
    with pytest.raises(ValueError, match=mix):
        er.topk_hamming_lookup(dev(q), dev(ids), dev(table), 2, mask=np.ones(5, bool))
    with pytest.raises(ValueError, match=mix):
        er.hamming(dev(q), q)
    planes = er.hyperplanes(3, 10)
    with pytest.raises(ValueError, match=mix):
        er.pack_signatures(dev(np.ones((2, 3))), planes)
    with pytest.raises(ValueError, match=mix):
        er.pack_signatures(np.ones((2, 3)), dev(planes))


# ----------------------------------------------------------------------------- fused lookup

ID_DTYPES = st.sampled_from([np.int64, np.int32, np.uint64, np.uint16, np.int8])


@pytest.mark.cudasim
@settings(parent=MORE, max_examples=16)
@given(
    seed=st.integers(0, 2**32 - 1),
    batch=st.integers(0, 4),
    length=st.integers(0, 24),
    nrows=st.integers(1, 9),
    words=WORDS,
    style=STYLES,
    kind=VALIDITY,
    shared=st.booleans(),
    dtype=ID_DTYPES,
    use_pad=st.booleans(),
    extra_k=st.integers(-30, 4),
    config=st.sampled_from(CONFIGS),
)
def test_lookup_matches_cpu(seed: int, batch: int, length: int, nrows: int, words: int, style: str, kind: str,
                            shared: bool, dtype: type, use_pad: bool, extra_k: int,
                            config: tuple[int, int, int, int, int]) -> None:
    rng = np.random.default_rng(seed)
    k = max(0, length + extra_k)
    query = signatures(rng, (batch, words), style)
    table = signatures(rng, (nrows, words), style)
    ids = rng.integers(0, nrows, size=(length,) if shared else (batch, length)).astype(dtype)
    lengths, mask = validity(rng, kind, batch, length)
    pad = int(rng.integers(0, nrows)) if use_pad else None
    # out-of-range ids where positions are not valid must be ignored
    if kind == "lengths" and not shared and batch and length:
        for b in range(batch):
            ids[b, int(lengths[b]):] = np.array(nrows + 5).astype(dtype)
    want = er.topk_hamming_lookup(query, ids, table, k, lengths=lengths, mask=mask, padding_id=pad)
    with cuda_config(config):
        got = er.topk_hamming_lookup(dev(query), dev(ids), dev(table), k, lengths=dev(lengths), mask=dev(mask),
                                     padding_id=pad)
    same(got, want)


@pytest.mark.cudasim
@pytest.mark.parametrize("dtype", [np.int64, np.int16, np.uint64, np.uint32])
def test_lookup_bad_id_raises_like_cpu(dtype: type) -> None:
    rng = np.random.default_rng(5)
    query = signatures(rng, (4, 1), "random")
    table = signatures(rng, (6, 1), "random")
    ids = rng.integers(0, 6, size=(4, 9)).astype(dtype)
    ids[1, 7] = 6  # first bad row, second bad position of it
    ids[1, 3] = np.array(-1).astype(dtype) if np.issubdtype(dtype, np.signedinteger) else np.iinfo(dtype).max
    ids[2, 0] = 100
    ids[0, 8] = 6  # invalid position (lengths), ignored
    lengths = np.array([8, 9, 9, 9])
    for k in (0, 3):
        same_error(lambda k=k: er.topk_hamming_lookup(query, ids, table, k, lengths=lengths),
                   lambda k=k: er.topk_hamming_lookup(dev(query), dev(ids), dev(table), k, lengths=dev(lengths)))
    # padding positions are never looked up; a padding id out of range is fine
    pad = ids[1, 3]
    ids2 = ids.copy()
    ids2[1, 7] = pad
    ids2[2, 0] = pad
    same_error(lambda: er.topk_hamming_lookup(query, ids2, table, 2, padding_id=int(pad)),
               lambda: er.topk_hamming_lookup(dev(query), dev(ids2), dev(table), 2, padding_id=int(pad)))
    ids2[0, 8] = pad
    want = er.topk_hamming_lookup(query, ids2, table, 4, padding_id=int(pad))
    got = er.topk_hamming_lookup(dev(query), dev(ids2), dev(table), 4, padding_id=int(pad))
    same(got, want)


@pytest.mark.cudasim
def test_lookup_errors_match_cpu() -> None:
    rng = np.random.default_rng(6)
    q = signatures(rng, (2, 1), "random")
    table = signatures(rng, (3, 1), "random")
    ids = np.array([1, 2, 0, 1])
    qd, td = dev(q), dev(table)
    empty = np.zeros((0, 1), dtype=np.uint64)
    same_error(lambda: er.topk_hamming_lookup(q, ids, empty, 1),  # shared ids, empty table
               lambda: er.topk_hamming_lookup(qd, dev(ids), dev(empty), 1))
    same_error(lambda: er.topk_hamming_lookup(q, ids.astype(float), table, 1),
               lambda: er.topk_hamming_lookup(qd, dev(ids.astype(float)), td, 1))
    same_error(lambda: er.topk_hamming_lookup(q, np.zeros((3, 4), int), table, 1),
               lambda: er.topk_hamming_lookup(qd, dev(np.zeros((3, 4), int)), td, 1))
    same_error(lambda: er.topk_hamming_lookup(q, ids.astype(np.int8), table, 1, padding_id=300),
               lambda: er.topk_hamming_lookup(qd, dev(ids.astype(np.int8)), td, 1, padding_id=300))
    same_error(lambda: er.topk_hamming_lookup(q, ids, table, 1, lengths=np.array([5, 1])),
               lambda: er.topk_hamming_lookup(qd, dev(ids), td, 1, lengths=dev(np.array([5, 1]))))
    same_error(lambda: er.topk_hamming_lookup(q, ids, np.zeros((3, 2), np.uint64), 1),
               lambda: er.topk_hamming_lookup(qd, dev(ids), dev(np.zeros((3, 2), np.uint64)), 1))
    # an empty table with every position padding: no lookup, an empty result
    want = er.topk_hamming_lookup(q, np.zeros(4, np.int64), empty, 2, padding_id=0)
    got = er.topk_hamming_lookup(qd, dev(np.zeros(4, np.int64)), dev(empty), 2, padding_id=0)
    np.testing.assert_array_equal(host(got[0]), want[0])


# ----------------------------------------------------------------------------- Hamming


def _broadcast_pair(rng: np.random.Generator, ndim: int, words: int) -> tuple[np.ndarray, np.ndarray]:
    shape = rng.integers(1, 4, size=ndim)
    if ndim and rng.random() < 0.15:
        shape[rng.integers(0, ndim)] = 0
    sa = [int(s) if rng.random() < 0.6 else 1 for s in shape]
    sb = [int(s) if rng.random() < 0.6 else 1 for s in shape]
    drop_a = int(rng.integers(0, ndim + 1))
    a = signatures(rng, tuple(sa[drop_a:]) + (words,), "random")
    b = signatures(rng, tuple(sb) + (words,), "ties")
    return a, b


@pytest.mark.cudasim
@FEW
@given(seed=st.integers(0, 2**32 - 1), ndim=st.integers(0, 6), words=WORDS, config=st.sampled_from(CONFIGS))
def test_hamming_matches_cpu(seed: int, ndim: int, words: int, config: tuple[int, int, int, int, int]) -> None:
    rng = np.random.default_rng(seed)
    a, b = _broadcast_pair(rng, ndim, words)
    want = er.hamming(a, b)
    with cuda_config(config):
        got = er.hamming(dev(a), dev(b))
    assert got.shape == want.shape
    np.testing.assert_array_equal(host(got), want)


@pytest.mark.cudasim
def test_hamming_layouts_and_errors() -> None:
    rng = np.random.default_rng(8)
    a = signatures(rng, (2, 3, 2, 3, 2, 3, 2), "random")  # 6 leading axes, none mergeable below
    b = signatures(rng, (3, 1, 3, 1, 3, 2), "random")
    ad = dev(a)
    for x, xd in ((a, ad), (a[::2, :, :, ::-1], ad[::2, :, :, ::-1]), (a[..., :1], ad[..., :1])):
        y = b[..., : x.shape[-1]]
        np.testing.assert_array_equal(host(er.hamming(xd, dev(y))), er.hamming(x, y))
    one = signatures(rng, (3,), "random")
    np.testing.assert_array_equal(host(er.hamming(dev(one), dev(one[::-1].copy()))), er.hamming(one, one[::-1]))
    same_error(lambda: er.hamming(a, b[..., :1]), lambda: er.hamming(ad, dev(b[..., :1])))
    same_error(lambda: er.hamming(a, b[:2]), lambda: er.hamming(ad, dev(b[:2])))
    same_error(lambda: er.hamming(a.astype(np.int64), b), lambda: er.hamming(dev(a.astype(np.int64)), dev(b)))


# ----------------------------------------------------------------------------- packing


def _integer_inputs(rng: np.random.Generator, lead: tuple[int, ...], dim: int, bits: int,
                    xdtype: type, pdtype: type) -> tuple[np.ndarray, np.ndarray]:
    """Integer-valued floats: every projection is exact, zeros included."""
    x = rng.integers(-3, 4, size=lead + (dim,)).astype(xdtype)
    planes = rng.integers(-2, 3, size=(dim, bits)).astype(pdtype)
    return x, planes


@pytest.mark.cudasim
@FEW
@given(
    seed=st.integers(0, 2**32 - 1),
    lead=st.sampled_from([(), (0,), (1,), (5,), (2, 3), (2, 1, 3), (1, 2, 1, 2, 2)]),
    dim=st.integers(1, 5),
    bits=st.sampled_from([1, 7, 63, 64, 65, 130]),
    xdtype=st.sampled_from([np.float32, np.float64]),
    pdtype=st.sampled_from([np.float32, np.float64]),
    config=st.sampled_from(CONFIGS),
)
def test_pack_matches_cpu_exact_inputs(seed: int, lead: tuple[int, ...], dim: int, bits: int, xdtype: type,
                                       pdtype: type, config: tuple[int, int, int, int, int]) -> None:
    rng = np.random.default_rng(seed)
    x, planes = _integer_inputs(rng, lead, dim, bits, xdtype, pdtype)
    want = er.pack_signatures(x, planes)
    with cuda_config(config):
        got = er.pack_signatures(dev(x), dev(planes))
    assert got.shape == want.shape and got.dtype == np.uint64
    np.testing.assert_array_equal(host(got), want)


@pytest.mark.cudasim
def test_pack_gaussian_agrees_away_from_zero() -> None:
    rng = np.random.default_rng(9)
    hasher = er.SimHasher(6, 100, seed=3)
    x = rng.standard_normal((2, 4, 6)).astype(np.float32)
    xd = dev(x)
    want = hasher(x)
    got = host(hasher(xd))
    proj = x.astype(np.float64) @ hasher.planes.astype(np.float64)
    near_zero = np.abs(proj) < 1e-4
    bits = np.arange(100)
    for idx in np.ndindex(proj.shape[:-1]):
        keep = ~near_zero[idx]
        gb = (got[idx][bits // 64] >> (bits % 64).astype(np.uint64)) & np.uint64(1)
        wb = (want[idx][bits // 64] >> (bits % 64).astype(np.uint64)) & np.uint64(1)
        np.testing.assert_array_equal(gb[keep], wb[keep])
    # strided device view: every other row, reversed
    np.testing.assert_array_equal(host(hasher(xd[:, ::-2])), host(hasher(dev(x[:, ::-2]))))


@pytest.mark.cudasim
@pytest.mark.filterwarnings("ignore:invalid value encountered in:RuntimeWarning")  # inf * 0 in the projections
def test_pack_nonfinite_and_errors_match_cpu() -> None:
    rng = np.random.default_rng(10)
    x, planes = _integer_inputs(rng, (3, 4), 3, 70, np.float64, np.float32)
    x[2, 1, 0] = np.nan
    x[1, 3, 2] = np.inf
    xd, pd = dev(x), dev(planes)
    same_error(lambda: er.pack_signatures(x, planes), lambda: er.pack_signatures(xd, pd))
    want = er.pack_signatures(x, planes, check_finite=False)
    finite = np.isfinite(x).all(axis=-1)
    np.testing.assert_array_equal(host(er.pack_signatures(xd, pd, check_finite=False))[finite], want[finite])
    same_error(lambda: er.pack_signatures(x[..., :2], planes), lambda: er.pack_signatures(dev(x[..., :2]), pd))
    same_error(lambda: er.pack_signatures(x.astype(np.int32), planes),
               lambda: er.pack_signatures(dev(x.astype(np.int32)), pd))
    same_error(lambda: er.pack_signatures(x, planes.astype(np.float16)),
               lambda: er.pack_signatures(xd, dev(planes.astype(np.float16))))
    one = np.array([np.inf, 1.0, 2.0])
    same_error(lambda: er.pack_signatures(one, planes), lambda: er.pack_signatures(dev(one), pd))


@pytest.mark.cudasim
def test_signature_table_on_device() -> None:
    rng = np.random.default_rng(11)
    hasher = er.SimHasher(4, 70, seed=2)
    weight = rng.integers(-3, 4, size=(9, 4)).astype(np.float32)
    wd = dev(weight)
    cpu = er.SignatureTable(weight, hasher)
    gpu = er.SignatureTable(wd, hasher)
    sig = gpu.signatures
    np.testing.assert_array_equal(host(sig), cpu.signatures)
    weight[[1, 5]] *= -1
    wd.copy_to_device(weight)
    cpu.refresh(rows=[5, 1, 5])
    gpu.refresh(rows=dev(np.array([5, 1, 5])))
    assert gpu.signatures is sig  # refreshed in place
    np.testing.assert_array_equal(host(sig), cpu.signatures)
    weight[:] = rng.integers(-3, 4, size=weight.shape)
    wd.copy_to_device(weight)
    cpu.refresh()
    gpu.refresh()
    np.testing.assert_array_equal(host(sig), cpu.signatures)
    same_error(lambda: cpu.refresh(rows=[3, 9]), lambda: gpu.refresh(rows=[3, 9]))
    weight[7, 2] = np.nan
    wd.copy_to_device(weight)
    before = host(sig).copy()
    same_error(lambda: cpu.refresh(rows=[8, 7, 0]), lambda: gpu.refresh(rows=[8, 7, 0]))
    same_error(lambda: cpu.refresh(), lambda: gpu.refresh())
    np.testing.assert_array_equal(host(sig), before)  # nothing written on error
    # the lookup runs on the device table
    ids = rng.integers(0, 9, size=(2, 6))
    q = hasher(rng.integers(-3, 4, size=(2, 4)).astype(np.float32))
    want = er.topk_hamming_lookup(q, ids, cpu.signatures, 3)
    got = er.topk_hamming_lookup(dev(q), dev(ids), gpu.signatures, 3)
    np.testing.assert_array_equal(host(got[0]), want[0])


# ----------------------------------------------------------------------------- raw launchers


@pytest.mark.cudasim
def test_raw_launchers_for_the_torch_plugin() -> None:
    """int64 signatures (torch's carrier) are read as uint64; check=False hands back the error cells."""
    from numba import cuda

    from etaretrieval.cuda import (
        hamming_into,
        pack_signatures_into,
        raise_errors,
        topk_hamming_into,
        topk_hamming_lookup_into,
    )

    rng = np.random.default_rng(12)
    q = signatures(rng, (3, 2), "ties")
    keys = signatures(rng, (3, 11, 2), "ties")
    idx = cuda.device_array((3, 4), np.int64)
    dist = cuda.device_array((3, 4), np.int32)
    assert topk_hamming_into(dev(q.view(np.int64)), dev(keys.view(np.int64)), 4, idx, dist) is None
    want = er.topk_hamming(q, keys, 4)
    np.testing.assert_array_equal(host(idx), want[0])
    np.testing.assert_array_equal(host(dist), want[1])

    table = signatures(rng, (5, 2), "ties")
    ids = rng.integers(0, 5, size=(3, 11))
    ids[2, 4] = 5
    cells = topk_hamming_lookup_into(dev(q), dev(ids), dev(table.view(np.int64)), 4, idx, dist, check=False)
    c = cells.copy_to_host()
    assert c.tolist() == [3, 2 * 11 + 4]
    with pytest.raises(IndexError, match=r"ids\[2, 4\] = 5 is outside the table's rows \[0, 5\)"):
        raise_errors(c, 3, 11, 5, ids=dev(ids))
    ids[2, 4] = 0
    topk_hamming_lookup_into(dev(q), dev(ids), dev(table), 4, idx, dist, padding_id=0)
    want = er.topk_hamming_lookup(q, ids, table, 4, padding_id=0)
    np.testing.assert_array_equal(host(idx), want[0])

    out = cuda.device_array((3, 11), np.int32)
    hamming_into(dev(q[:, None, :].view(np.int64)), dev(keys), out)
    np.testing.assert_array_equal(host(out), er.hamming(q[:, None, :], keys))

    x = rng.integers(-2, 3, size=(4, 3)).astype(np.float32)
    planes = rng.integers(-2, 3, size=(3, 66)).astype(np.float32)
    sig = cuda.device_array((4, 2), np.int64)
    pack_signatures_into(dev(x), dev(planes), sig)
    np.testing.assert_array_equal(host(sig).view(np.uint64), er.pack_signatures(x, planes))

    with pytest.raises(ValueError, match="as many as keys"):  # W that would read outside the arrays
        topk_hamming_into(dev(q), dev(keys[:, :, :1]), 4, idx, dist)
    with pytest.raises(ValueError, match="1..16 signature words"):
        topk_hamming_lookup_into(dev(np.zeros((3, 17), np.uint64)), dev(ids), dev(np.zeros((5, 17), np.uint64)),
                                 4, idx, dist)


# ----------------------------------------------------------------------------- CPU process (no simulator)


def _run(code: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                          timeout=300, check=False)


def test_import_never_loads_numba_cuda() -> None:
    """Importing and using the package on host arrays never imports numba.cuda."""
    r = _run("""
        import sys, numpy as np
        import etaretrieval as er, etaretrieval.cuda
        er.topk_hamming(np.zeros((1, 1), np.uint64), np.zeros((3, 1), np.uint64), 2)
        assert not any(m == "numba.cuda" or m.startswith("numba.cuda.") for m in sys.modules), "numba.cuda imported"
    """)
    assert r.returncode == 0, r.stderr


def test_works_without_numba_cuda() -> None:
    """With numba-cuda unimportable the package imports and runs; a device array asks for numba-cuda."""
    r = _run("""
        import sys, numpy as np
        sys.modules["numba.cuda"] = None  # as if numba-cuda were not installed
        import etaretrieval as er
        idx, dist = er.topk_hamming(np.zeros((1, 1), np.uint64), np.zeros((3, 1), np.uint64), 2)
        assert idx.tolist() == [[2, 1]]

        class FakeDevice:  # anything with __cuda_array_interface__
            def __init__(self, a):
                self.a = a
                self.__cuda_array_interface__ = {"shape": a.shape, "typestr": a.dtype.str, "data": (0, False),
                                                 "version": 3, "strides": None}
        try:
            er.topk_hamming(FakeDevice(np.zeros((1, 1), np.uint64)), FakeDevice(np.zeros((3, 1), np.uint64)), 2)
        except ImportError as e:
            assert "numba-cuda" in str(e), e
        else:
            raise AssertionError("no ImportError")
    """)
    assert r.returncode == 0, r.stderr


class _FakeDevice:
    """A device array as far as validation can tell (shape and dtype from the interface only)."""

    def __init__(self, shape: tuple[int, ...], dtype: Any) -> None:
        self.__cuda_array_interface__ = {"shape": shape, "typestr": np.dtype(dtype).str, "data": (0, False),
                                         "version": 3, "strides": None}

    def __array__(self, *args: Any, **kwargs: Any) -> np.ndarray:
        raise AssertionError("validation copied a device array to the host")


def test_device_validation_reads_the_interface_only() -> None:
    """Shape and dtype errors of device arguments are the CPU's, raised before any kernel or copy."""
    q, keys = np.zeros((2, 1), np.uint64), np.zeros((2, 5, 1), np.uint64)

    def fake(a: np.ndarray) -> _FakeDevice:
        return _FakeDevice(a.shape, a.dtype)

    cases = [
        (lambda f: er.topk_hamming(f(q.astype(np.int64)), f(keys), 1)),
        (lambda f: er.topk_hamming(f(q), f(keys[:1]), 1)),
        (lambda f: er.topk_hamming(f(q), f(keys), 1, mask=f(np.ones((2, 4), bool)))),
        (lambda f: er.topk_hamming(f(q), f(keys), 1, lengths=f(np.ones(2, np.float32)))),
        (lambda f: er.topk_hamming_lookup(f(q), f(np.zeros((2, 5), np.float64)), f(keys[0]), 1)),
        (lambda f: er.topk_hamming_lookup(f(q), f(np.zeros(5, np.int8)), f(keys[0]), 1, padding_id=-200)),
        (lambda f: er.hamming(f(q), f(keys[..., :0]))),
        (lambda f: er.pack_signatures(f(np.zeros((2, 3), np.float32)), f(np.zeros((4, 8), np.float32)))),
    ]
    for call in cases:
        same_error(lambda call=call: call(lambda a: a), lambda call=call: call(fake))
    with pytest.raises(ValueError, match="is host data"):
        er.topk_hamming(fake(q), keys, 1)


@pytest.mark.cudasim
def test_shared_memory_budget_is_checked() -> None:
    rng = np.random.default_rng(13)
    q, keys = dev(signatures(rng, (2, 1), "ties")), dev(signatures(rng, (2, 9, 1), "ties"))
    with cuda_config((256, 8, 40 * 1024, 256, 4)):
        with pytest.raises(ValueError, match="TOPK_SHARED_SCRATCH_BYTES = 40960 plus the 13476 bytes"):
            er.topk_hamming(q, keys, 3)


@pytest.mark.cudasim
@pytest.mark.parametrize("shared", [False, True])
def test_benchmark_floor_on_device_sums_like_the_cpu(shared: bool) -> None:
    """The GPU floor of ``python -m etaretrieval.bench --device cuda`` computes what the CPU floor does."""
    from etaretrieval.bench import floor

    rng = np.random.default_rng(14)
    query = signatures(rng, (5, 2), "random")
    table = signatures(rng, (30, 2), "random")
    ids = rng.integers(0, 30, size=(37,) if shared else (5, 37)).astype(np.int32)
    old = floor.CUDA_THREADS
    floor.CUDA_THREADS = 8  # a few threads per block: the sum crosses several strides and reduction steps
    try:
        got = floor.floor_lookup_cuda(dev(query), dev(ids), dev(table))
    finally:
        floor.CUDA_THREADS = old
    np.testing.assert_array_equal(host(got), floor.floor_lookup(query, ids, table))


@pytest.mark.cudasim
def test_benchmark_device_table() -> None:
    """``--device cuda`` times the GPU floor first, then the library on device arrays."""
    from etaretrieval.bench.runner import Config, make_data, run_config

    data = make_data(Config("tiny", batch=2, length=12, rows=20, dim=4, bits=64, k=3, shared=False), seed=1)
    names = [t.name for t in run_config(data, repeat=1, device="cuda")]
    assert names[:3] == ["floor", "etaretrieval topk_hamming_lookup", "etaretrieval topk_hamming"]
