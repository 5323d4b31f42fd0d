"""The documentation covers the public API: every public name has an API page with an example.

Cheap checks that need no Sphinx build: the names listed in ``docs/api.rst``
against ``__all__``, the docstrings' ``Examples`` sections, and the gallery
examples' titles. The site itself (``python -m sphinx -W ...``) and the
docstring examples (``python -m sphinx -b doctest ...``) are built by CI.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
from pathlib import Path

import pytest

import etaretrieval

ROOT = Path(__file__).resolve().parents[1]
API = ROOT / "docs" / "api.rst"


def _public(module: object) -> list[tuple[str, object]]:
    return [(name, getattr(module, name)) for name in module.__all__]  # type: ignore[attr-defined]


def _modules() -> list[object]:
    mods: list[object] = [etaretrieval]
    try:
        plugin = importlib.import_module("etaretrieval.torch")
    except ImportError:  # the plugin needs torch, an optional extra
        pass
    else:
        mods.append(plugin)
    return mods


def _documented() -> set[str]:
    """Fully qualified names that api.rst documents (autosummary entries and py:data)."""
    names: set[str] = set()
    module = "etaretrieval"
    in_autosummary = False
    for line in API.read_text(encoding="utf-8").splitlines():
        if m := re.match(r"\.\. currentmodule:: (\S+)", line):
            module = m.group(1)
        if m := re.match(r"\.\. py:data:: (\S+)", line):
            name = m.group(1)
            names.add(name if name.startswith(module + ".") else f"{module}.{name}")
        if line.startswith(".. autosummary::"):
            in_autosummary = True
            continue
        if in_autosummary:
            if line and not line.startswith(" "):
                in_autosummary = False
            elif re.fullmatch(r"   [A-Za-z_][\w.]*", line):
                names.add(f"{module}.{line.strip()}")
    return names


@pytest.mark.parametrize("module", _modules(), ids=lambda m: m.__name__)  # type: ignore[attr-defined]
def test_every_public_name_has_an_api_page(module: object) -> None:
    documented = _documented()
    missing = [name for name, _ in _public(module) if f"{module.__name__}.{name}" not in documented]  # type: ignore[attr-defined]
    assert not missing, f"add these public names of {module.__name__} to docs/api.rst: {missing}"  # type: ignore[attr-defined]


@pytest.mark.parametrize("module", _modules(), ids=lambda m: m.__name__)  # type: ignore[attr-defined]
def test_every_public_function_and_class_has_an_example(module: object) -> None:
    lacking = []
    for name, obj in _public(module):
        if not (inspect.isclass(obj) or callable(obj)):
            continue  # data such as __version__ is described in api.rst
        doc = obj.__doc__ or ""
        if not re.search(r"^\s*Examples\n\s*-{8}", doc, flags=re.MULTILINE) or ">>>" not in doc:
            lacking.append(name)
    assert not lacking, (
        f"these public names of {module.__name__} have no numpydoc 'Examples' section "  # type: ignore[attr-defined]
        f"with a runnable >>> example in their docstring: {lacking}"
    )


@pytest.mark.parametrize(
    "path", sorted((ROOT / "examples").glob("plot_*.py")) + sorted((ROOT / "examples").glob("gpu_*.py")),
    ids=lambda p: p.name,
)
def test_gallery_example_has_a_title(path: Path) -> None:
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    lines = [line for line in doc.splitlines() if line.strip()]
    # sphinx-gallery needs a reST title: a text line underlined with = (optionally overlined).
    assert any(re.fullmatch(r"=+", b) and len(b) >= len(a.strip()) for a, b in zip(lines, lines[1:])), (
        f"{path.name} needs a module docstring that starts with a reST title"
    )
