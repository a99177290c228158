"""A runnable model: the network graph plus the input contract it declares."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property

from hirestile.contract import InputContract
from hirestile.graph import INPUT, CropLike, Graph, Node, Pad


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
