"""Sphinx configuration of the stabledrl_jax documentation.

Build (warnings are errors, as in CI):
  python -m sphinx -W --keep-going -b html docs docs/_build/html
"""

import os
import sys

sys.path.insert(0, os.path.abspath(".."))

import stabledrl_jax  # noqa: E402

project = "stabledrl_jax"
author = "the stabledrl_jax authors"
copyright = "the stabledrl_jax authors"
release = stabledrl_jax.__version__
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
]

source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

# The API reference: one page per public name, generated from its docstring.
autosummary_generate = True
autodoc_typehints = "description"
autodoc_member_order = "bysource"
napoleon_google_docstring = True
napoleon_numpy_docstring = False

# Pages are MyST markdown that also reads well on GitHub: headings become
# anchors for cross-page links, `$...$` is math.
myst_enable_extensions = ["dollarmath", "colon_fence"]
myst_heading_anchors = 3

html_theme = "alabaster"
html_title = "stabledrl_jax"

