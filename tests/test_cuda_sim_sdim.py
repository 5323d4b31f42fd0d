"""SDIM's CUDA kernels against the CPU kernels, bit for bit, under numba's CUDA simulator.

Run in a process of their own, with the simulator switched on before numba is
imported::

    NUMBA_ENABLE_CUDASIM=1 python -m pytest tests/test_cuda_sim_sdim.py -m cudasim -p no:cacheprovider

Without ``NUMBA_ENABLE_CUDASIM=1`` these tests are skipped. Shapes are tiny and
the blocks have a few threads (``THREADS`` patched), so that every tile of
positions, components and groups is crossed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import reference as ref
from hypothesis import given, settings
from hypothesis import strategies as st

import etaretrieval as er

SIM = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")
FEW = settings(max_examples=15, deadline=None, derandomize=True, database=None)

pytestmark = [pytest.mark.cudasim, pytest.mark.skipif(not SIM, reason="needs NUMBA_ENABLE_CUDASIM=1")]


@contextlib.contextmanager
def threads(n: int) -> Iterator[None]:
    from etaretrieval.cuda import sdim as device_sdim

    old = device_sdim.THREADS
    device_sdim.THREADS = n
    try:
        yield
    finally:
        device_sdim.THREADS = old


def dev(a: Any) -> Any:
    from numba import cuda

    return None if a is None else cuda.to_device(np.ascontiguousarray(a))


def host(a: Any) -> np.ndarray:
    assert getattr(a, "__cuda_ndarray__", False) is True, f"not a device array: {type(a)}"
    return np.asarray(a.copy_to_host())


@dataclasses.dataclass
class Case:
    query: np.ndarray
    keys: np.ndarray
    values: np.ndarray
    tau: int
    bits: int
    lengths: np.ndarray | None
    mask: np.ndarray | None
    threads: int

    def host_kwargs(self) -> dict:
        return {"bits": self.bits, "lengths": self.lengths, "mask": self.mask}

    def dev_kwargs(self) -> dict:
        return {"bits": self.bits, "lengths": dev(self.lengths), "mask": dev(self.mask)}


@st.composite
def cases(draw: st.DrawFn) -> Case:
    tau = draw(st.sampled_from([1, 3, 5, 12]))
    bits = tau * draw(st.integers(1, 6))
    words = ref.words_for(bits)
    batch, length, d = draw(st.integers(0, 3)), draw(st.integers(0, 9)), draw(st.integers(1, 3))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    query = ref.random_signatures(rng, (batch, words), bits=bits)
    shared = draw(st.booleans())
    keys = ref.random_signatures(rng, (length, words) if shared else (batch, length, words), bits=bits)
    if batch and length:
        hit = rng.random(keys.shape[:-1]) < 0.5
        keys[hit] = np.broadcast_to(query[0] if shared else query[:, None], keys.shape)[hit]
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    values = rng.standard_normal((length, d) if draw(st.booleans()) else (batch, length, d)).astype(dtype)
    kind = draw(st.sampled_from(["none", "lengths", "mask2d", "mask1d"]))
    lengths = rng.integers(0, length + 1, size=batch).astype(np.int32) if kind == "lengths" else None
    mask = None
    if kind.startswith("mask"):
        mask = rng.random((batch, length) if kind == "mask2d" else (length,)) < 0.6
    return Case(query, keys, values, tau, bits, lengths, mask, draw(st.sampled_from([1, 2, 3, 4])))


@FEW
@given(case=cases())
def test_pool_and_group_sums_equal_cpu(case: Case) -> None:
    args = (case.query, case.keys, case.values, case.tau)
    dargs = tuple(dev(a) for a in args[:3]) + (case.tau,)
    with threads(case.threads):
        for fn in (er.sdim_pool, er.sdim_group_sums):
            want = fn(*args, **case.host_kwargs())
            got = host(fn(*dargs, **case.dev_kwargs()))
            assert got.dtype == want.dtype
            np.testing.assert_array_equal(got, want)


@FEW
@given(case=cases())
def test_buckets_and_serving_equal_cpu(case: Case) -> None:
    batch = case.query.shape[0]
    keys = np.broadcast_to(case.keys, (batch, *case.keys.shape[-2:]))
    with threads(case.threads):
        want = er.sdim_buckets(keys, case.values, case.tau, **case.host_kwargs())
        got = er.sdim_buckets(dev(keys), dev(case.values), case.tau, **case.dev_kwargs())
        np.testing.assert_array_equal(host(got), want)
        np.testing.assert_array_equal(host(er.sdim_from_buckets(dev(case.query), got)),
                                      er.sdim_from_buckets(case.query, want))


@FEW
@given(case=cases())
def test_one_user_summary_and_codes_equal_cpu(case: Case) -> None:
    keys = case.keys if case.keys.ndim == 2 else case.keys.reshape(-1, case.keys.shape[-1])
    values = np.resize(case.values, (keys.shape[0], case.values.shape[-1]))
    with threads(case.threads):
        want = er.sdim_buckets(keys, values, case.tau, bits=case.bits)
        got = er.sdim_buckets(dev(keys), dev(values), case.tau, bits=case.bits)
        assert got.shape == want.shape
        np.testing.assert_array_equal(host(got), want)
        np.testing.assert_array_equal(host(er.sdim_from_buckets(dev(case.query), got)),
                                      er.sdim_from_buckets(case.query, want))
        np.testing.assert_array_equal(host(er.sdim_codes(dev(case.keys), case.tau, bits=case.bits)),
                                      er.sdim_codes(case.keys, case.tau, bits=case.bits))


@FEW
@given(case=cases())
def test_gradient_kernel_equals_cpu(case: Case) -> None:
    from numba import cuda

    from etaretrieval import sdim
    from etaretrieval.cuda import sdim as device_sdim

    batch, length = case.query.shape[0], case.keys.shape[-2]
    groups = case.bits // case.tau
    grad = np.random.default_rng(batch + length).standard_normal((batch, groups, 2)).astype(case.values.dtype)
    want = sdim.group_sums_backward(case.query, case.keys, grad, case.tau, case.lengths, case.mask)
    out = cuda.device_array((batch, length, 2), dtype=grad.dtype)
    with threads(case.threads):
        device_sdim.group_sums_backward_into(dev(case.query), dev(case.keys), dev(grad), case.tau, out,
                                             lengths=dev(case.lengths), mask=dev(case.mask))
    np.testing.assert_array_equal(host(out), want)


def test_bad_lengths_raise_the_cpu_error() -> None:
    query = np.zeros((2, 1), np.uint64)
    keys = np.zeros((2, 4, 1), np.uint64)
    values = np.zeros((2, 4, 2))
    lengths = np.array([1, 5])
    for fn in (er.sdim_pool, er.sdim_group_sums):
        with pytest.raises(ValueError) as cpu:
            fn(query, keys, values, 4, lengths=lengths)
        with pytest.raises(ValueError) as gpu:
            fn(dev(query), dev(keys), dev(values), 4, lengths=dev(lengths))
        assert str(gpu.value) == str(cpu.value)
    with pytest.raises(ValueError, match=r"lengths must lie in 0\.\.4, got lengths\[1\] = 5"):
        er.sdim_buckets(dev(keys), dev(values), 4, lengths=dev(lengths))


def test_nan_propagates_like_the_cpu() -> None:
    query = np.zeros((1, 1), np.uint64)
    keys = np.zeros((3, 1), np.uint64)
    values = np.array([[1.0, np.nan], [2.0, 0.0], [0.0, 0.0]])
    want = er.sdim_pool(query, keys, values, 4)
    assert np.isnan(want).all()
    np.testing.assert_array_equal(host(er.sdim_pool(dev(query), dev(keys), dev(values), 4)), want)
