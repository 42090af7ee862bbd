"""Sphinx configuration of the xrimpute documentation.

Build: ``sphinx-build -W -b html docs docs/_build/html`` (needs ``pip install "xrimpute[docs]"``).
Notebooks are rendered as written, without running them (``nb_execution_mode = "off"``);
the test suite runs them instead (tests/test_notebooks.py).
"""
import argparse
import os

import sphinx_autosummary_accessors
from docutils import nodes
from sphinx.util.docutils import SphinxDirective

import xrimpute

project = "xrimpute"
author = "xrimpute developers"
copyright = "xrimpute developers"
version = release = xrimpute.__version__

extensions = [
    "myst_nb",
    "numpydoc",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "sphinx_autosummary_accessors",
]
templates_path = [sphinx_autosummary_accessors.templates_path]
exclude_patterns = ["_build", "**.ipynb_checkpoints", "README.md"]
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}

autosummary_generate = True
autodoc_typehints = "none"  # the numpydoc sections say what each parameter is
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
myst_enable_extensions = ["colon_fence", "dollarmath"]
myst_heading_anchors = 3
nb_execution_mode = "off"

html_theme = "pydata_sphinx_theme"
html_title = f"xrimpute {version}"
html_theme_options = {"navigation_with_keys": False, "show_toc_level": 2}


class CommandHelp(SphinxDirective):
    """``{xrimpute-help}``: the ``--help`` of the command and of each sub-command, read from the parser itself."""

    def run(self):
        from xrimpute.cli import build_parser

        os.environ["COLUMNS"] = "100"  # argparse wraps to the terminal width: fix it for the page
        parser = build_parser()
        commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
        out = [nodes.literal_block(text=parser.format_help())]
        for name, sub in commands.items():
            out += [nodes.rubric(text=f"xrimpute {name}"), nodes.literal_block(text=sub.format_help())]
        return out


def setup(app):
    app.add_directive("xrimpute-help", CommandHelp)
