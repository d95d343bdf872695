"""Every arrow the README draws between parts of the code is an import that exists."""

from __future__ import annotations

import re

from test_architecture import _graph

from evicctl.entry import CHECKOUT_ROOT


def _members(part: str):
    """A predicate for the modules a README name stands for: `x.py` is one module, `x/` a
    package's modules (for `manager/`: its own modules, not its subpackages)."""
    if part == "kernels/":
        return lambda m: m.startswith("evicctl.kernels")
    dotted = "evicctl." + part.rstrip("/").removesuffix(".py").replace("/", ".")
    if part == "manager/":
        return lambda m: m.startswith(dotted + ".") and m.count(".") == 2
    if part.endswith("/"):
        return lambda m: m == dotted or m.startswith(dotted + ".")
    return lambda m: m == dotted


def _arrows():
    text = (CHECKOUT_ROOT / "README.md").read_text()
    block = re.search(r"<!-- arrows -->\s*```\n(.*?)```\s*<!-- /arrows -->", text, re.S)
    assert block, "README has no arrows block"
    for line in block.group(1).strip().splitlines():
        source, targets = (s.strip() for s in line.split("->"))
        for target in targets.split(","):
            yield source, target.strip()


def test_every_arrow_is_an_import():
    edges = list(_graph().edges())
    arrows = list(_arrows())
    assert len(arrows) >= 20
    missing = []
    for source, target in arrows:
        is_source, is_target = _members(source), _members(target)
        if not any(is_source(a) and is_target(b) for a, b in edges):
            missing.append(f"{source} -> {target}")
    assert not missing, f"README arrows with no import behind them: {missing}"
