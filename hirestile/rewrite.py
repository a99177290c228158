"""Graph rewrites: the one mechanism, and the standard optimisations built on it.

Layer 1 of docs/architecture.md, beside :mod:`hirestile.graph`. ``optimize``
(prune, fold batch-norm, fuse activations) runs on every graph the executor
prepares; the ONNX importer's pattern fusions (:mod:`hirestile.onnx_import.rewrites`)
are rules for the same :func:`rewrite`.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np

from hirestile.graph import Affine, Conv, ConvTranspose, Graph, Node, Unary

def prune(graph: Graph) -> Graph:
    """Drop nodes the output does not depend on."""
    live, by_name = {graph.output}, graph.by_name
    for n in reversed(graph.nodes):
        if n.name in live:
            live.update(n.inputs)
    return graph.replace_nodes([n for n in graph.nodes if n.name in live and n.name in by_name])


# One rewrite mechanism for the whole code base: optimize's rules below and the ONNX
# importer's pattern fusions (hirestile.onnx_import.rewrites) are tables of small rules run by
# ``rewrite``. A rule is a function ``rule(node, index) -> Match | None``: it looks at one node
# and its neighbours (``index``) and either declines or names the nodes to replace and the one
# node that takes their place.


@dataclass(frozen=True, eq=False)
class Match:
    """What a rule found: ``new`` replaces ``nodes``.

    ``new`` computes the tensor the last of ``nodes`` computed and takes the name of one of
    ``nodes``; where that is not the last one's name, readers of the last one (and the graph
    output) follow the rename. Every other matched node must feed only matched nodes and not
    be the graph output (``rewrite`` skips a match that breaks this)."""

    nodes: tuple[Node, ...]
    new: Node


class GraphIndex:
    """The nodes of a graph being rewritten and each tensor's readers: what rules navigate by."""

    def __init__(self, nodes: Sequence[Node], output: str):
        self.output = output
        self.nodes = {n.name: n for n in nodes}
        self._readers: dict[str, list[str]] = {}
        for n in nodes:
            self._link(n)

    def producer(self, tensor: str) -> Node | None:
        """The node computing ``tensor`` (None for the graph input)."""
        return self.nodes.get(tensor)

    def readers(self, tensor: str) -> list[Node]:
        """The nodes reading ``tensor``, once per read."""
        return [self.nodes[r] for r in self._readers.get(tensor, ())]

    def sole_reader(self, tensor: str) -> Node | None:
        """The node reading ``tensor`` when nothing else reads it (nor the same node twice)
        and it is not the graph output; else None."""
        r = self._readers.get(tensor, ())
        return self.nodes[r[0]] if len(r) == 1 and tensor != self.output else None

    def apply(self, m: Match) -> None:
        """Put ``m.new`` in place of the matched nodes; readers of the last one read it."""
        old, new = m.nodes[-1].name, m.new.name
        for n in m.nodes:
            self._unlink(self.nodes.pop(n.name))
        self.nodes[new] = m.new
        self._link(m.new)
        if old != new:
            for r in dict.fromkeys(self._readers.pop(old, ())):
                n = self.nodes[r]
                self._unlink(n)
                self.nodes[r] = replace(n, inputs=tuple(new if t == old else t for t in n.inputs))
                self._link(self.nodes[r])
            if self.output == old:
                self.output = new

    def _link(self, n: Node) -> None:
        for t in n.inputs:
            self._readers.setdefault(t, []).append(n.name)

    def _unlink(self, n: Node) -> None:
        for t in n.inputs:
            if n.name in self._readers.get(t, ()):
                self._readers[t].remove(n.name)


def rewrite(graph: Graph, rules: Sequence) -> Graph:
    """Rewrite ``graph`` with a table of rules (functions ``(node, GraphIndex) -> Match | None``)
    until none matches anywhere.

    Nodes are tried in graph order and, at each node, the rules in table order. A match is
    applied at once (the replacement stands where the matched node of its name stood) and
    the search goes on from the replacement, or from the node that matched if that came
    first; passes repeat until one changes nothing. A table's rules must not compete for
    the same nodes, so that the order matches are found in does not change the result."""
    order = [n.name for n in graph.nodes]
    position = {name: i for i, name in enumerate(order)}
    index = GraphIndex(graph.nodes, graph.output)
    changed = True
    while changed:
        changed, i = False, 0
        while i < len(order):
            n = index.nodes.get(order[i])
            m = None if n is None else _match(n, index, rules)
            if m is None:
                i += 1
                continue
            index.apply(m)
            changed, i = True, min(i, position[m.new.name])
    return graph.replace_nodes([index.nodes[k] for k in order if k in index.nodes], index.output)


def _match(n: Node, index: GraphIndex, rules: Sequence) -> Match | None:
    """The first rule's match at ``n`` that leaves nothing outside it reading a removed node."""
    for rule in rules:
        m = rule(n, index)
        if m is None:
            continue
        names = {k.name for k in m.nodes}
        if m.new.name not in names:
            raise ValueError(f"rewrite rule {getattr(rule, '__name__', rule)!r} replaces {sorted(names)} "
                             f"by a node named {m.new.name!r}, none of theirs")
        if all(k.name != index.output and all(r.name in names for r in index.readers(k.name))
               for k in m.nodes[:-1]):
            return m
    return None


def absorb(follows, absorbs, merge):
    """A rule merging a node that ``follows`` accepts into its producer, when ``absorbs``
    accepts the producer and the node is its sole reader; ``merge(producer, node)`` is the
    merged node, under the producer's name."""
    def rule(n: Node, index: GraphIndex) -> Match | None:
        if not follows(n):
            return None
        src = index.producer(n.inputs[0])
        if src is None or not absorbs(src) or index.sole_reader(src.name) is not n:
            return None
        return Match((src, n), merge(src, n))
    return rule


def _conv_without_act(n: Node) -> bool:
    return isinstance(n.op, (Conv, ConvTranspose)) and not n.op.act


def _fold_bn(conv: Node, bn: Node) -> Node:
    scale, shift = (np.asarray(bn.params[k], np.float64) for k in ("scale", "shift"))
    w = conv.params["w"].astype(np.float64)
    if isinstance(conv.op, ConvTranspose):
        # w is (cin, cout / groups, kh, kw); input channel ci of group g feeds outputs g*cpg + j
        per_out = scale.reshape(conv.op.groups, -1)
        w = w * np.repeat(per_out, conv.op.cin // conv.op.groups, axis=0)[:, :, None, None]
    else:
        w = w * scale.reshape(-1, 1, 1, 1)
    b = conv.params["b"].astype(np.float64) * scale + shift
    return replace(conv, params={"w": w.astype(np.float32), "b": b.astype(np.float32)})


FUSABLE = {"relu", "leaky_relu"}

#: Affine (inference BatchNorm) into the conv or transposed conv that feeds only it
FOLD_BATCHNORM = absorb(lambda n: isinstance(n.op, Affine), _conv_without_act, _fold_bn)
#: ReLU / LeakyReLU into the conv or transposed conv that feeds only it
FUSE_ACTIVATION = absorb(lambda n: isinstance(n.op, Unary) and n.op.fn in FUSABLE, _conv_without_act,
                         lambda conv, act: replace(conv, op=replace(conv.op, act=act.op.fn, alpha=act.op.p0)))
#: the rules of :func:`optimize`
OPTIMIZE_RULES = (FOLD_BATCHNORM, FUSE_ACTIVATION)


def fold_batchnorm(graph: Graph) -> Graph:
    """Fold Affine (inference BatchNorm) nodes into the conv or transposed conv that
    feeds only them."""
    return rewrite(graph, [FOLD_BATCHNORM])


def fuse_activations(graph: Graph) -> Graph:
    """Fuse ReLU / LeakyReLU into the conv (or transposed conv) that feeds only them."""
    return rewrite(graph, [FUSE_ACTIVATION])


def optimize(graph: Graph) -> Graph:
    """The standard rewrites: prune, fold batch-norm, fuse activations."""
    return rewrite(prune(graph), OPTIMIZE_RULES)


__all__ = ["prune", "Match", "GraphIndex", "rewrite", "absorb", "FOLD_BATCHNORM", "FUSE_ACTIVATION",
           "OPTIMIZE_RULES", "fold_batchnorm", "fuse_activations", "optimize"]
