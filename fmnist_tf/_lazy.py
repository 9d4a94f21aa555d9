"""Lazy re-exports for package ``__init__`` files (PEP 562).

Importing a light submodule (flag definitions, the serving check) must not import TensorFlow through a
package ``__init__`` that re-exports heavy names: each name is imported from its module on first use.
"""

import importlib


def lazy_exports(package, table):
    """(__getattr__, __dir__) for ``package`` whose public names come from ``table``: name -> submodule."""

    def __getattr__(name):
        if name not in table:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{table[name]}"), name)
        globals_ = importlib.import_module(package).__dict__
        globals_[name] = value  # later look-ups skip __getattr__
        return value

    def __dir__():
        return sorted(set(table) | set(importlib.import_module(package).__dict__))

    return __getattr__, __dir__
