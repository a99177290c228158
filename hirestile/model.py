"""A runnable model: the network graph plus the input contract it declares.

The model layer (docs/architecture.md): what a model is (:class:`Model`), its
identity (:attr:`Model.fingerprint`), and its analysis for an image size
(:meth:`Model.analyze`, which also prepares the weights for the kernels: they
belong to the model's graph and are freed with it). Loading lives beside it in
:mod:`hirestile.loading`.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Iterable, Sequence

import hashlib

import numpy as np

from hirestile import executor
from hirestile.analyzer import Report
from hirestile.contract import InputContract
from hirestile.errors import InputError
from hirestile.graph import INPUT, CropLike, Graph, Node, Pad, ShapeError


def fingerprint_arrays(arrays: Iterable[tuple[str, np.ndarray]]) -> str:
    """SHA-256 (hex, 16 chars) of named arrays: names, shapes, dtypes and bytes."""
    h = hashlib.sha256()
    for name, a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


@dataclass(frozen=True, eq=False)
class Model:
    """A network and how to feed it.

    Attributes
    ----------
    graph : Graph
        The network as exported (no contract padding).
    contract : InputContract
        Channels, normalisation and pad-to rule.
    name : str
    classes : tuple of str
        Class names, one per output channel ("" entries where unknown).
    card : str
        Model card text (built-in models).
    """

    graph: Graph
    contract: InputContract
    name: str = "model"
    classes: tuple[str, ...] = ()
    card: str = field(default="", repr=False)

    @classmethod
    def from_graph(cls, graph: Graph, name: str = "model") -> Model:
        """A model that feeds the graph values as given (``scale="none"``) at any size: what
        an imported network is until a contract (sidecar, flags) says otherwise."""
        return cls(graph=graph, contract=InputContract(channels=graph.in_channels, scale="none"), name=name)

    @cached_property
    def runnable(self) -> Graph:
        """The graph with the contract's pad-to rule built in: pad (virtually) to a
        multiple at the bottom/right, run, crop back to the input size."""
        m = self.contract.pad_to
        if m <= 1:
            return self.graph
        g = self.graph
        pad_name, crop_name = "contract_pad", "contract_crop"
        mode = {"reflect": "reflect", "replicate": "edge", "zeros": "constant"}[self.contract.pad_mode]
        nodes = [Node(pad_name, Pad(mode=mode, multiple=m), (INPUT,))]
        for n in g.nodes:
            nodes.append(replace(n, inputs=tuple(pad_name if t == g.input else t for t in n.inputs)))
        nodes.append(Node(crop_name, CropLike(anchor="start"), (g.output, INPUT)))
        return Graph(nodes=tuple(nodes), output=crop_name, in_channels=g.in_channels)

    @cached_property
    def fingerprint(self) -> str:
        """Hash of the weights, ops, input contract and classes: the model's identity
        in resume manifests and per-worker caches."""
        arrays = []
        for n in self.graph.nodes:
            arrays.append((f"{n.name}:{n.op!r}:{n.inputs}", np.zeros(0)))
            arrays += [(f"{n.name}.{k}", np.asarray(v)) for k, v in sorted(n.params.items())]
        arrays.append((repr(self.contract) + repr(tuple(self.classes)), np.zeros(0)))
        return fingerprint_arrays(arrays)

    def analyze(self, image_shape: Sequence[int]) -> Report:
        """Receptive-field report of the runnable graph for a (H, W) image, ready to run.

        Raises
        ------
        InputError
            If the network cannot take an image of this size; the message says which
            sizes it takes (a multiple to declare as ``pad_to``, or a minimum size).
        """
        shape = (int(image_shape[0]), int(image_shape[1]))
        try:
            return executor.analyze(self.runnable, shape)
        except ShapeError as e:
            raise InputError(self._size_advice(shape, e)) from None

    def _size_advice(self, shape: tuple[int, int], err: Exception) -> str:
        """Why the network cannot take an image of ``shape``, and which sizes it takes."""
        h, w = shape
        head = f"model {self.name!r} cannot take a {h}x{w} image ({err})"

        def takes(hw: tuple[int, int]) -> bool:
            try:
                executor.analyze(self.runnable, hw)
                return True
            except (ShapeError, ArithmeticError):
                return False
        # candidates in order: small multiples (a same-padding UNet), a minimum size (valid
        # padding), then large multiples; the first size the network takes names the fix
        candidates = ([("multiple", k) for k in (2, 4, 8, 16, 32)] + [("size", s) for s in (64, 128, 256, 512, 1024,
                      2048, 4096)] + [("multiple", k) for k in (64, 128, 256)])
        for kind, k in candidates:
            hw = (-(-h // k) * k, -(-w // k) * k) if kind == "multiple" else (max(h, k), max(w, k))
            if takes(hw):
                if kind == "multiple":
                    return (f"{head}: it takes sizes that are multiples of {k}; declare pad_to={k} "
                            f"(--pad-to {k}) to pad virtually and crop back")
                return f"{head}: the image is too small for it; it takes {hw[0]}x{hw[1]}, use a larger image"
        return f"{head}; check the model's input contract (pad_to)"
