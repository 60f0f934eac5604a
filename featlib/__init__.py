"""featlib: the helper package behind the featuniv notebooks.

Modules are named for what they do (``config``, ``corpus``, ``models``, ``activations``, ``saes``,
``matching``, ``similarity``, ``subspaces``, ``analysis``, ``plots``, ``chain``). Importing the
package has no side effects; import the submodule you need.
"""

__version__ = "0.1.0"
