"""featlib: the helper package behind the featuniv notebooks.

Modules are named for what they do (``config``, ``cache``, ``corpus``, ``models``, ``activations``,
``saes``, ``correlation``, ``matching``, ``similarity``, ``subspaces``, ``universal``, ``pipeline``,
``plots``). The command-line tools around the study (``chain``, ``lm``, ``bench``, ``colab``) live in
``featlib.tools``. Importing the package has no side effects; import the submodule you need.
"""

__version__ = "0.1.0"
