"""UNet builder: the hirestile graph of the UNet family, from a PyTorch-style state dict.

Parameter names follow ``hirestile.models.training.torch_unet.UNet`` exactly
(``enc.0.conv1.weight``, ``enc.0.bn1.running_mean``, ``up.2.weight``, ...), so a
state dict trained in PyTorch loads as it is, from safetensors.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from hirestile.contract import InputContract
from hirestile.errors import ModelError
from hirestile.graph import (INPUT, Affine, Concat, Conv, ConvTranspose, CropLike, Graph, Node, Pool, Resize, Unary,
                             batchnorm_affine)
from hirestile.model import Model

ARCH_KEYS = ("in_channels", "classes", "base", "depth", "padding", "up", "bn")


def init_state(*, in_channels: int = 3, classes: int = 2, base: int = 32, depth: int = 4, padding: str = "same",
               up: str = "transpose", bn: bool = True, seed: int = 0) -> dict[str, np.ndarray]:
    """Random weights (He-normal convs, non-trivial BatchNorm statistics) in the state-dict layout."""
    rng = np.random.default_rng(seed)
    sd: dict[str, np.ndarray] = {}

    def conv(prefix: str, cin: int, cout: int, k: int, bias: bool = True):
        sd[prefix + ".weight"] = (rng.standard_normal((cout, cin, k, k)) * np.sqrt(2.0 / (cin * k * k))).astype(np.float32)
        if bias:
            sd[prefix + ".bias"] = (rng.standard_normal(cout) * 0.05).astype(np.float32)

    def norm(prefix: str, c: int):
        sd[prefix + ".weight"] = rng.uniform(0.5, 1.5, c).astype(np.float32)
        sd[prefix + ".bias"] = rng.uniform(-0.2, 0.2, c).astype(np.float32)
        sd[prefix + ".running_mean"] = rng.uniform(-0.2, 0.2, c).astype(np.float32)
        sd[prefix + ".running_var"] = rng.uniform(0.5, 2.0, c).astype(np.float32)

    def block(prefix: str, cin: int, cout: int):
        conv(prefix + ".conv1", cin, cout, 3, bias=not bn)
        if bn:
            norm(prefix + ".bn1", cout)
        conv(prefix + ".conv2", cout, cout, 3, bias=not bn)
        if bn:
            norm(prefix + ".bn2", cout)

    w = [base * 2 ** i for i in range(depth + 1)]
    for i in range(depth + 1):
        block(f"enc.{i}", in_channels if i == 0 else w[i - 1], w[i])
    for i in range(depth):
        if up == "transpose":
            sd[f"up.{i}.weight"] = (rng.standard_normal((w[i + 1], w[i], 2, 2)) * np.sqrt(1.0 / w[i + 1])).astype(np.float32)
            sd[f"up.{i}.bias"] = (rng.standard_normal(w[i]) * 0.05).astype(np.float32)
        else:
            conv(f"up.{i}.1", w[i + 1], w[i], 1)
        block(f"dec.{i}", 2 * w[i], w[i])
    conv("head", w[0], classes, 1)
    return sd


def _param(state: dict[str, np.ndarray], key: str, shape: tuple[int, ...]) -> np.ndarray:
    """``state[key]`` as float32, refused unless it has ``shape`` and holds only finite values."""
    if key not in state:
        raise ModelError(f"UNet weights lack {key!r}; is this a hirestile UNet state dict with these settings? "
                         "Export it again with hirestile.models.unet.save_unet")
    a = np.asarray(state[key])
    if a.shape != shape:
        raise ModelError(f"UNet weights {key} have shape {a.shape}, expected {shape} for this architecture; "
                         "export the model again (the file does not match its architecture metadata)")
    with np.errstate(over="ignore", invalid="ignore"):      # a float64 beyond float32 range becomes Inf: refused
        a = a.astype(np.float32)
    if not np.isfinite(a).all():
        raise ModelError(f"UNet weights {key} hold NaN or Inf; the model is damaged (or diverged in training): "
                         "export it again from a good checkpoint")
    return a


def build_graph(state: dict[str, np.ndarray], *, in_channels: int = 3, classes: int = 2, base: int = 32, depth: int = 4,
                padding: str = "same", up: str = "transpose", bn: bool = True) -> Graph:
    """The UNet graph for a state dict (PyTorch names and layouts)."""
    if padding not in ("same", "valid"):
        raise ModelError(f"padding must be 'same' or 'valid', got {padding!r}")
    if up not in ("transpose", "bilinear", "nearest"):
        raise ModelError(f"up must be 'transpose', 'bilinear' or 'nearest', got {up!r}")
    nodes: list[Node] = []
    p = 1 if padding == "same" else 0

    def param(key: str, shape: tuple[int, ...]) -> np.ndarray:
        return _param(state, key, shape)

    def conv(name: str, src: str, cin: int, cout: int, k: int, pad: int, bias: bool = True) -> str:
        wt = param(name + ".weight", (cout, cin, k, k))
        b = param(name + ".bias", (cout,)) if bias else np.zeros(cout, np.float32)
        nodes.append(Node(name, Conv(kernel=(k, k), pads=(pad,) * 4, cin=cin, cout=cout), (src,), {"w": wt, "b": b}))
        return name

    def bnorm(name: str, src: str, c: int) -> str:
        g, b = param(name + ".weight", (c,)), param(name + ".bias", (c,))
        mean, var = param(name + ".running_mean", (c,)), param(name + ".running_var", (c,))
        if (var < 0).any():
            raise ModelError(f"UNet weights {name}.running_var hold negative variances; the file is damaged: "
                             "export the model again")
        scale, shift = batchnorm_affine(g, b, mean, var, 1e-5)
        nodes.append(Node(name, Affine(), (src,), {"scale": scale, "shift": shift}))
        return name

    def block(prefix: str, src: str, cin: int, cout: int) -> str:
        for j, c in ((1, cin), (2, cout)):
            src = conv(f"{prefix}.conv{j}", src, c, cout, 3, p, bias=not bn)
            if bn:
                src = bnorm(f"{prefix}.bn{j}", src, cout)
            nodes.append(Node(f"{prefix}.relu{j}", Unary(fn="relu"), (src,)))
            src = f"{prefix}.relu{j}"
        return src

    w = [base * 2 ** i for i in range(depth + 1)]
    skips, x = [], INPUT
    for i in range(depth + 1):
        if i > 0:
            nodes.append(Node(f"pool.{i}", Pool(mode="max", kernel=(2, 2), stride=(2, 2)), (x,)))
            x = f"pool.{i}"
        x = block(f"enc.{i}", x, in_channels if i == 0 else w[i - 1], w[i])
        skips.append(x)
    for i in reversed(range(depth)):
        if up == "transpose":
            wt = param(f"up.{i}.weight", (w[i + 1], w[i], 2, 2))
            nodes.append(Node(f"up.{i}", ConvTranspose(kernel=(2, 2), stride=(2, 2), cin=w[i + 1], cout=w[i]), (x,),
                              {"w": wt, "b": param(f"up.{i}.bias", (w[i],))}))
            x = f"up.{i}"
        else:
            mode = "bilinear" if up == "bilinear" else "nearest"
            coord = "pytorch_half_pixel" if mode == "bilinear" else "asymmetric"
            nodes.append(Node(f"up.{i}.0", Resize(mode=mode, scale=(2.0, 2.0), coord=coord), (x,)))
            x = conv(f"up.{i}.1", f"up.{i}.0", w[i + 1], w[i], 1, 0)
        skip = skips[i]
        if padding == "valid":
            nodes.append(Node(f"crop.{i}", CropLike(anchor="centre"), (skip, x)))
            skip = f"crop.{i}"
        nodes.append(Node(f"cat.{i}", Concat(), (skip, x)))
        x = block(f"dec.{i}", f"cat.{i}", 2 * w[i], w[i])
    conv("head", x, w[0], classes, 1, 0)
    return Graph(nodes=tuple(nodes), output="head", in_channels=in_channels)


def unet(*, in_channels: int = 3, classes: int = 2, base: int = 32, depth: int = 4, padding: str = "same",
         up: str = "transpose", bn: bool = True, state: dict[str, np.ndarray] | None = None, seed: int = 0,
         contract: InputContract | None = None, name: str = "unet") -> Model:
    """Build a UNet model.

    Parameters
    ----------
    in_channels, classes, base, depth : int
        Input channels, output classes, width of the first level, number of poolings.
    padding : {"same", "valid"}
        "same" pads every 3x3 conv by 1 (output size = input size; the contract
        pads inputs to a multiple of ``2**depth``); "valid" is the original
        U-Net (Ronneberger 2015): the output is smaller than the input.
    up : {"transpose", "bilinear", "nearest"}
    bn : bool
        BatchNorm after every 3x3 conv (folded into the conv at run time).
    state : dict, optional
        Weights in the PyTorch state-dict layout; random (``seed``) when omitted.

    Examples
    --------
    >>> import numpy as np, hirestile
    >>> from hirestile.models.unet import unet
    >>> m = unet(in_channels=1, classes=2, base=4, depth=2)
    >>> hirestile.predict(m, np.zeros((1, 20, 28), np.float32)).shape
    (2, 20, 28)
    """
    arch = dict(in_channels=in_channels, classes=classes, base=base, depth=depth, padding=padding, up=up, bn=bn)
    if state is None:
        state = init_state(**arch, seed=seed)
    graph = build_graph(state, **arch)
    if contract is None:
        contract = InputContract(channels=in_channels, pad_to=2 ** depth if padding == "same" else 1)
    return Model(graph=graph, contract=contract, name=name, classes=tuple(f"class{i}" for i in range(classes)))


def save_unet(path: str | Path, state: dict[str, np.ndarray], **arch) -> None:
    """Save weights as safetensors with the architecture in the header metadata."""
    from safetensors.numpy import save_file
    meta = {"arch": "unet", **{k: arch[k] for k in ARCH_KEYS if k in arch}}
    save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, str(path), metadata={"hirestile": json.dumps(meta)})


def read_arch(path: str | Path) -> dict:
    """The architecture kwargs stored in a UNet safetensors file's header."""
    from safetensors import safe_open
    with safe_open(str(path), framework="numpy") as f:
        meta = f.metadata() or {}
    try:
        arch = json.loads(meta["hirestile"])
    except (KeyError, ValueError):
        raise ModelError(f"{path}: safetensors file has no hirestile architecture metadata; save it with "
                         "hirestile.models.unet.save_unet, or export the network to ONNX") from None
    arch.pop("arch", None)
    return {k: arch[k] for k in ARCH_KEYS if k in arch}


def load_unet(path: str | Path, *, contract: InputContract | None = None, name: str = "unet",
              classes: tuple[str, ...] = ()) -> Model:
    """Load a UNet from a safetensors file written by :func:`save_unet` or the training scripts."""
    from safetensors.numpy import load_file
    try:
        arch = read_arch(path)
        state = load_file(str(path))
    except ModelError:
        raise
    except Exception as e:  # safetensors raises several types for corrupt files
        raise ModelError(f"{path}: not a readable safetensors file ({' '.join(str(e).split())[:200]}); "
                         "check the path, or save the weights again with hirestile.models.unet.save_unet "
                         "(`hirestile models` lists the built-in models)") from None
    m = unet(**arch, state=state, contract=contract, name=name)
    return m if not classes else Model(graph=m.graph, contract=m.contract, name=name, classes=tuple(classes))
