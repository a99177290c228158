"""The notebooks in notebooks/ run top to bottom (issue 6), and their committed copies carry figures.

``test_notebook_executes`` copies each notebook into ``tmp_path``, clears its outputs and
executes it with nbclient at a small size (``HIRESTILE_NB_SIZE``), with all its files
under ``tmp_path`` (``HIRESTILE_NB_WORKDIR``); any cell error fails the test. The committed
notebooks are never modified. ``test_committed_notebook_has_outputs`` checks, without
running anything, that the committed notebooks were executed in order, hold their
figures and no error outputs.

Needs the ``notebooks`` extra (matplotlib, nbclient, nbformat, ipykernel, astropy,
photutils), part of the ``test`` extra; skipped where it is absent.
"""
from __future__ import annotations

import hashlib
import shutil
import time
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"

# name -> (image side for CI, figures the notebook draws)
CASES = {
    "astronomy.ipynb": (1024, 6),
    "medical.ipynb": (1024, 4),
    "exactness.ipynb": (768, 4),
}
CELL_TIMEOUT = 900       # seconds per cell; a whole notebook takes 1-2 minutes at the CI size


def _nb_modules():
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    for mod in ("ipykernel", "matplotlib", "astropy", "photutils"):
        pytest.importorskip(mod)
    return nbformat, nbclient


def _figures(nb) -> int:
    return sum("image/png" in out.get("data", {}) for cell in nb.cells if cell.cell_type == "code"
               for out in cell.get("outputs", []))


def test_every_notebook_is_tested():
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == sorted(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_committed_notebook_has_outputs(name):
    nbformat, _ = _nb_modules()
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    counts = [c.execution_count for c in code]
    assert all(counts) and counts == sorted(counts), f"{name}: not executed top to bottom: {counts}"
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors, f"{name}: committed with an error output: {errors[0].get('ename')}"
    assert _figures(nb) >= CASES[name][1], f"{name}: committed without its figures"


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CASES))
def test_notebook_executes(name, tmp_path, monkeypatch):
    nbformat, nbclient = _nb_modules()
    size, figures = CASES[name]
    committed = hashlib.sha256((NOTEBOOKS / name).read_bytes()).hexdigest()
    path = tmp_path / name
    shutil.copyfile(NOTEBOOKS / name, path)
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    monkeypatch.setenv("HIRESTILE_NB_SIZE", str(size))
    monkeypatch.setenv("HIRESTILE_NB_WORKDIR", str(tmp_path / "work"))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    t0 = time.perf_counter()
    client.execute()                  # raises CellExecutionError naming the failing cell
    print(f"{name} at {size} px: {time.perf_counter() - t0:.0f} s")
    assert _figures(nb) >= figures
    assert hashlib.sha256((NOTEBOOKS / name).read_bytes()).hexdigest() == committed
