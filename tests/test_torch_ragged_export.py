"""torch.export with ragged histories: what exports, and the limits of torch.nested inputs (torch 2.13).

Exports, runs under ``ep.module()``, decomposes to ATen and goes through AOTInductor, with a dynamic batch
and total length: a module whose inputs are the plain ``values`` and ``offsets`` tensors - the ragged lookup
op over them (nothing padded) and an :class:`ETAModel` fed the rows padded inside the graph. Equal to the eager
jagged and padded calls.

Pinned limits (docs/user_guide/ragged.rst, "Exporting ragged histories"): a jagged ``torch.nested`` tensor made
inside the exported code, as ``ETAModel``'s jagged path does and as a wrapper over values + offsets would, stops
the export; ``ETAAttention`` / ``ETARetriever`` called with a jagged input export only with ``strict=True``, for
the example's batch size, and the program neither runs with its guards nor decomposes. When one of these tests
starts to fail on a newer torch, the limit is gone: update the page.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402
from torch.export import Dim  # noqa: E402

import etaretrieval.torch as et  # noqa: E402
from etaretrieval.torch import ETAAttention, ETAModel, ETARetriever, SignatureCache, decompositions  # noqa: E402

N_ITEMS, DIM, K, MAX_LEN = 1000, 8, 4, 6

pytestmark = [
    pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:is_fx_tracing will return true:UserWarning"),
    pytest.mark.filterwarnings(r"ignore:`isinstance\(treespec, LeafSpec\)` is deprecated:FutureWarning"),
]
torch_213 = pytest.mark.skipif(not torch.__version__.startswith("2.13"),
                               reason="the limits are those of torch 2.13: check them again and update ragged.rst")


def _jagged(values: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    return torch.nested.nested_tensor_from_jagged(values, offsets)


class Serving(nn.Module):
    """Ragged histories in as values + offsets: the model's logits and the ragged lookup's top-K of each row.

    The model gets the last ``max_len`` behaviours of each row left-padded, built with plain torch ops in
    the graph; the lookup reads the flat ids with their offsets (no padding).
    """

    def __init__(self, max_len: int) -> None:
        super().__init__()
        self.model = ETAModel(N_ITEMS, DIM, k=K)
        self.cache = SignatureCache(self.model.items, self.model.long.retriever)
        self.max_len = max_len

    def forward(self, history: torch.Tensor, times: torch.Tensor, offsets: torch.Tensor, target: torch.Tensor,
                target_time: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        col = torch.arange(self.max_len, device=offsets.device)
        flat = offsets[1:, None] - self.max_len + col  # (B, max_len), the newest behaviour of a row last
        mask = flat >= offsets[:-1, None]
        at = torch.where(mask, flat + 1, 0)  # into the values behind one 0: padding reads it

        def rows(values: torch.Tensor) -> torch.Tensor:
            return nn.functional.pad(values, (1, 0))[at]

        logits = self.model(rows(history), target, mask=mask, times=rows(times), target_time=target_time)
        signatures = self.cache.signatures
        index, dist = et.topk_hamming_lookup(signatures[target], history, signatures, K, offsets=offsets)
        return logits, index, dist


def _batch(seed: int, lengths: list[int], first: int = 0) -> tuple[torch.Tensor, ...]:
    """``(history, times, offsets, target, target_time)``: rows of ``lengths``, offsets from ``first``."""
    gen = torch.Generator().manual_seed(seed)
    total = first + sum(lengths)
    offsets = torch.tensor([first] + lengths).cumsum(0)
    history = torch.randint(1, N_ITEMS + 1, (total,), generator=gen)
    times = torch.randint(0, 1000, (total,), generator=gen)
    batch = len(lengths)
    return history, times, offsets, torch.randint(1, N_ITEMS + 1, (batch,), generator=gen), torch.full((batch,), 2000)


# the second: other B and T, offsets[0] > 0; the third: no behaviour at all (T = 0)
BATCHES = [_batch(0, [3, 0, 5]), _batch(1, [1, 6, 0, 4, 2], first=3), _batch(2, [0, 0])]


def _padded(values: torch.Tensor, offsets: torch.Tensor, width: int,
            side: str = "left") -> tuple[torch.Tensor, torch.Tensor]:
    """``(rows, mask)``: the rows padded to ``width`` one by one, the reference of the graph's (left) padding."""
    out = torch.zeros(offsets.shape[0] - 1, width, dtype=values.dtype)
    mask = torch.zeros(out.shape, dtype=torch.bool)
    for b in range(out.shape[0]):
        row = values[offsets[b]:offsets[b + 1]]
        at = slice(width - row.shape[0], width) if side == "left" else slice(0, row.shape[0])
        out[b, at], mask[b, at] = row, True
    return out, mask


@pytest.fixture(scope="module")
def served() -> tuple[Serving, torch.export.ExportedProgram]:
    torch.manual_seed(0)
    module = Serving(MAX_LEN).eval()
    dynamic = Dim.DYNAMIC
    program = torch.export.export(module, BATCHES[0], dynamic_shapes=tuple({0: dynamic} for _ in BATCHES[0]))
    return module, program.run_decompositions(decompositions())


def _assert_equal_outputs(got: tuple[torch.Tensor, ...], want: tuple[torch.Tensor, ...]) -> None:
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-6)
    assert torch.equal(got[1], want[1]) and torch.equal(got[2], want[2])


def test_values_and_offsets_export_with_a_dynamic_batch_and_length(served) -> None:
    module, program = served
    assert not [n for n in program.graph.nodes if n.op == "call_function" and "etaretrieval" in str(n.target)]
    exported = program.module()
    with torch.no_grad():
        for history, times, offsets, target, now in BATCHES:
            got = exported(history, times, offsets, target, now)
            _assert_equal_outputs(got, module(history, times, offsets, target, now))
            start = offsets - offsets[0]  # the same rows from 0: jagged tensors of their own values
            rows = slice(int(offsets[0]), int(offsets[-1]))
            jagged_ids = _jagged(history[rows], start)
            eager_jagged = module.model(jagged_ids, target, times=_jagged(times[rows], start), target_time=now)
            torch.testing.assert_close(got[0], eager_jagged, rtol=1e-5, atol=1e-6)
            ids, mask = _padded(history, offsets, MAX_LEN)
            eager_padded = module.model(ids, target, mask=mask, times=_padded(times, offsets, MAX_LEN)[0],
                                        target_time=now)
            torch.testing.assert_close(got[0], eager_padded, rtol=1e-5, atol=1e-6)
            signatures = module.cache.signatures
            index, dist = et.topk_hamming_lookup(signatures[target], jagged_ids, signatures, K)
            assert torch.equal(got[1], index) and torch.equal(got[2], dist)
            ids, mask = _padded(history, offsets, int(offsets.diff().max()), "right")  # positions from the start
            index, dist = et.topk_hamming_lookup(signatures[target], ids, signatures, K, mask=mask)
            assert torch.equal(got[1], index) and torch.equal(got[2], dist)


@pytest.mark.slow  # AOTInductor's C++ compile: about 40 s
def test_aoti_package_of_values_and_offsets_gives_the_eager_outputs(served, tmp_path) -> None:
    module, program = served
    path = torch._inductor.aoti_compile_and_package(program, package_path=str(tmp_path / "ragged.pt2"))
    runner = torch._inductor.aoti_load_package(path)
    with torch.no_grad():
        for batch in BATCHES:
            _assert_equal_outputs(tuple(runner(*batch)), module(*batch))


class FromValues(nn.Module):
    """The natural wrapper that does not export: values + offsets in, jagged tensors made in the graph."""

    def __init__(self) -> None:
        super().__init__()
        self.model = ETAModel(N_ITEMS, DIM, k=K)

    def forward(self, history: torch.Tensor, times: torch.Tensor, offsets: torch.Tensor, target: torch.Tensor,
                target_time: torch.Tensor) -> torch.Tensor:
        return self.model(_jagged(history, offsets), target, times=_jagged(times, offsets), target_time=target_time)


class JaggedIn(nn.Module):
    """``ETAModel`` called with jagged tensors as the exported inputs (it makes jagged tensors of its own)."""

    def __init__(self) -> None:
        super().__init__()
        self.model = ETAModel(N_ITEMS, DIM, k=K)

    def forward(self, history: torch.Tensor, times: torch.Tensor, target: torch.Tensor,
                target_time: torch.Tensor) -> torch.Tensor:
        return self.model(history, target, times=times, target_time=target_time)


@torch_213
@pytest.mark.parametrize("strict", [False, True])
def test_jagged_tensors_made_in_the_graph_stop_the_export(strict: bool) -> None:
    history, times, offsets, target, now = BATCHES[0]
    error = "Unable to cast NotImplemented to Tensor" if strict else \
        "nested_tensor_from_jagged does not support tracing with fx.symbolic_trace"
    with pytest.raises(RuntimeError, match=error):
        torch.export.export(FromValues().eval(), BATCHES[0], strict=strict)
    jagged_in = (_jagged(history, offsets), _jagged(times, offsets), target, now)
    error_type, error = (RuntimeError, "Unable to cast NotImplemented to Tensor") if strict else \
        (AttributeError, "'NestedIntNode' object has no attribute 'int_'")
    with pytest.raises(error_type, match=error):
        torch.export.export(JaggedIn().eval(), jagged_in, strict=strict)


class Block(nn.Module):
    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, target: torch.Tensor, seq: torch.Tensor) -> torch.Tensor:
        out = self.block(target, seq)
        return out if isinstance(out, torch.Tensor) else out.index


@torch_213
@pytest.mark.parametrize("make", [lambda: ETAAttention(DIM, 64, k=K, heads=2), lambda: ETARetriever(DIM, 64, K)],
                         ids=["ETAAttention", "ETARetriever"])
def test_a_jagged_input_exports_only_strict_with_a_fixed_batch_and_neither_runs_guarded_nor_decomposes(make) -> None:
    torch.manual_seed(0)
    module = Block(make()).eval()
    offsets = torch.tensor([0, 3, 3, 8])
    args = (torch.randn(3, DIM), _jagged(torch.randn(8, DIM), offsets))
    with pytest.raises(AttributeError, match="'NestedIntNode' object has no attribute 'int_'"):
        torch.export.export(module, args)
    with pytest.raises(torch._dynamo.exc.UserError, match="Constraints violated"):
        torch.export.export(module, args, dynamic_shapes=({0: Dim("B")}, {0: Dim("B")}), strict=True)
    program = torch.export.export(module, args, strict=True)
    with pytest.raises(SyntaxError):  # the guard on the jagged input's offsets does not parse back
        program.module()
    with pytest.raises(SyntaxError):
        program.run_decompositions(decompositions())
    with torch.no_grad():
        assert torch.equal(program.module(check_guards=False)(*args), module(*args))
        other = (torch.randn(2, DIM), _jagged(torch.randn(4, DIM), torch.tensor([0, 1, 4])))
        with pytest.raises(RuntimeError, match=r"shape\[0\] to be equal to 3, but got 2"):
            program.module(check_guards=False)(*other)
