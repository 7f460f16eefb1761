"""Classes that subclass a datatrove base, defined on first use and still picklable by name.

Why: the modules that hold them must import without datatrove (the training path never needs it), yet datatrove's
executors pickle pipeline steps into worker processes, and pickle finds a class by `module.qualname`. So a class is
built by a function on first use, published in its module's namespace under its own name, and the module's PEP 562
`__getattr__` builds it when a worker unpickles it before anything else asked for it.
"""

from __future__ import annotations

from typing import Any, Callable


def lazy_class(module_globals: dict[str, Any], name: str, build: Callable[[], type]) -> type:
    """`build()` once, published as `module_globals[name]` with the module and name pickle looks it up by."""
    if name not in module_globals:
        cls = build()
        cls.__module__, cls.__qualname__ = module_globals["__name__"], name
        module_globals[name] = cls
    return module_globals[name]


def module_getattr(module_globals: dict[str, Any], builders: dict[str, Callable[[], type]]) -> Callable[[str], type]:
    """A module `__getattr__` (PEP 562) that builds the lazy classes of `builders` by name."""
    def __getattr__(name: str) -> type:
        if name in builders:
            return lazy_class(module_globals, name, builders[name])
        raise AttributeError(f"module {module_globals['__name__']!r} has no attribute {name!r}")

    return __getattr__
