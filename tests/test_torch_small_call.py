"""The small-call fast path of the torch lookup: the front end's bypass of the dispatcher and the op's own.

The bypass (``etaretrieval.torch.topk_hamming_lookup`` running the CPU
driver's fast path itself) must return exactly what the op returns, and must
never run where the op call would be seen, traced or transformed: the tests
of the second kind check an outcome that the bypass would change (a fake
result, a node in a graph, an entry in a log).
"""

from __future__ import annotations

import re

import pytest

torch = pytest.importorskip("torch")

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

import etaretrieval.torch as et  # noqa: E402
from etaretrieval.cpu import topk as cpu_topk  # noqa: E402
from etaretrieval.torch import _ops  # noqa: E402

op = torch.ops.etaretrieval.topk_hamming_lookup
#: Inductor uses a deprecated torch.jit API internally (torch 2.13); not ours to fix.
TORCH_INTERNAL_WARNING = "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"
needs_jit = pytest.mark.skipif(cpu_topk.PURE_PYTHON, reason="NUMBA_DISABLE_JIT=1: no fast path by address")


def small(seed: int = 0, batch: int = 1, length: int = 100, words: int = 1, rows: int = 1000,
          ids_dtype: torch.dtype = torch.int64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    table = torch.randint(-(2**63), 2**63 - 1, (rows, words), generator=gen)
    ids = torch.randint(0, rows, (batch, length), generator=gen).to(ids_dtype)
    return torch.randint(-(2**63), 2**63 - 1, (batch, words), generator=gen), ids, table


def same(got: tuple[torch.Tensor, torch.Tensor], want: tuple[torch.Tensor, torch.Tensor]) -> None:
    """Equal values, dtypes, shapes, strides, devices and flags."""
    assert type(got) is type(want) and len(got) == len(want) == 2
    for g, w in zip(got, want):
        assert type(g) is type(w) and g.dtype == w.dtype and g.shape == w.shape and g.stride() == w.stride()
        assert g.device == w.device and g.requires_grad == w.requires_grad and g.is_inference() == w.is_inference()
        assert torch.equal(g, w)


@pytest.fixture
def bypass_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Records whether the front end may bypass the op, at each of its calls (1: it may).

    The spy goes into the front end's own globals: the doctests of ``_ops``
    import the module a second time, and the front end keeps the first one's.
    """
    calls: list[int] = []
    front_end = et.topk_hamming_lookup.__globals__
    allowed = front_end["_bypass_allowed"]

    def spy() -> bool:
        ok = allowed()
        calls.append(int(ok))
        return bool(ok)

    monkeypatch.setitem(front_end, "_bypass_allowed", spy)
    return calls


@needs_jit
@settings(deadline=None, max_examples=60)
@given(seed=st.integers(0, 2**31 - 1), batch=st.integers(0, 4), length=st.integers(0, 60), words=st.integers(1, 3),
       rows=st.integers(1, 50), k=st.integers(0, 70), int32=st.booleans(), bad=st.booleans())
def test_bypass_equals_the_op(seed: int, batch: int, length: int, words: int, rows: int, k: int, int32: bool,
                              bad: bool) -> None:
    """Random small calls (ties, k past L, empty rows, int32/int64 ids, a bad id): the op's results or its error."""
    query, ids, table = small(seed, batch, length, words, rows, torch.int32 if int32 else torch.int64)
    table[::2] = table[0].clone()  # ties
    if bad and ids.numel():
        ids.view(-1)[seed % ids.numel()] = rows + seed % 3 if seed % 2 else -1
    try:
        want = op(query, ids, table, k)
    except IndexError as error:
        with pytest.raises(IndexError, match=f"^{re.escape(str(error))}$"):
            et.topk_hamming_lookup(query, ids, table, k)
        return
    same(et.topk_hamming_lookup(query, ids, table, k), want)


@needs_jit
def test_the_bypass_runs_in_eager_mode(bypass_calls: list[int]) -> None:
    """The common call bypasses the dispatcher (no op call in a dispatch log taken after it), with the op's results."""
    query, ids, table = small()
    got = et.topk_hamming_lookup(query, ids, table, 16)
    assert bypass_calls == [1]
    same(got, op(query, ids, table, 16))
    with torch.inference_mode():
        same(et.topk_hamming_lookup(query, ids, table, 16), op(query, ids, table, 16))


@pytest.mark.parametrize(
    "make",
    [
        lambda t: t.to_sparse(),
        lambda t: t.to_sparse_csr(),
        lambda t: torch._neg_view(t),
        lambda t: torch._efficientzerotensor(tuple(t.shape), dtype=t.dtype),
        lambda t: t.t().contiguous().t(),
        lambda t: t[:, None],
        lambda t: t.to("meta"),
        lambda t: t.as_subclass(type("Sub", (torch.Tensor,), {})),
    ],
    ids=["sparse", "csr", "neg", "zero", "fortran", "3d", "meta", "subclass"],
)
@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta state:UserWarning")
def test_memory_refuses_what_is_not_plain(make: object) -> None:
    """Tensors whose memory is not their values in C order, or that have none, are not read by address."""
    t = torch.arange(12).reshape(3, 4)
    assert _ops._memory(t, torch.int64) == (t.data_ptr(), 3, 4)
    assert _ops._memory(make(t), torch.int64) is None  # type: ignore[operator]
    assert _ops._memory(t, torch.int32) is None


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors is in prototype stage:UserWarning")
def test_memory_refuses_nested_tensors() -> None:
    nested = torch.nested.nested_tensor([torch.arange(3), torch.arange(2)])
    assert _ops._memory(nested, torch.int64) is None


@pytest.mark.parametrize("what", ["neg", "zero", "fortran", "int16"])
def test_unusual_tensors_take_the_general_path(what: str) -> None:
    """The front end gives the op's results (or its error) where the fast path declines."""
    query, ids, table = small(length=30, rows=40)
    if what == "neg":
        ids = torch._neg_view(-ids)
    elif what == "zero":
        ids = torch._efficientzerotensor(tuple(ids.shape), dtype=ids.dtype)
    elif what == "fortran":
        table = table.t().contiguous().t()
    else:
        ids = ids.to(torch.int16)
    try:
        want = op(query, ids, table, 5)
    except Exception as error:  # noqa: BLE001 - whatever the op raises, the front end raises alike
        with pytest.raises(type(error)):
            et.topk_hamming_lookup(query, ids, table, 5)
        return
    same(et.topk_hamming_lookup(query, ids, table, 5), want)


def test_fake_tensor_mode_runs_the_op(bypass_calls: list[int]) -> None:
    """Real inputs under FakeTensorMode: the op's fake kernel answers (the bypass would compute real tensors)."""
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

    query, ids, table = small()
    with FakeTensorMode(allow_non_fake_inputs=True):
        idx, dist = et.topk_hamming_lookup(query, ids, table, 16)
    assert isinstance(idx, FakeTensor) and isinstance(dist, FakeTensor)
    assert bypass_calls == [0]


def test_dispatch_modes_see_the_op(bypass_calls: list[int]) -> None:
    """A TorchDispatchMode (here a log) sees the op: the bypass would leave it out."""
    seen: list[str] = []

    class Log(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            seen.append(str(func))
            return func(*args, **(kwargs or {}))

    query, ids, table = small()
    with Log():
        et.topk_hamming_lookup(query, ids, table, 16)
    assert "etaretrieval.topk_hamming_lookup.default" in seen
    assert bypass_calls == [0]


def test_the_profiler_sees_the_op(bypass_calls: list[int]) -> None:
    query, ids, table = small()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        et.topk_hamming_lookup(query, ids, table, 16)
    assert "etaretrieval::topk_hamming_lookup" in {e.name for e in prof.events()}
    assert bypass_calls == [0]


def test_vmap_runs_the_op(bypass_calls: list[int]) -> None:
    """Under torch.func.vmap the op runs per sample (its fallback), as without the bypass."""
    query, ids, table = small(batch=3, length=20, rows=30)
    got = torch.func.vmap(lambda q, i: et.topk_hamming_lookup(q[None], i[None], table, 4))(query, ids)
    want = op(query, ids, table, 4)
    assert torch.equal(got[0][:, 0], want[0]) and torch.equal(got[1][:, 0], want[1])
    assert bypass_calls == [0]


@pytest.mark.filterwarnings(TORCH_INTERNAL_WARNING)
def test_compile_traces_the_op() -> None:
    """torch.compile (fullgraph) records the op in its graph: the bypass reads memory, which cannot be traced."""
    graphs: list[torch.fx.GraphModule] = []

    def backend(gm: torch.fx.GraphModule, example_inputs: list) -> object:
        graphs.append(gm)
        return gm.forward

    query, ids, table = small()
    compiled = torch.compile(lambda q, i, t: et.topk_hamming_lookup(q, i, t, 16), backend=backend, fullgraph=True)
    same(compiled(query, ids, table), op(query, ids, table, 16))
    targets = {node.target for gm in graphs for node in gm.graph.nodes}
    assert op.default in targets


@pytest.mark.filterwarnings(TORCH_INTERNAL_WARNING)
@pytest.mark.parametrize("strict", [False, True])
def test_export_traces_the_op(strict: bool) -> None:
    class Lookup(torch.nn.Module):
        def forward(self, q: torch.Tensor, i: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return et.topk_hamming_lookup(q, i, t, 16)

    query, ids, table = small()
    exported = torch.export.export(Lookup(), (query, ids, table), strict=strict)
    assert op.default in {node.target for node in exported.graph.nodes}
    same(exported.module()(query, ids, table), op(query, ids, table, 16))


def ragged_case(seed: int, batch: int, total: int, rows: int, offsets_dtype: torch.dtype,
                ids_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A query, flat ids, a table and offsets with Arrow semantics (offsets[0] may be above 0, values past the end)."""
    gen = torch.Generator().manual_seed(seed)
    table = torch.randint(-(2**63), 2**63 - 1, (rows, 1), generator=gen)
    table[::2] = table[0].clone()  # ties
    ids = torch.randint(0, rows, (total,), generator=gen).to(ids_dtype)
    cuts = torch.sort(torch.randint(0, total + 1, (batch + 1,), generator=gen)).values
    query = torch.randint(-(2**63), 2**63 - 1, (batch, 1), generator=gen)
    return query, ids, table, cuts.to(offsets_dtype)


@needs_jit
@settings(deadline=None, max_examples=60)
@given(seed=st.integers(0, 2**31 - 1), batch=st.integers(0, 4), total=st.integers(0, 60), rows=st.integers(1, 40),
       k=st.integers(0, 30), int32_offsets=st.booleans(), int32_ids=st.booleans(),
       spoil=st.sampled_from([None, "id", "decreasing", "past_end", "negative"]))
def test_ragged_bypass_equals_the_general_path(seed: int, batch: int, total: int, rows: int, k: int,
                                               int32_offsets: bool, int32_ids: bool, spoil: str | None) -> None:
    """Ragged rows by offsets and as a jagged tensor: the results (or the error) of the op's general path.

    A mask of all True sends the op through its general path (the fast path takes no mask).
    """
    query, ids, table, offsets = ragged_case(seed, batch, total, rows, torch.int32 if int32_offsets else torch.int64,
                                             torch.int32 if int32_ids else torch.int64)
    if spoil == "id" and total:
        ids[seed % total] = rows + seed % 3 if seed % 2 else -1
    elif spoil == "decreasing" and batch > 1:
        offsets[1] = offsets[2] + 1
    elif spoil == "past_end":
        offsets[-1] = total + 1
    elif spoil == "negative":
        offsets[0] = -1
    general = torch.ones(total, dtype=torch.bool)
    try:
        want = torch.ops.etaretrieval.topk_hamming_lookup_ragged(query, ids, table, k, offsets, general)
    except (IndexError, ValueError) as error:
        for call in (lambda: et.topk_hamming_lookup(query, ids, table, k, offsets=offsets),
                     lambda: torch.ops.etaretrieval.topk_hamming_lookup_ragged(query, ids, table, k, offsets)):
            with pytest.raises(type(error), match=f"^{re.escape(str(error))}$"):
                call()
        return
    same(et.topk_hamming_lookup(query, ids, table, k, offsets=offsets), want)
    same(torch.ops.etaretrieval.topk_hamming_lookup_ragged(query, ids, table, k, offsets), want)
    if offsets[0] == 0 and offsets[-1] == total and not int32_offsets:  # a jagged tensor of the same rows
        nested = torch.nested.nested_tensor_from_jagged(ids, offsets)
        same(et.topk_hamming_lookup(query, nested, table, k), want)


@needs_jit
def test_the_ragged_bypass_runs_in_eager_mode(bypass_calls: list[int], monkeypatch: pytest.MonkeyPatch) -> None:
    """Offsets and jagged ids take the bypass (the op, made to fail, is not called); holes take the general path."""
    query, ids, table, offsets = ragged_case(0, 3, 40, 30, torch.int64, torch.int64)
    want = torch.ops.etaretrieval.topk_hamming_lookup_ragged(query, ids, table, 5, offsets)
    nested = torch.nested.nested_tensor_from_jagged(ids[int(offsets[0]):int(offsets[-1])], offsets - offsets[0])

    def fail(*args: object) -> None:
        raise AssertionError("the op ran")

    with monkeypatch.context() as patch:
        patch.setitem(et.topk_hamming_lookup.__globals__, "topk_hamming_lookup_ragged", fail)
        same(et.topk_hamming_lookup(query, ids, table, 5, offsets=offsets), want)
        same(et.topk_hamming_lookup(query, nested, table, 5), want)
    assert bypass_calls == [1, 1]
    holes = torch.nested.narrow(ids[:40].reshape(2, 20), 1, torch.tensor([0, 3]), torch.tensor([5, 7]),
                                layout=torch.jagged)
    assert _ops._jagged_parts(holes) is None
    with pytest.raises(ValueError, match="holes"):
        et.topk_hamming_lookup(query[:2], holes, table, 5)


@pytest.mark.filterwarnings(TORCH_INTERNAL_WARNING)
def test_compile_traces_the_ragged_op() -> None:
    graphs: list[torch.fx.GraphModule] = []

    def backend(gm: torch.fx.GraphModule, example_inputs: list) -> object:
        graphs.append(gm)
        return gm.forward

    query, ids, table, offsets = ragged_case(1, 3, 40, 30, torch.int64, torch.int64)
    compiled = torch.compile(lambda q, i, t, o: et.topk_hamming_lookup(q, i, t, 5, offsets=o), backend=backend,
                             fullgraph=True)
    same(compiled(query, ids, table, offsets), torch.ops.etaretrieval.topk_hamming_lookup_ragged(query, ids, table, 5,
                                                                                              offsets))
    assert torch.ops.etaretrieval.topk_hamming_lookup_ragged.default in {n.target for gm in graphs
                                                                         for n in gm.graph.nodes}


@needs_jit
@pytest.mark.parametrize("ids_dtype", [torch.int64, torch.int32, torch.int16])
@pytest.mark.parametrize("layout", ["contiguous", "strided"])
def test_the_op_takes_the_fast_path_by_address(monkeypatch: pytest.MonkeyPatch, ids_dtype: torch.dtype,
                                               layout: str) -> None:
    """The op's kernel reads contiguous int64/int32 ids by address (one lookup_at call); others go the general way."""
    calls: list[object] = []
    at = cpu_topk.lookup_at

    def spy(*args: object, **kwargs: object) -> object:
        calls.append(args)
        return at(*args, **kwargs)  # type: ignore[arg-type]

    query, ids, table = small(length=60, rows=50, ids_dtype=ids_dtype)
    if layout == "strided":
        ids = ids[:, ::2]
    want = op(query, ids, table, 5, mask=torch.ones(ids.shape, dtype=torch.bool))  # the general path
    monkeypatch.setattr(cpu_topk, "lookup_at", spy)
    same(op(query, ids, table, 5), want)
    assert len(calls) == (layout == "contiguous" and ids_dtype != torch.int16)
