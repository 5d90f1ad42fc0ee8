"""Import pyroute2's submodules without its package ``__init__``.

``pyroute2/__init__.py`` imports every API the library has (NDB with sqlite,
IPDB, conntrack, ethtool, nftables, wireguard, ...) to re-export their names.
The daemon needs only the rtnetlink socket; the rest cost about 0.25 s and
several MiB on each start in the lab. Importing this module first registers
``pyroute2`` as a bare package, so ``from pyroute2.iproute.linux import ...``
loads that submodule and what it imports, nothing more. The first time
anything asks the package itself for a name (``from pyroute2 import IPRoute``
in a test or a tool), the real ``__init__`` runs in the package's namespace,
so such code sees the whole library as before.
"""

from __future__ import annotations

import importlib.util
import sys
from typing import Any

_NAME = "pyroute2"


def _install() -> None:
    if _NAME in sys.modules:  # already imported whole (or already installed)
        return
    spec = importlib.util.find_spec(_NAME)
    if spec is None or spec.origin is None or spec.submodule_search_locations is None:
        return  # not a regular package: let the normal import fail or succeed
    module = importlib.util.module_from_spec(spec)
    origin = spec.origin
    done = False

    def __getattr__(name: str) -> Any:
        # A name of the package itself: run the real __init__ once, then look again.
        nonlocal done
        # A submodule (`from pyroute2 import config`) is left to the import system.
        if done or name.startswith("__") or importlib.util.find_spec(f"{_NAME}.{name}") is not None:
            raise AttributeError(f"module {_NAME!r} has no attribute {name!r}")
        done = True
        with open(origin, "rb") as f:
            code = compile(f.read(), origin, "exec")
        exec(code, module.__dict__)  # noqa: S102 - pyroute2's own __init__, as `import pyroute2` would
        return getattr(module, name)

    module.__dict__["__getattr__"] = __getattr__
    sys.modules[_NAME] = module


_install()
