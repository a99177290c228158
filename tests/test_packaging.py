"""The package layout promised in pyproject: kernels/ and models/ live under hirestile only."""
import importlib.util
import subprocess
import sys
from pathlib import Path


def test_no_top_level_kernels_or_models(tmp_path):
    # run from an empty folder so the repository root is not on sys.path
    code = ("import importlib.util, sys; "
            "print(importlib.util.find_spec('kernels'), importlib.util.find_spec('models'))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "None None"


def test_subpackages_map_to_folders():
    import hirestile.kernels
    import hirestile.models
    root = Path(__file__).resolve().parents[1]
    assert Path(hirestile.kernels.__file__).resolve().parent == root / "kernels"
    assert Path(hirestile.models.__file__).resolve().parent == root / "models"
    assert importlib.util.find_spec("hirestile.kernels.conv") is not None
