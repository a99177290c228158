"""Import a PyTorch module: export it to ONNX in memory, then :func:`load_onnx`.

torch is imported inside :func:`from_torch` only; it is never a dependency of
hirestile itself.
"""
from __future__ import annotations

import io
import warnings

from hirestile.errors import ModelError
from hirestile.graph import Graph
from hirestile.onnx_import import load_onnx

__all__ = ["from_torch", "export_onnx"]


def export_onnx(module, example_input, *, opset: int = 17, dynamic: bool = True, dynamo: bool = False) -> bytes:
    """Export ``module`` (eval mode) to ONNX bytes, with a dynamic image size by default.

    ``example_input`` is a tensor (or array) of shape (1, C, H, W) or (C, H, W).
    With ``dynamo=True`` the ``torch.export``-based exporter is used (needs
    ``onnxscript``), otherwise the TorchScript one.
    """
    try:
        import torch
    except ImportError:  # pragma: no cover - exercised where torch is absent
        raise ModelError("importing a PyTorch module needs torch installed (pip install torch)") from None
    if not isinstance(module, torch.nn.Module):
        raise ModelError(f"from_torch expects a torch.nn.Module, got {type(module).__name__}")
    x = torch.as_tensor(example_input, dtype=torch.float32)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[0] != 1:
        raise ModelError(f"example input must be (C, H, W) or (1, C, H, W), got shape {tuple(x.shape)}")
    was_training = module.training
    module.eval()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            if dynamo:
                kw = {}
                if dynamic:
                    kw["dynamic_shapes"] = {next(iter(_arg_names(module))): {
                        2: torch.export.Dim("h", min=2), 3: torch.export.Dim("w", min=2)}}
                prog = torch.onnx.export(module, (x,), None, input_names=["input"], output_names=["output"],
                                         opset_version=max(opset, 18), dynamo=True, verbose=False, **kw)
                return prog.model_proto.SerializeToString()
            f = io.BytesIO()
            torch.onnx.export(module, (x,), f, input_names=["input"], output_names=["output"],
                              opset_version=opset, dynamo=False,
                              dynamic_axes={"input": {2: "height", 3: "width"}} if dynamic else None)
            return f.getvalue()
    except ModelError:
        raise
    except Exception as e:
        msg = " ".join(str(e).split())[:300]
        raise ModelError(f"torch.onnx.export failed for {type(module).__name__}: {msg}") from None
    finally:
        module.train(was_training)


def _arg_names(module):
    import inspect

    params = [p for p in inspect.signature(module.forward).parameters.values()
              if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return [p.name for p in params] or ["x"]


def from_torch(module, example_input, *, opset: int = 17) -> Graph:
    """A :class:`~hirestile.graph.Graph` for a PyTorch module.

    The module is exported with the TorchScript-based ONNX exporter with a
    dynamic image size (falling back to a fixed one, then to the dynamo
    exporter, if that fails) and imported with :func:`load_onnx`, evaluating
    size-dependent sub-graphs around the example's size.

    Examples
    --------
    >>> import torch
    >>> from hirestile.torch_import import from_torch
    >>> g = from_torch(torch.nn.Conv2d(3, 2, 3, padding=1), torch.zeros(1, 3, 16, 16))
    >>> [n.op.kind for n in g.nodes]
    ['Conv']
    """
    shape = tuple(getattr(example_input, "shape", ()))
    hint = (int(shape[-2]), int(shape[-1])) if len(shape) >= 2 else None
    errors = []
    for kw in ({"dynamic": True}, {"dynamic": False}, {"dynamic": True, "dynamo": True}):
        try:
            data = export_onnx(module, example_input, opset=opset, **kw)
        except ModelError as e:
            errors.append(str(e))
            continue
        return load_onnx(data, size_hint=hint)
    raise ModelError(errors[0])
