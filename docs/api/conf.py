"""Sphinx configuration of the API reference, generated from the docstrings (``make docs``)."""
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # the package of this source tree, not an installed copy

import steerable_sr  # noqa: E402

project = "steerable_sr"
release = version = steerable_sr.__version__
extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon"]

# Every object is documented once, in the module that defines it: packages that re-export names
# (their ``__all__``) show their overview only.
autodoc_default_options = {"members": True, "show-inheritance": True, "ignore-module-all": True}
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
# The reference shows this package's docstrings: a method without one (an override of torch's or
# Lightning's) does not show its parent's text, written for another API and in its markup.
autodoc_inherit_docstrings = False

napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_preprocess_types = True  # {"Oh", "O"} as literals, "optional" as a keyword

html_theme = "alabaster"
html_title = f"steerable_sr {release}: API reference"


def skip_namedtuple_aliases(app, what, name, obj, skip, options):
    """Leave out the ``Alias for field number N`` attributes of named tuples: their fields are
    described in the class docstring's Attributes section, once."""
    if (getattr(obj, "__doc__", None) or "").startswith("Alias for field number"):
        return True
    return None


# Constants' and properties' docstrings are prose, which napoleon would misread: it takes the text
# before the first colon for a type (the Google inline form ``int: The number of...``), as in
# ``Bytes per unit of a memory size (case-insensitive): ...``. They are kept as written.
PROSE = ("data", "attribute", "property")
_written: dict[str, list[str]] = {}


def keep_written(app, what, name, obj, options, lines):
    """Before napoleon: remember a prose docstring as written."""
    if what in PROSE:
        _written[name] = list(lines)


def restore_written(app, what, name, obj, options, lines):
    """After napoleon: put the prose docstring back."""
    if what in PROSE:
        lines[:] = _written.pop(name)


def setup(app):
    app.connect("autodoc-skip-member", skip_namedtuple_aliases)
    app.connect("autodoc-process-docstring", keep_written, priority=400)  # napoleon's runs at 500
    app.connect("autodoc-process-docstring", restore_written, priority=600)
