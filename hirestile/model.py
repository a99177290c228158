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
import math
import threading

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


_REPORTS_LOCK = threading.Lock()


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

    def analyze(self, image_shape: Sequence[int], precision: str = "fp32") -> Report:
        """Receptive-field report of the runnable graph for a (H, W) image, ready to run in
        ``precision`` ("fp32", or "bf16": see :func:`hirestile.executor.prepare`).

        Raises
        ------
        InputError
            If the network cannot take an image of this size; the message says which
            sizes it takes (a multiple to declare as ``pad_to``, or a minimum size).
        """
        shape = (int(image_shape[0]), int(image_shape[1]))
        key = (shape, precision)
        with _REPORTS_LOCK:
            rep = self._reports.pop(key, None)
        if rep is None:
            try:
                rep = executor.analyze(self.runnable, shape, precision)
            except ShapeError as e:
                raise InputError(self._size_advice(shape, e)) from None
            # the model's own parameters stay alive beside its optimized graph's (batch-norm
            # folding made new arrays): count the ones the optimized graph does not share
            theirs = [a for n in rep.graph.nodes for a in n.params.values()]
            rep = replace(rep, held_bytes=self.graph.param_bytes(besides=theirs))
        with _REPORTS_LOCK:                        # Dask threads may share a model
            self._reports[key] = rep              # most recent last
            while len(self._reports) > self.KEPT_REPORTS:
                del self._reports[next(iter(self._reports))]
        return rep

    # reports kept per model: a loop over images of a few sizes plans each size once
    KEPT_REPORTS = 8

    def __getstate__(self) -> dict:
        # a pickled model (a Dask task's) travels without its reports: they carry the prepared
        # weights (twice the model's bytes), and a worker analyzes for its own sizes
        state = dict(self.__dict__)
        state.pop("_reports", None)
        return state

    @cached_property
    def _reports(self) -> dict[tuple[tuple[int, int], str], Report]:
        """The latest reports :meth:`analyze` made, by (image shape, precision), most recent
        last: a report and the plans derived from it (:attr:`Report.memo`) never change."""
        return {}

    @cached_property
    def size_rule(self) -> tuple[AxisRule, AxisRule] | None:
        """The input sizes the runnable graph takes, per axis (rows, columns), derived from the
        graph's own shape rules (:func:`size_rule`); None where no rule was found."""
        return size_rule(self.runnable)

    def takes(self) -> str:
        """The accepted sizes in words ("16k + 12, >= 188"; "any size >= 44"; rows and columns
        separately where they differ), or "" where unknown."""
        return describe_sizes(self.size_rule)

    def _size_advice(self, shape: tuple[int, int], err: Exception) -> str:
        """Why the network cannot take an image of ``shape``, and which sizes it takes (the rule
        derived from the graph, :attr:`size_rule`)."""
        h, w = shape
        head = f"model {self.name!r} cannot take a {h}x{w} image ({err})"
        rule = self.size_rule
        if rule is None:
            return f"{head}; check the model's input contract (pad_to)"
        desc = describe_sizes(rule)
        near = tuple(r.at_least(n) for r, n in zip(rule, shape))
        if all(n % r.period in r.residues for r, n in zip(rule, shape)):
            return (f"{head}: the image is too small for it; it takes {desc} (the smallest: "
                    f"{near[0]}x{near[1]}), use a larger image")
        if all(r.residues == (0,) and r.period > 1 for r in rule):
            k = math.lcm(rule[0].period, rule[1].period)
            return (f"{head}: it takes sizes that are multiples of {k}; declare pad_to={k} "
                    f"(--pad-to {k}) to pad virtually and crop back")
        return f"{head}: it takes {desc}; crop or pad the image to such a size (e.g. {near[0]}x{near[1]})"


@dataclass(frozen=True)
class AxisRule:
    """The lengths one axis of the input may have: ``period * k + r`` for ``r`` in ``residues``,
    and at least ``minimum``."""

    period: int
    residues: tuple[int, ...]
    minimum: int

    def takes(self, n: int) -> bool:
        return n >= self.minimum and n % self.period in self.residues

    def at_least(self, n: int) -> int:
        """The smallest accepted length >= n."""
        n = max(n, self.minimum)
        while not self.takes(n):
            n += 1
        return n

    def __str__(self) -> str:
        if self.period == 1:
            return f"any size >= {self.minimum}"
        terms = " or ".join(f"{self.period}k + {r}" if r else f"{self.period}k" for r in self.residues)
        return f"{terms}, >= {self.minimum}"


#: longest period and largest first accepted size :func:`size_rule` looks for
MAX_PERIOD = 128
MAX_FIRST_SIZE = 2048


def _takes(graph: Graph, hw: tuple[int, int]) -> bool:
    try:
        graph.shapes(hw)
        return True
    except (ShapeError, ArithmeticError, ValueError):
        return False


def size_rule(graph: Graph) -> tuple[AxisRule, AxisRule] | None:
    """Per axis, the input lengths ``graph`` takes, from its shape rules (``Graph.shapes`` raises
    ShapeError for a size the network cannot take: skips that do not align, empty tensors).

    Region rules act on each axis alone, so each axis is scanned with the other held at a length
    the graph takes (the first square size it takes), over every length up to the first accepted
    one plus two of the longest period looked for; the rule is the shortest period that repeats
    the pattern from the first accepted length on. None where no square size up to
    :data:`MAX_FIRST_SIZE` is taken or no period up to :data:`MAX_PERIOD` repeats.
    """
    n0 = next((n for n in range(1, MAX_FIRST_SIZE + 1) if _takes(graph, (n, n))), None)
    if n0 is None:
        return None
    rules = []
    for axis in (0, 1):
        top = n0 + 2 * MAX_PERIOD
        ok = [False] + [_takes(graph, (n, n0) if axis == 0 else (n0, n)) for n in range(1, top + 1)]
        first = ok.index(True)
        period = next((p for p in range(1, MAX_PERIOD + 1)
                       if all(ok[n] == ok[n + p] for n in range(first, top + 1 - p))), None)
        if period is None:
            return None
        residues = tuple(sorted({n % period for n in range(first, first + period) if ok[n]}))
        rules.append(AxisRule(period, residues, first))
    return rules[0], rules[1]


def describe_sizes(rule: tuple[AxisRule, AxisRule] | None) -> str:
    """"16k + 12, >= 188" where both axes share the rule, else "rows 16k + 12, >= 188; columns ..."."""
    if rule is None:
        return ""
    if rule[0] == rule[1]:
        return str(rule[0])
    return f"rows {rule[0]}; columns {rule[1]}"
