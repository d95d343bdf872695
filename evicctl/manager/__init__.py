"""The in-process manager an engine embeds. Importing this starts nothing (no CUDA, no DB).

`from evicctl.manager import Manager, KV` works; the modules load on first use.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "Manager": "evicctl.manager.manager",
    "Lookup": "evicctl.manager.manager",
    "KV": "evicctl.manager.kv",
    "get_codec": "evicctl.manager.codecs.codec",
    "place": "evicctl.manager.placer.place",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'evicctl.manager' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
