"""The layers of docs/architecture.md, section 3, hold in the code: imports only go downward.

The layer table is read from the document itself, so the map and the code cannot drift
apart silently: a new module must be placed in the table, and an upward import fails here.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PLAIN_DATA = {"errors", "region", "contract", "outputs", "version"}   # "may be used anywhere"
# The model layer calls the importers lazily, inside load_model (documented in section 3).
LAZY_IMPORTERS = {("loading", "onnx_import"), ("loading", "models")}


def _layers() -> dict[str, int]:
    text = (ROOT / "docs" / "architecture.md").read_text()
    table = text[text.index("## 3. Layers"):text.index("## 4.")]
    layers: dict[str, int] = {}
    for row in table.splitlines():
        m = re.match(r"\|\s*(\d+) [^|]*\|([^|]*)\|", row)
        if m:
            for name in re.findall(r"`([a-z_]+)(?:\.py|/)?`", m.group(2)):
                layers[name] = int(m.group(1))
    return layers


def _module_of(path: Path) -> str:
    rel = path.relative_to(ROOT)
    return rel.parts[1] if rel.parts[0] == "hirestile" and len(rel.parts) > 2 else \
        rel.parts[0] if rel.parts[0] in ("kernels", "models") else path.stem


def _imports(path: Path) -> set[str]:
    """hirestile modules (first component below the package) that ``path`` imports anywhere."""
    found = set()
    in_package = path.parent.name == "hirestile"
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level == 1 and in_package:
                found.update([mod.split(".")[0]] if mod else [a.name for a in node.names])
            elif mod.startswith("hirestile."):
                found.add(mod.split(".")[1])
            elif mod == "hirestile":
                found.update(a.name for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("hirestile."))
    return found


def test_every_module_has_a_layer():
    layers = _layers()
    names = {p.stem for p in (ROOT / "hirestile").glob("*.py")} - {"__init__", "__main__"}
    names |= {p.name for p in (ROOT / "hirestile").iterdir() if (p / "__init__.py").exists()}
    missing = sorted(names - set(layers) - PLAIN_DATA)
    assert not missing, f"modules missing from docs/architecture.md's layer table: {missing}"
    assert {"kernels", "models", "executor", "scheduler"} <= set(layers)


def test_imports_go_down_the_layers():
    layers = _layers()
    files = [p for p in (ROOT / "hirestile").rglob("*.py") if p.name not in ("__init__.py", "__main__.py")
             or p.parent.name != "hirestile"]
    files += list((ROOT / "kernels").glob("*.py"))
    bad = []
    for path in files:
        me = _module_of(path)
        if me not in layers:
            continue
        for dep in _imports(path):
            if dep == me or dep in PLAIN_DATA or dep not in layers or (me, dep) in LAZY_IMPORTERS:
                continue
            if layers[dep] > layers[me]:
                bad.append(f"{path.relative_to(ROOT)} (layer {layers[me]}) imports {dep} (layer {layers[dep]})")
    assert len(files) > 30
    assert not bad, "\n".join(bad)
