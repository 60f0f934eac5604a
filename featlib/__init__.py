"""featlib: the helper package behind the featuniv notebooks.

Modules are named for what they do (``config``, ``corpus``, ``models``, ``alignment``, ``activations``,
``saes``, ``sparse_rows``, ``correlation``, ``matching``, ``similarity``, ``subspaces``, ``universal``,
``atlas``, ``plots``; docs/layout.md lists them all); ``step`` is the one cached-step mechanism (over
``cache``), and ``featlib.study`` holds the study itself, one stage module per notebook. The command-line
tools around the study (``chain``, ``lm``, ``bench``, ``colab``) live in ``featlib.tools``. Importing the
package has no side effects; import the submodule you need.
"""

__version__ = "0.1.0"
