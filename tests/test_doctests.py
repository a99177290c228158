"""The docstring examples of every module run, and pass (issue 11: they are documentation a user copies).

Modules are imported by their package names (``hirestile.kernels.conv``, never the bare
``kernels.conv`` that ``--doctest-modules`` over the source folders would import).
"""
from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import hirestile

PACKAGES = ("hirestile", "hirestile.kernels", "hirestile.models")


def _modules() -> list[str]:
    names = []
    for pkg in PACKAGES:
        mod = importlib.import_module(pkg)
        names.append(pkg)
        names += [info.name for info in pkgutil.walk_packages(mod.__path__, prefix=pkg + ".")]
    return sorted(set(names) - {"hirestile.__main__"})          # importing it runs the CLI


MODULES = _modules()


def test_every_package_module_is_collected():
    assert {"hirestile.api", "hirestile.tiling", "hirestile.kernels.conv", "hirestile.models.unet"} <= set(MODULES)
    assert not any(m.startswith(("kernels", "models")) for m in MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    mod = importlib.import_module(name)
    res = doctest.testmod(mod, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False,
                          extraglobs={"hirestile": hirestile})
    assert res.failed == 0, f"{res.failed} of {res.attempted} examples in {name} failed (see the output above)"
