"""torch.export: models with the custom ops export, save, load in a fresh process and give the eager results;
a SignatureCache is a buffer of the exported program (never a baked-in constant)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

from etaretrieval.torch import ETAAttention, SignatureCache  # noqa: E402

DIM, BITS, N = 8, 64, 50


class Serving(nn.Module):
    """Serving: targets and behaviours are item ids; signatures come from the cache (-1 pads)."""

    def __init__(self) -> None:
        super().__init__()
        self.items = nn.Embedding(N, DIM)
        self.eta = ETAAttention(DIM, BITS, k=5, heads=2)
        self.cache = SignatureCache(self.items, self.eta.retriever)

    def forward(self, target_ids: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return self.eta(self.items(target_ids), mask=ids >= 0, seq_ids=ids.clamp(min=0), cache=self.cache)


class Training(nn.Module):
    """Training: the sequence embeddings are hashed on every call."""

    def __init__(self) -> None:
        super().__init__()
        self.items = nn.Embedding(N, DIM)
        self.eta = ETAAttention(DIM, BITS, k=5, heads=2)

    def forward(self, target_ids: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return self.eta(self.items(target_ids), self.items(ids.clamp(min=0)), ids >= 0)


def _inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, N, (4, 30), generator=gen)
    ids[1, :12] = -1
    ids[3] = -1
    return torch.randint(0, N, (4,), generator=gen), ids


@pytest.mark.parametrize("strict", [False, True])
@pytest.mark.parametrize("model_type", [Serving, Training])
def test_export_equals_eager(model_type: type, strict: bool) -> None:
    torch.manual_seed(0)
    model = model_type().eval()
    args = _inputs()
    program = torch.export.export(model, args, strict=strict)
    assert not program.graph_signature.lifted_tensor_constants  # nothing baked in
    assert torch.equal(program.module()(*args), model(*args))
    other = _inputs(1)  # the program is not specialised to the example's values
    assert torch.equal(program.module()(*other), model(*other))


def test_cache_is_a_buffer_of_the_exported_program() -> None:
    torch.manual_seed(1)
    model = Serving().eval()
    args = _inputs()
    program = torch.export.export(model, args)
    assert {"cache.signatures", "cache.planes"} <= set(program.graph_signature.buffers)
    assert "check_signature_cache" not in str(program.graph)  # the version check stays out (documented)
    module = program.module()
    with torch.no_grad():
        model.items.weight[args[1][0].clamp(min=0)] *= -1
    model.cache.refresh(args[1][0].clamp(min=0))  # in place: the program (sharing the tensors) follows
    assert torch.equal(module(*args), model(*args))
    again = torch.export.export(Serving().eval(), args).module()  # other weights, other table
    assert not torch.equal(again(*args), model(*args))
    again.load_state_dict(model.state_dict())  # weights and table travel together
    assert torch.equal(again(*args), model(*args))


def test_saved_program_loads_in_a_fresh_process(tmp_path: Path) -> None:
    torch.manual_seed(2)
    model = Serving().eval()
    args = _inputs()
    torch.export.save(torch.export.export(model, args), tmp_path / "model.pt2")
    torch.save({"args": args, "want": model(*args)}, tmp_path / "io.pt")
    code = textwrap.dedent(
        """
        import sys, torch
        import etaretrieval.torch  # registers the etaretrieval operators the program calls
        d = sys.argv[1]
        program = torch.export.load(d + "/model.pt2")
        io = torch.load(d + "/io.pt")
        assert torch.equal(program.module()(*io["args"]), io["want"]), "exported program differs from eager"
        print("ok")
        """
    )
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=False, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
