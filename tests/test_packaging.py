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


def test_the_test_extra_is_installed():
    """Reference tests skip cleanly where torch / ONNX Runtime are absent (a user's partial
    install), but CI installs the [test] extra and must not skip them: a broken install of
    the extra fails here instead of turning the references into silent skips."""
    import tomllib

    root = Path(__file__).resolve().parents[1]
    extra = tomllib.loads((root / "pyproject.toml").read_text())["project"]["optional-dependencies"]["test"]
    import_names = {"scikit-image": "skimage", "ipykernel": "ipykernel"}
    missing = []
    for req in extra:
        name = req.split(";")[0].split("[")[0]
        for sep in "=<>!~ ":
            name = name.split(sep)[0]
        mod = import_names.get(name, name.replace("-", "_"))
        if importlib.util.find_spec(mod) is None:
            missing.append(name)
    assert not missing, f"the [test] extra is incomplete: {missing}; run pip install -e '.[test]'"
    import torch
    assert torch.__version__.startswith("2.13.0"), torch.__version__
