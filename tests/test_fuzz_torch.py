"""Fuzzing the Python-level torch front ends: a clean exception naming an argument, or the reference's answer.

:func:`etaretrieval.torch.topk_hamming`, :func:`~etaretrieval.torch.topk_hamming_lookup`
(padded rows, ragged rows with ``offsets=``, the small lookup of the NumPy fast
path), :func:`~etaretrieval.torch.pack_signatures` and
:class:`~etaretrieval.torch.ETARetriever`'s forward get a valid call drawn as in
``tests/test_fuzz.py``, turned into tensors (int64 tensors carrying the uint64
words), then up to two arguments spoilt in the ways a torch user meets: another
dtype (every integer width, floats, bfloat16, bool, complex), another shape, a
non-contiguous, transposed or expanded (zero-stride) view, a tensor on the
``meta`` device, out-of-range values, spoilt ``offsets`` (decreasing, negative,
past the end, float, another length) or another kind (a NumPy array, a list, a
scalar, ``None``, a string). The call must either raise :class:`ValueError`,
:class:`TypeError` or :class:`IndexError` (or the library's subclasses) whose
message names an argument, or return exactly what the NumPy reference
(``tests/reference.py``) computes from the same values; the arguments are
never modified.

Bounded for ``make test`` by ``FUZZ_EXAMPLES`` (default 60 examples per test,
seconds). ``FUZZ_COUNTS`` names a file each call appends its outcome to, for a
campaign's totals; ``python tests/test_fuzz_torch.py N`` runs a campaign:
``tests/test_fuzz.py`` and this file, each in its own subprocess (a crash is a
negative return code, counted), ``N`` examples per test, and prints the totals
(``N = 1250``: 10,000 calls); ``make test`` runs it with 20 examples per test.
"""

from __future__ import annotations

import collections
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import reference as ref
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_fuzz import Spoilers, call_topk, outcome, pack_call, reference_topk, spoil, spoil_offsets, topk_call

torch = pytest.importorskip("torch")
et = pytest.importorskip("etaretrieval.torch")

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "60"))
FUZZ = settings(
    max_examples=EXAMPLES, deadline=None, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
DTYPES = [torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8, torch.float32, torch.float64,
          torch.bfloat16, torch.bool, torch.complex64]
SCALARS = [None, 0, 1.5, "x", True]


def tensor(a: Any) -> Any:
    """A NumPy argument as a tensor that owns its memory (uint64 words as int64); ``None`` stays ``None``."""
    if not isinstance(a, np.ndarray):
        return a
    return torch.from_numpy((a.view(np.int64) if a.dtype == np.uint64 else a).copy())


def spoil_tensor(draw: Callable[..., Any], t: Any, name: str) -> Any:
    """``t`` spoilt in one way (some ways leave it valid: the call must then answer)."""
    how = draw(st.sampled_from(["dtype", "add", "drop", "empty", "grow", "noncontiguous", "transpose", "expand",
                                "meta", "numpy", "list", "scalar", "values"]))
    if how == "dtype":
        return t.to(draw(st.sampled_from(DTYPES)))
    if how == "add":
        return t[None]
    if how == "drop":
        return t[0] if t.ndim and t.shape[0] else t.reshape(-1)[:0]
    if how == "empty":
        axis = draw(st.integers(0, max(t.ndim - 1, 0)))
        return t.narrow(axis, 0, 0) if t.ndim else t
    if how == "grow":
        if not t.ndim:
            return t
        axis = draw(st.integers(0, t.ndim - 1))
        extra = t.narrow(axis, 0, 1) if t.shape[axis] else torch.zeros(
            t.shape[:axis] + (1,) + t.shape[axis + 1:], dtype=t.dtype)
        return torch.cat([t, extra], axis)
    if how == "noncontiguous":  # the same values, every other element of a wider buffer
        return torch.stack([t, t], -1)[..., 0]
    if how == "transpose":
        return t.mT if t.ndim >= 2 else t
    if how == "expand":  # zero-stride rows: the first row repeated
        return t.narrow(0, 0, 1).expand_as(t) if t.ndim and t.shape[0] else t
    if how == "meta":
        return t.to("meta")
    if how == "numpy":
        return t.numpy()
    if how == "list":
        return t.tolist()
    if how == "scalar":
        return draw(st.sampled_from(SCALARS))
    out = t.clone()  # values: out of range where there is a range
    if out.numel() and name in ("ids", "lengths", "offsets"):
        flat = out.view(-1)
        flat[draw(st.integers(0, flat.numel() - 1))] = draw(st.sampled_from([-1, 50, 127]))
    elif out.numel() and out.dtype.is_floating_point:
        out.view(-1)[draw(st.integers(0, out.numel() - 1))] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    return out


def spoil_offsets_tensor(draw: Callable[..., Any], offsets: Any, total: int) -> Any:
    """Tensor ``offsets`` spoilt as ``tests/test_fuzz.py`` spoils offsets, or as any tensor."""
    if draw(st.booleans()):
        return torch.from_numpy(spoil_offsets(draw, offsets.numpy(), total, generic=False))
    return spoil_tensor(draw, offsets, "offsets")


TENSORS = Spoilers(array=spoil_tensor, offsets=spoil_offsets_tensor,
                   optional=(torch.tensor([1, 2]), torch.ones(2, 2), torch.tensor(3)),
                   k=(-1, 2.5, True, None, "3", np.int64(2), 2**61, 2**70, 40, torch.tensor(2)),
                   padding_id=(-1, 2**64, 1.5, True, 0, 300, "0", torch.tensor(1)))


def snapshot(args: dict[str, Any]) -> dict[str, Any]:
    return {n: (v.clone(), v.dtype, tuple(v.shape), v.stride()) for n, v in args.items()
            if isinstance(v, torch.Tensor) and v.device.type != "meta"}


def unchanged(args: dict[str, Any], before: dict[str, Any]) -> None:
    for name, (old, dtype, shape, stride) in before.items():
        v = args[name]
        assert v.dtype == dtype and tuple(v.shape) == shape and v.stride() == stride, name
        assert torch.equal(v, old) or (v.is_floating_point() and torch.equal(v.isnan(), old.isnan())
                                       and torch.equal(v.nan_to_num(), old.nan_to_num())), name


def host(value: Any, signatures: bool = False) -> Any:
    """A tensor argument as the NumPy reference takes it (int64 words as uint64; a numeric mask as bool)."""
    if isinstance(value, torch.Tensor):
        a = value.detach().to(torch.float64 if value.dtype == torch.bfloat16 else value.dtype).numpy()
        return a.astype(np.int64).view(np.uint64) if signatures else a
    if isinstance(value, (list, int, float, np.ndarray)) and signatures:
        return np.asarray(value).astype(np.int64).view(np.uint64)
    return None if value is None else np.asarray(value)


# --------------------------------------------------------------------------- top-K


@pytest.mark.parametrize("lookup", [False, True], ids=["topk_hamming", "topk_hamming_lookup"])
@FUZZ
@given(data=st.data())
def test_fuzz_torch_topk(lookup: bool, data: st.DataObject) -> None:
    drawn, _ = data.draw(topk_call(lookup, spoiling=False))
    args = {name: tensor(v) for name, v in drawn.items()}
    spoilt = spoil(data.draw, args, list(args), TENSORS)
    before = snapshot(args)
    got = call_topk(et, args, lookup, spoilt)
    unchanged(args, before)
    if got is not None:
        assert got[0].dtype == torch.int64 and got[1].dtype == torch.int32
        if got[0].device.type == "meta":  # meta inputs: the fake kernel's shapes, no values
            assert got[0].shape == got[1].shape == (args["query"].shape[0], int(args["k"]))
            return
        want = reference_topk(args, lookup, lambda v: host(v, True), host)
        np.testing.assert_array_equal(got[0].numpy(), want[0])
        np.testing.assert_array_equal(got[1].numpy(), want[1])


# --------------------------------------------------------------------------- packing


@FUZZ
@given(data=st.data())
def test_fuzz_torch_pack_signatures(data: st.DataObject) -> None:
    drawn, _ = data.draw(pack_call(spoiling=False))
    args = {name: tensor(v) for name, v in drawn.items()}
    spoilt = spoil(data.draw, args, list(args), TENSORS)
    before = snapshot(args)
    got = outcome(lambda: et.pack_signatures(args["x"], args["planes"], args["check_finite"]),
                  spoilt, ["x", "planes", "check_finite"])
    unchanged(args, before)
    if got is not None and got.device.type == "meta":  # meta inputs: the fake kernel's shape, no values
        assert got.dtype == torch.int64 and got.shape == args["x"].shape[:-1] + ((args["planes"].shape[1] + 63) // 64,)
    elif got is not None:
        x = host(args["x"]).astype(np.float64)
        finite = np.isfinite(x).all(axis=-1)  # non-finite rows (check_finite=False) hash to anything
        want = ref.pack(np.where(finite[..., None], x, 0.0), host(args["planes"]).astype(np.float64))
        assert got.dtype == torch.int64
        np.testing.assert_array_equal(got.numpy().view(np.uint64)[finite], want[finite])


# --------------------------------------------------------------------------- ETARetriever


@st.composite
def retriever_call(draw: Callable[..., Any]) -> tuple[Any, dict[str, Any], list[str]]:
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    batch, length, dim = draw(st.integers(0, 3)), draw(st.integers(0, 5)), draw(st.integers(1, 4))
    module = et.ETARetriever(dim, draw(st.sampled_from([8, 64, 70])), draw(st.integers(0, 6)),
                             seed=draw(st.integers(0, 3)))
    args: dict[str, Any] = {
        "target": torch.from_numpy(rng.integers(-3, 4, size=(batch, dim)).astype(np.float32)),
        "seq": torch.from_numpy(rng.integers(-3, 4, size=(batch, length, dim)).astype(np.float32)),
    }
    validity = draw(st.sampled_from(["none", "lengths", "mask"]))
    args["lengths"] = torch.from_numpy(rng.integers(0, length + 1, size=batch)) if validity == "lengths" else None
    args["mask"] = torch.from_numpy(rng.random((batch, length)) < 0.6) if validity == "mask" else None
    args["padding_side"] = draw(st.sampled_from(["right", "left"]))
    return module, args, spoil(draw, args, list(args), TENSORS)


@FUZZ
@given(retriever_call())
def test_fuzz_torch_retriever(case: tuple[Any, dict[str, Any], list[str]]) -> None:
    module, args, spoilt = case
    before = snapshot(args)
    got = outcome(lambda: module(args["target"], args["seq"], args["mask"], lengths=args["lengths"],
                                 padding_side=args["padding_side"]), spoilt, list(args))
    unchanged(args, before)
    if got is not None:
        planes = module.planes.numpy().astype(np.float64)
        seq = host(args["seq"]).astype(np.float64)
        lengths, mask = host(args["lengths"]), None if args["mask"] is None else host(args["mask"]) != 0
        if lengths is not None and args["padding_side"] == "left":
            mask, lengths = np.arange(seq.shape[1]) >= seq.shape[1] - lengths.astype(np.int64)[:, None], None
        finite = np.where(np.isfinite(seq).all(-1)[..., None], seq, 0.0)  # a non-finite row is an invalid one
        idx, _ = ref.topk_hamming(ref.pack(host(args["target"]).astype(np.float64), planes), ref.pack(finite, planes),
                                  module.k, lengths=lengths, mask=mask)
        np.testing.assert_array_equal(got.index.numpy(), idx)
        np.testing.assert_array_equal(got.mask.numpy(), idx >= 0)
        padded = np.concatenate([seq, np.zeros((seq.shape[0], 1, seq.shape[2]))], axis=1)  # empty slots: zeros
        taken = np.take_along_axis(padded, np.where(idx >= 0, idx, seq.shape[1])[..., None], axis=1)
        np.testing.assert_array_equal(got.values.detach().to(torch.float64).numpy(), taken)


@pytest.mark.parametrize("where", ["target", "seq"])
def test_retriever_nonfinite_names_argument(where: str) -> None:
    """A NaN in ``target`` or ``seq`` is refused naming that argument (not ``x``, the hashing op's own)."""
    target, seq = torch.ones(1, 2), torch.ones(1, 3, 2)
    (target if where == "target" else seq).view(-1)[1] = float("nan")
    with pytest.raises(ValueError, match=rf"^{where} holds a non-finite value"):
        et.ETARetriever(2, 8, 1)(target, seq)


# --------------------------------------------------------------------------- non-tensor arguments


def _signatures(rows: int) -> Any:
    return torch.zeros((rows, 1), dtype=torch.int64)


@pytest.mark.parametrize("offsets", [None, torch.tensor([0, 2])], ids=["padded", "ragged"])
def test_torch_lookup_numpy_ids(offsets: Any) -> None:
    with pytest.raises(TypeError, match=r"\bids\b"):
        et.topk_hamming_lookup(_signatures(1), np.array([[3, 2]]) if offsets is None else np.array([3, 2]),
                               _signatures(4), 1, offsets=offsets)


def test_torch_ragged_query_none() -> None:
    with pytest.raises(TypeError, match=r"\bquery\b"):
        et.topk_hamming(None, _signatures(1), 0, offsets=torch.tensor([1], dtype=torch.int32))


def test_torch_lookup_bfloat16_ids() -> None:
    with pytest.raises((TypeError, ValueError), match=r"\bids\b"):
        et.topk_hamming_lookup(_signatures(1), torch.zeros((1, 2), dtype=torch.bfloat16), _signatures(4), 0)


def test_torch_pack_numpy_planes() -> None:
    with pytest.raises(TypeError, match=r"\bplanes\b"):
        et.pack_signatures(torch.ones(2, 3), np.ones((3, 8)))


# --------------------------------------------------------------------------- a campaign


@pytest.mark.skipif("FUZZ_COUNTS" in os.environ, reason="already inside a campaign's subprocess")
def test_fuzz_suites_in_subprocesses() -> None:
    """Both suites, a few examples each, in subprocesses: a crash (a signal) fails here, naming the suite."""
    totals = campaign(min(EXAMPLES, 20))
    assert not {k for k in totals if k.startswith(("crash", "failed", "unclean"))}, totals
    assert sum(totals.values()) >= 8 * min(EXAMPLES, 20), totals


def campaign(examples: int) -> dict[str, int]:
    """Run ``tests/test_fuzz.py`` and this file in subprocesses, ``examples`` per test; outcome totals."""
    totals: collections.Counter[str] = collections.Counter()
    here = os.path.dirname(os.path.abspath(__file__))
    for suite in ("test_fuzz.py", "test_fuzz_torch.py"):
        with tempfile.NamedTemporaryFile("r", suffix=".txt") as counts:
            env = dict(os.environ, FUZZ_EXAMPLES=str(examples), FUZZ_COUNTS=counts.name)
            done = subprocess.run([sys.executable, "-m", "pytest", os.path.join(here, suite), "-q",
                                   "-p", "no:cacheprovider"], env=env, capture_output=True, text=True)
            calls = collections.Counter(line.strip() for line in counts)
        print(f"{suite}: rc {done.returncode}, {sum(calls.values())} calls: {dict(calls)}")
        if done.returncode:
            print(done.stdout[-6000:])
            totals["crash" if done.returncode < 0 else "failed test (wrong or unclean)"] += 1
        totals.update(calls)
    return dict(totals)


if __name__ == "__main__":
    result = campaign(int(sys.argv[1]) if len(sys.argv) > 1 else 1250)
    print(f"total calls: {sum(v for k, v in result.items() if not k.startswith(('crash', 'failed')))}")
    print(result)
