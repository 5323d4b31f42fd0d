"""Sphinx configuration of the etaretrieval documentation.

Build (offline, warnings are errors)::

    python -m sphinx -W --keep-going -b html docs docs/_build/html

Doctests of every docstring and of the user guide::

    python -m sphinx -W --keep-going -b doctest -D plot_gallery=0 docs docs/_build/doctest

Environment variables:

``ETARETRIEVAL_DOCS_ONLINE=1``
    Fetch the numpy / numba / torch / python intersphinx inventories (needs
    network). Without it no inventory is fetched, so an offline build cannot
    warn about unreachable inventories; references to those projects then
    render as plain code.
"""

from __future__ import annotations

import doctest as _doctest
import os
import urllib.request
import warnings
from importlib.metadata import version as _dist_version

# The gallery examples run in this process. OpenBLAS threads spin while they
# wait; next to Numba's and torch's threads on a small machine they make the
# small matrix products of pack_signatures many times slower. Must be set
# before NumPy is first imported (Sphinx itself does not import it).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import etaretrieval  # noqa: E402

# -- Project -----------------------------------------------------------------

project = "etaretrieval"
author = "etaretrieval developers"
copyright = "2025, etaretrieval developers"  # noqa: A001
release = _dist_version("etaretrieval")
version = ".".join(release.split(".")[:2])

# -- General -----------------------------------------------------------------

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.doctest",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    "numpydoc",
    "sphinx_gallery.gen_gallery",
]

templates_path = ["_templates"]
exclude_patterns = ["_build", "**.ipynb_checkpoints", "auto_examples/*.ipynb", "auto_examples/*.py"]
root_doc = "index"
default_role = "py:obj"
pygments_style = "sphinx"
# Broken cross-references to our own API are errors; names of other projects
# resolve only when their inventories are loaded (online builds).
nitpicky = True
nitpick_ignore_regex = [
    (r"py:.*", r"(numpy|np|numba|torch|nn|collections|typing|builtins)(\..*)?"),
    (r"py:.*", r"(array_like|array-like|optional|default|callable|ndarray|Tensor|Generator|Module)"),
    (r"py:.*", r"(int|bool|float|str|tuple|list|dict|None|type|object|sequence)"),
    (r"py:.*", r"(npt\..*|NDArray|Any)"),
    # Attributes listed in a numpydoc "Attributes" section get no link target;
    # docstrings refer to them as :attr:`planes` etc. Fully qualified
    # attribute references are still checked.
    (r"py:attr", r"(?!etaretrieval\.).*"),
]

# -- Autodoc / autosummary / numpydoc ----------------------------------------

autosummary_generate = True
autosummary_imported_members = True
autodoc_default_options = {"members": True, "inherited-members": False, "show-inheritance": True}
autodoc_typehints = "none"  # the numpydoc "Parameters" sections carry the types
autodoc_inherit_docstrings = False  # never pull torch's own docstrings into our pages
add_module_names = False

numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False
numpydoc_attributes_as_param_list = True

# -- Doctest ------------------------------------------------------------------

doctest_global_setup = """
import numpy as np
import etaretrieval as er
"""
doctest_default_flags = _doctest.ELLIPSIS | _doctest.NORMALIZE_WHITESPACE | _doctest.DONT_ACCEPT_TRUE_FOR_1

# -- Intersphinx: each inventory that can be reached ---------------------------
# Offline (no network here or in CI) the links are plain text and the build
# still passes with -W. ETARETRIEVAL_DOCS_ONLINE=0 skips the probes, =1 skips
# them and links everything (a failed download is then a warning, an error
# under -W).

_INVENTORIES = {
    "python": "https://docs.python.org/3",
    "numpy": "https://numpy.org/doc/stable",
    "numba": "https://numba.readthedocs.io/en/stable",
    "torch": "https://docs.pytorch.org/docs/stable",
}


def _reachable(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/objects.inv", timeout=3) as response:
            return bool(response.status == 200)
    except (OSError, ValueError):  # no network, DNS failure, HTTP error, timeout
        return False


_online = os.environ.get("ETARETRIEVAL_DOCS_ONLINE", "auto")
intersphinx_mapping: dict[str, tuple[str, str | None]] = {
    name: (url, None)
    for name, url in _INVENTORIES.items()
    if _online == "1" or (_online == "auto" and _reachable(url))
}
intersphinx_timeout = 10

# -- HTML --------------------------------------------------------------------

html_theme = "pydata_sphinx_theme"
html_title = f"etaretrieval {release}"
html_static_path = ["_static"]
html_css_files = ["custom.css"]
html_js_files = ["dotted-names.js"]
html_theme_options = {
    "navbar_align": "left",
    "show_toc_level": 2,
    "navigation_with_keys": False,
    "secondary_sidebar_items": ["page-toc", "sourcelink"],
    "footer_start": ["copyright"],
    "footer_end": ["sphinx-version", "theme-version"],
}
html_sidebars = {"index": [], "auto_examples/index": []}
html_last_updated_fmt = None
html_show_sourcelink = True

# -- Sphinx-Gallery ------------------------------------------------------------
# Only examples/plot_*.py run during the build (CPU, under half a minute each);
# examples/gpu_*.py are rendered without running. The other scripts in
# examples/ (quickstart.py for `make demo`, train_eta_ctr.py, ...) are
# stand-alone and stay out of the gallery.

sphinx_gallery_conf = {
    "examples_dirs": os.path.join("..", "examples"),
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"[\\/]plot_",
    # matched against the bare file name: only plot_*.py (run) and gpu_*.py
    # (rendered) belong to the gallery; other scripts in examples/ stay out.
    "ignore_pattern": r"^(?!plot_|gpu_).*\.py$",
    "within_subsection_order": "FileNameSortKey",
    "doc_module": ("etaretrieval",),
    "backreferences_dir": os.path.join("generated", "backreferences"),
    "exclude_implicit_doc": {r"etaretrieval\._.*"},
    "log_level": {"backreference_missing": "debug"},
    "abort_on_example_error": True,
    "download_all_examples": False,
    "remove_config_comments": True,
    "write_computation_times": False,
    "show_signature": False,
    "min_reported_time": 1,
    "reset_modules": ("matplotlib",),
    "matplotlib_animations": False,
}

# Keep torch's deprecation chatter out of the gallery examples' printed output.
warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch(\..*)?")
_ = etaretrieval  # imported above so that a broken install fails fast


# -- A figure that is left out when its image does not exist -----------------
# Used for images that another step produces: the gallery's figures (absent
# when the gallery is not executed, e.g. ``-D plot_gallery=0`` for doctest
# builds).

from sphinx.directives.patches import Figure as _Figure  # noqa: E402


class OptionalFigure(_Figure):
    """``.. optional-figure::`` -- a ``figure`` when its image file exists, else nothing."""

    def run(self):  # type: ignore[no-untyped-def]
        env = self.state.document.settings.env
        _, path = env.relfn2path(self.arguments[0], env.docname)
        if not os.path.isfile(path):
            return []
        return super().run()


def _skip_namedtuple_fields(app, what, name, obj, skip, options):  # type: ignore[no-untyped-def]
    """NamedTuple fields are described in the class's numpydoc Attributes section already."""
    if (getattr(obj, "__doc__", None) or "").startswith("Alias for field number"):
        return True
    return None


def _public_bases(app, name, obj, options, bases):  # type: ignore[no-untyped-def]
    """Show public bases only: a base from one of our private modules is replaced by its own first base."""
    for i, base in enumerate(bases):
        while base.__module__.startswith("etaretrieval") and any(
            part.startswith("_") for part in base.__module__.split(".")
        ):
            base = base.__bases__[0]
        bases[i] = base


def setup(app):  # type: ignore[no-untyped-def]
    app.add_directive("optional-figure", OptionalFigure)
    app.connect("autodoc-skip-member", _skip_namedtuple_fields)
    app.connect("autodoc-process-bases", _public_bases)
    return {"parallel_read_safe": True}
