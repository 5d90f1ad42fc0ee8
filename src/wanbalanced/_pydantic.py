"""Pydantic with no plugins, and without the import that looks for them.

The first time pydantic builds a model it asks its plugin loader
(``pydantic.plugin._loader``) for plugins: every installed distribution's
``pydantic`` entry points are imported and run. That is wrong for a daemon
running as root, where a package installed beside it should not get to run
code in it; and the loader's own import of ``importlib.metadata`` (email,
zipfile, csv, ...) is about 650 pages and 120 ms of a start in the lab's
guest, a tenth of it. ``PYDANTIC_DISABLE_PLUGINS=__all__``, pydantic's own
switch, stops the scan but not that import.

Importing this module first registers, in the loader's place, a module whose
``get_plugins()`` returns no plugins, which is what that switch does. Any
other name asked of it runs the real loader in the module's namespace (as
`_pyroute2` does for pyroute2's ``__init__``), so code that wants more of it
still gets the real thing, and a pydantic that reorganised its loader gets
its own code rather than a stale copy of ours.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterable
from types import ModuleType
from typing import Any

_NAME = "pydantic.plugin._loader"


def _no_plugins() -> Iterable[Any]:
    """As pydantic's loader with PYDANTIC_DISABLE_PLUGINS=__all__: none."""
    return ()


def _install() -> None:
    if _NAME in sys.modules:  # loaded already: too late to spare its import
        return
    # Looked up without importing it (its parent packages, pydantic itself, do get imported).
    spec = importlib.util.find_spec(_NAME)
    if spec is None or spec.origin is None:
        return  # a pydantic without this loader: nothing to stand in for
    origin = spec.origin
    module = ModuleType(_NAME, "pydantic's plugin loader, standing in: no plugins (wanbalanced._pydantic)")
    module.__spec__ = spec
    module.__file__ = origin
    module.get_plugins = _no_plugins  # type: ignore[attr-defined]
    done = False

    def __getattr__(name: str) -> Any:
        # Any other name: run the real loader here once (get_plugins stays ours).
        nonlocal done
        if done or name.startswith("__"):
            raise AttributeError(f"module {_NAME!r} has no attribute {name!r}")
        done = True
        with open(origin, "rb") as f:
            code = compile(f.read(), origin, "exec")
        exec(code, module.__dict__)  # noqa: S102 - pydantic's own module, as `import` would run it
        module.get_plugins = _no_plugins  # type: ignore[attr-defined]
        return getattr(module, name)

    module.__dict__["__getattr__"] = __getattr__
    sys.modules[_NAME] = module


_install()
