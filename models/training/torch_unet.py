"""The PyTorch twin of hirestile's UNet (``hirestile.models.unet``).

Both read the same ``state_dict`` names, so weights trained here load there
unchanged. The layout (see the module docstring of ``hirestile.models.unet``):

* ``enc[i] = Block(cin_i, w[i])`` for ``i = 0..depth`` with ``w[i] = base * 2**i``;
  ``enc[depth]`` is the bottleneck; a 2x2 max-pool runs before ``enc[1..depth]``.
* ``up[i]`` maps ``w[i+1] -> w[i]`` (transposed conv, or upsample + 1x1 conv).
* ``dec[i] = Block(2 * w[i], w[i])`` reads ``cat([skip_i, up_i])`` (skip first;
  with ``padding="valid"`` the skip is centre-cropped to the upsampled size).
* ``head`` is a 1x1 conv to ``classes`` logits.

Weights are exported with :func:`save_weights`: safetensors, batch-norm kept
un-folded (the hirestile builder folds it), ``num_batches_tracked`` dropped,
and the header metadata makes the file self-describing: the key
``"hirestile"`` holds the JSON of the architecture kwargs, e.g.
``{"arch": "unet", "base": 16, "bn": true, "classes": 2, "depth": 4,
"in_channels": 3, "padding": "same", "up": "transpose"}`` -- the format
``hirestile.models.unet.save_unet`` writes and ``load_unet`` reads.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["Block", "UNet", "save_weights", "load_weights", "read_arch"]

_UP_MODES = ("transpose", "bilinear", "nearest")


class Block(nn.Module):
    """Two 3x3 convolutions, each followed by batch-norm (optional) and ReLU."""

    def __init__(self, cin: int, cout: int, *, padding: str = "same", bn: bool = True) -> None:
        super().__init__()
        pad = 1 if padding == "same" else 0
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=pad, bias=not bn)
        if bn:
            self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=pad, bias=not bn)
        if bn:
            self.bn2 = nn.BatchNorm2d(cout)
        self.bn = bn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        if self.bn:
            x = self.bn1(x)
        x = F.relu(x)
        x = self.conv2(x)
        if self.bn:
            x = self.bn2(x)
        return F.relu(x)


class UNet(nn.Module):
    """A plain UNet whose module names match hirestile's builder.

    Parameters
    ----------
    in_channels : int
        Input channels (3 for RGB histology, 1 for astronomy).
    classes : int
        Output channels (logits).
    base : int
        Width of the first level; level ``i`` has ``base * 2**i`` channels.
    depth : int
        Number of 2x poolings (the bottleneck is at ``1 / 2**depth`` resolution).
    padding : {"same", "valid"}
        Conv padding; ``"same"`` nets need sizes that are multiples of
        ``2**depth``, ``"valid"`` nets shrink the output and crop the skips.
    up : {"transpose", "bilinear", "nearest"}
        Upsampling in the decoder.
    bn : bool
        Batch-norm after every 3x3 conv (then the convs carry no bias).

    Examples
    --------
    >>> net = UNet(in_channels=1, classes=2, base=4, depth=2).eval()
    >>> net(torch.zeros(1, 1, 16, 16)).shape
    torch.Size([1, 2, 16, 16])
    """

    def __init__(
        self,
        in_channels: int = 3,
        classes: int = 2,
        base: int = 32,
        depth: int = 4,
        padding: str = "same",
        up: str = "transpose",
        bn: bool = True,
    ) -> None:
        super().__init__()
        if padding not in ("same", "valid"):
            raise ValueError(f"padding must be 'same' or 'valid', not {padding!r}")
        if up not in _UP_MODES:
            raise ValueError(f"up must be one of {_UP_MODES}, not {up!r}")
        self.arch: dict[str, Any] = dict(
            arch="unet", in_channels=in_channels, classes=classes, base=base,
            depth=depth, padding=padding, up=up, bn=bn,
        )
        self.depth = depth
        self.padding = padding
        w = [base * 2**i for i in range(depth + 1)]
        cins = [in_channels] + w[:-1]
        self.enc = nn.ModuleList(Block(cins[i], w[i], padding=padding, bn=bn) for i in range(depth + 1))
        ups: list[nn.Module] = []
        for i in range(depth):
            if up == "transpose":
                ups.append(nn.ConvTranspose2d(w[i + 1], w[i], 2, stride=2))
            elif up == "bilinear":
                ups.append(nn.Sequential(
                    nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                    nn.Conv2d(w[i + 1], w[i], 1)))
            else:
                ups.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(w[i + 1], w[i], 1)))
        self.up = nn.ModuleList(ups)
        self.dec = nn.ModuleList(Block(2 * w[i], w[i], padding=padding, bn=bn) for i in range(depth))
        self.head = nn.Conv2d(w[0], classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.enc):
            if i > 0:
                x = F.max_pool2d(x, 2)
            x = block(x)
            skips.append(x)
        x = skips[self.depth]
        for i in range(self.depth - 1, -1, -1):
            u = self.up[i](x)
            s = skips[i]
            if s.shape[-2:] != u.shape[-2:]:
                top = (s.shape[-2] - u.shape[-2]) // 2
                left = (s.shape[-1] - u.shape[-1]) // 2
                s = s[..., top:top + u.shape[-2], left:left + u.shape[-1]]
            x = self.dec[i](torch.cat([s, u], dim=1))
        return self.head(x)


def save_weights(net: UNet, path: str | Path, *, extra: dict[str, str] | None = None) -> None:
    """Write ``net``'s weights to a self-describing safetensors file.

    Batch-norm stays un-folded, ``num_batches_tracked`` is dropped, and the
    header metadata holds ``{"hirestile": json.dumps(net.arch), **extra}``.
    """
    from safetensors.torch import save_file

    state = {k: v.detach().to(torch.float32).contiguous().clone()
             for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    meta = {"hirestile": json.dumps(net.arch, sort_keys=True)}
    meta.update(extra or {})
    save_file(state, str(path), metadata=meta)
    os.chmod(path, 0o644)  # safetensors writes 0600; package data must be world-readable


def read_arch(path: str | Path) -> dict[str, Any]:
    """The architecture kwargs stored in a weights file's metadata."""
    from safetensors import safe_open

    with safe_open(str(path), framework="np") as f:
        meta = f.metadata() or {}
    if "hirestile" not in meta:
        raise ValueError(f"{path}: no 'hirestile' entry in the safetensors metadata")
    return dict(json.loads(meta["hirestile"]))


def load_weights(path: str | Path) -> UNet:
    """Rebuild the :class:`UNet` a weights file describes and load it (eval mode)."""
    from safetensors.torch import load_file

    arch = read_arch(path)
    if arch.pop("arch", "unet") != "unet":
        raise ValueError(f"{path}: not a UNet weights file")
    net = UNet(**arch)
    missing, unexpected = net.load_state_dict(load_file(str(path)), strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ValueError(f"{path}: missing {missing}, unexpected {unexpected}")
    return net.eval()
