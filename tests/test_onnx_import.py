"""ONNX import: reference networks from both torch exporters, hand-made models for every
mapped op, and malformed files.

Numerics here check the *import* alone: the imported graph is evaluated by
``eval_graph`` (conftest; float64 NumPy written from each op's ONNX / PyTorch definition) and compared
with ONNX Runtime on the same file and with PyTorch on the module. The engine is
checked against the same references in test_reference.py.
"""
from __future__ import annotations

import sys
import tracemalloc

import numpy as np
import pytest

import onnx  # a dependency of hirestile: a broken install fails here instead of skipping
from onnx import TensorProto as TP  # noqa: E402
from onnx import helper as oh  # noqa: E402
from onnx import numpy_helper as nh  # noqa: E402

from hirestile import graph as G  # noqa: E402
from hirestile.rewrite import optimize  # noqa: E402
from hirestile.errors import ModelError  # noqa: E402
from hirestile.onnx_import import load_onnx  # noqa: E402

REL = 1e-5

NET_NAMES = ["unet_same", "unet_valid", "unet_bilinear", "unet_bilinear_ac", "dilated", "resnet_fcn", "dwsep",
             "reflect", "zoo", "se_gap", "se_mean", "instnorm", "groupnorm"]
#: networks also exported at a fixed size (size-dependent values baked in as constants)
STATIC_NAMES = ["unet_valid", "unet_bilinear_ac", "resnet_fcn", "reflect", "zoo", "groupnorm"]
#: networks also exported with the dynamo exporter (slower: a few seconds each)
DYNAMO_NAMES = ["unet_valid", "zoo", "groupnorm"]


def kinds(g) -> set[str]:
    return {type(n.op).__name__ for n in g.nodes}


def rel_err(a, b) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a.astype(np.float64) - b).max() / max(np.abs(b).max(), 1e-30))


def ort_run(data: bytes, x: np.ndarray) -> np.ndarray:
    ort = pytest.importorskip("onnxruntime")
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x[None]})[0][0]


def torch_run(net, x: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return net(torch.from_numpy(x)[None]).numpy()[0]


def image(c, h, w, seed=1):
    return np.random.default_rng(seed).standard_normal((c, h, w)).astype(np.float32)


# ----------------------------------------------------------------------------- reference networks


@pytest.mark.parametrize("name,dynamic", [(n, True) for n in NET_NAMES] + [(n, False) for n in STATIC_NAMES],
                         ids=[f"{n}-dynamic" for n in NET_NAMES] + [f"{n}-static" for n in STATIC_NAMES])
def test_reference_net_imports(name, dynamic, torch_nets, reference_onnx, graph_eval):
    """TorchScript export (opset 17): the graph has the expected ops, folds every constant
    sub-graph, and computes what PyTorch computes, at the export size and at another."""
    spec = torch_nets[name]
    net, data = reference_onnx(name, dynamic=dynamic)
    g = load_onnx(data)
    assert spec.kinds <= kinds(g), kinds(g)
    assert g.in_channels == spec.channels
    for size in spec.sizes:  # a fixed-size export generalises to other sizes too
        x = image(spec.channels, *size)
        assert rel_err(graph_eval(g, x), torch_run(net, x)) < REL
    x = image(spec.channels, *spec.sizes[0], seed=2)
    assert rel_err(graph_eval(g, x), ort_run(data, x)) < REL


@pytest.mark.parametrize("name", DYNAMO_NAMES)
def test_reference_net_imports_dynamo(name, torch_nets, reference_onnx, graph_eval):
    pytest.importorskip("onnxscript")
    spec = torch_nets[name]
    net, data = reference_onnx(name, dynamo=True, dynamic=True)
    g = load_onnx(data)
    assert spec.kinds <= kinds(g), kinds(g)
    for size in spec.sizes:
        x = image(spec.channels, *size)
        assert rel_err(graph_eval(g, x), torch_run(net, x)) < REL
        assert rel_err(graph_eval(g, x), ort_run(data, x)) < REL


def test_valid_unet_crops_become_croplike(reference_onnx):
    """The centre crop of the skips, computed from Shape sub-graphs (dynamic export) or
    baked in as constants (fixed-size export), becomes a size-independent CropLike
    whose reference is the upsampled tensor it is concatenated with."""
    for dynamic in (True, False):
        _, data = reference_onnx("unet_valid", dynamic=dynamic)
        g = load_onnx(data)
        crops = [n for n in g.nodes if isinstance(n.op, G.CropLike)]
        assert len(crops) == 2 and not any(isinstance(n.op, G.Slice) for n in g.nodes)
        by = g.by_name
        for c in crops:
            assert c.op.anchor == "centre"
            assert isinstance(by[c.inputs[1]].op, G.ConvTranspose)
            (cat,) = [n for n in g.nodes if c.name in n.inputs]
            assert isinstance(cat.op, G.Concat) and cat.inputs == (c.name, c.inputs[1])
        g.shapes((188, 188))  # runs at sizes far from the export size
        assert g.shapes((572, 572))[g.output][1:] == (532, 532)


def test_valid_unet_dynamo_crops(reference_onnx):
    pytest.importorskip("onnxscript")
    _, data = reference_onnx("unet_valid", dynamo=True, dynamic=True)
    g = load_onnx(data)
    assert sum(isinstance(n.op, G.CropLike) for n in g.nodes) == 2
    assert not any(isinstance(n.op, G.Slice) for n in g.nodes)


def test_reflect_pads_fold_into_convs(reference_onnx):
    """TorchScript writes padding_mode='reflect' as Pad + Conv, with the pad amounts
    computed by a ConstantOfShape/Concat/Reshape/Slice/Transpose/Cast sub-graph."""
    _, data = reference_onnx("reflect", dynamic=True)
    m = onnx.load_from_string(data)
    assert {"ConstantOfShape", "Transpose", "Pad"} <= {n.op_type for n in m.graph.node}
    g = load_onnx(data)
    convs = [n for n in g.nodes if isinstance(n.op, G.Conv)]
    assert [c.op.pad_mode for c in convs] == ["reflect", "replicate", "reflect", "reflect"]
    assert convs[2].op.pads == (1, 2, 1, 2) and convs[2].op.stride == (1, 2)
    assert convs[3].op.pads == (2, 1, 0, 1)  # the explicit F.pad(y, (1, 1, 2, 0), "reflect")
    assert not any(isinstance(n.op, G.Pad) for n in g.nodes)


def test_patterns_fused(reference_onnx):
    """Erf-GELU, SiLU (x * sigmoid x) and the dynamo softplus threshold become one Unary."""
    _, data = reference_onnx("dwsep", dynamic=True)
    fns = [n.op.fn for n in load_onnx(data).nodes if isinstance(n.op, G.Unary)]
    assert "gelu" in fns and "silu" in fns and "erf" not in fns and "sigmoid" not in fns
    _, data = reference_onnx("groupnorm", dynamic=True)
    g = load_onnx(data)
    assert [type(n.op).__name__ for n in g.nodes] == ["Conv", "Norm", "Unary", "Conv"]
    norm = g.nodes[1]
    assert norm.op.groups == 2 and norm.name == "/norm/InstanceNormalization"


def test_node_names_are_the_onnx_names(reference_onnx):
    _, data = reference_onnx("unet_same", dynamic=True)
    g = load_onnx(data)
    names = {n.name for n in g.nodes}
    assert "/enc.0/body/body.0/Conv" in names and "/up.0/ConvTranspose" in names
    assert g.input == "x"


# ----------------------------------------------------------------------------- hand-made models


def make_model(nodes, inits=None, shape=(1, 3, 12, 14), opset=17, inputs=None, outputs=("y",), ir=8):
    inits = inits or {}
    inputs = inputs if inputs is not None else [oh.make_tensor_value_info("x", TP.FLOAT, list(shape))]
    g = oh.make_graph(nodes, "g", inputs, [oh.make_tensor_value_info(o, TP.FLOAT, None) for o in outputs],
                      initializer=[nh.from_array(np.asarray(v), k) for k, v in inits.items()])
    m = oh.make_model(g, opset_imports=[oh.make_opsetid("", opset)])
    m.ir_version = ir
    return m.SerializeToString()


def check(data, graph_eval, size=None, channels=3, rel=REL):
    """Import, compare with ONNX Runtime; returns the graph."""
    g = load_onnx(data)
    m = onnx.load_from_string(data)
    dims = [d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim]
    size = size or tuple(dims[2:])
    x = image(channels, *size)
    ref = ort_run(data, x)
    assert rel_err(graph_eval(g, x), ref) < rel
    return g


def w(*shape, seed=0):
    return (np.random.default_rng(seed).standard_normal(shape) * 0.3).astype(np.float32)


def test_batchnorm_becomes_affine_and_folds(graph_eval):
    c = 4
    data = make_model(
        [oh.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
         oh.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["bn"], epsilon=1e-3, name="bn"),
         oh.make_node("Relu", ["bn"], ["y"], name="relu")],
        {"w": w(c, 3, 3, 3), "g": np.linspace(0.5, 1.5, c, dtype=np.float32),
         "b": np.linspace(-0.2, 0.2, c, dtype=np.float32), "m": np.linspace(-0.3, 0.1, c, dtype=np.float32),
         "v": np.linspace(0.3, 2.0, c, dtype=np.float32)})
    g = check(data, graph_eval)
    assert [type(n.op).__name__ for n in g.nodes] == ["Conv", "Affine", "Unary"]
    opt = optimize(g)
    assert [type(n.op).__name__ for n in opt.nodes] == ["Conv"] and opt.nodes[0].op.act == "relu"


@pytest.mark.parametrize("groups", [1, 2])
def test_batchnorm_after_conv_transpose_folds(groups):
    """ConvTranspose (w: cin x cout/groups x kh x kw) -> BN folds per output channel."""
    import hirestile

    cin, cout = 4, 6
    data = make_model(
        [oh.make_node("ConvTranspose", ["x", "w"], ["c"], strides=[2, 2], group=groups, name="up"),
         oh.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["y"], name="bn")],
        {"w": w(cin, cout // groups, 2, 2), "g": np.linspace(0.5, 1.5, cout, dtype=np.float32),
         "b": np.linspace(-0.2, 0.2, cout, dtype=np.float32), "m": np.linspace(-0.3, 0.1, cout, dtype=np.float32),
         "v": np.linspace(0.3, 2.0, cout, dtype=np.float32)}, shape=(1, cin, 9, 11))
    opt = optimize(load_onnx(data))
    assert [type(n.op).__name__ for n in opt.nodes] == ["ConvTranspose"]
    x = image(cin, 9, 11)
    assert rel_err(hirestile.predict(opt, x), ort_run(data, x)) <= REL


@pytest.mark.parametrize("mode,stride,k,size", [("SAME_UPPER", 2, 3, (16, 20)), ("SAME_LOWER", 1, 4, (11, 13)),
                                               ("VALID", 2, 3, (11, 13)), ("SAME_UPPER", 1, 2, (11, 13))])
def test_conv_auto_pad(mode, stride, k, size, graph_eval):
    data = make_model([oh.make_node("Conv", ["x", "w", "b"], ["y"], auto_pad=mode, strides=[stride, stride])],
                      {"w": w(5, 3, k, k), "b": w(5, seed=1)}, shape=(1, 3) + size)
    check(data, graph_eval)


def test_conv_groups_dilation_asymmetric_pads(graph_eval):
    data = make_model([oh.make_node("Conv", ["x", "w"], ["y"], group=2, dilations=[2, 1], pads=[0, 2, 3, 1],
                                    strides=[1, 2], kernel_shape=[3, 2])],
                      {"w": w(6, 2, 3, 2)}, shape=(1, 4, 13, 15))
    g = check(data, graph_eval, channels=4)
    (n,) = g.nodes
    assert n.op.groups == 2 and n.op.pads == (0, 2, 3, 1) and n.op.dilation == (2, 1) and n.op.cin == 4


@pytest.mark.parametrize("attrs", [
    dict(strides=[2, 2]),
    dict(strides=[2, 3], pads=[1, 0, 0, 1], output_padding=[1, 2], dilations=[1, 2]),
    dict(strides=[2, 2], output_shape=[25, 29]),
    dict(strides=[2, 2], auto_pad="SAME_UPPER"),
    dict(strides=[1, 1], group=2, pads=[1, 1, 1, 1]),
])
def test_conv_transpose(attrs, graph_eval):
    group = attrs.get("group", 1)
    data = make_model([oh.make_node("ConvTranspose", ["x", "w", "b"], ["y"], **attrs)],
                      {"w": w(4, 3 // group if group == 1 else 2, 3, 3), "b": w((3 if group == 1 else 4), seed=3)},
                      shape=(1, 4, 12, 14))
    check(data, graph_eval, channels=4)


@pytest.mark.parametrize("node", [
    oh.make_node("MaxPool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
    oh.make_node("MaxPool", ["x"], ["y"], kernel_shape=[3, 2], strides=[2, 2], ceil_mode=1),
    oh.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], dilations=[2, 2]),
    oh.make_node("AveragePool", ["x"], ["y"], kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1]),
    oh.make_node("AveragePool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
                 count_include_pad=1),
    oh.make_node("AveragePool", ["x"], ["y"], kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1),
    oh.make_node("AveragePool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER"),
], ids=["max_pad", "max_ceil", "max_dil", "avg_excl", "avg_incl", "avg_ceil", "avg_same"])
def test_pools(node, graph_eval):
    check(make_model([node], shape=(1, 3, 13, 15)), graph_eval)


def _resize(mode, coord, *, scales=None, sizes=None, nearest="floor", opset=17, axes=None, shape=(1, 3, 6, 7)):
    inits, ins = {}, ["x", ""]
    if scales is not None:
        inits["s"] = np.array(scales, np.float32)
        ins.append("s")
    else:
        ins += ["", "sz"]
        inits["sz"] = np.array(sizes, np.int64)
    kw = {} if axes is None else {"axes": axes}
    node = oh.make_node("Resize", ins, ["y"], mode=mode, coordinate_transformation_mode=coord,
                        nearest_mode=nearest, **kw)
    return make_model([node], inits, shape=shape, opset=opset)


@pytest.mark.parametrize("data", [
    _resize("linear", "half_pixel", scales=[1, 1, 2, 2]),
    _resize("linear", "pytorch_half_pixel", scales=[1, 1, 3, 1.5]),
    _resize("linear", "align_corners", sizes=[1, 3, 12, 14]),
    _resize("linear", "asymmetric", scales=[1, 1, 2, 4]),
    _resize("nearest", "asymmetric", scales=[1, 1, 2, 3], nearest="floor"),
    _resize("nearest", "half_pixel", scales=[1, 1, 3, 3], nearest="round_prefer_floor"),
    _resize("nearest", "half_pixel", sizes=[1, 3, 18, 21], nearest="round_prefer_ceil"),
    _resize("nearest", "align_corners", scales=[1, 1, 2, 2], nearest="ceil"),
    _resize("linear", "half_pixel", scales=[2, 3], axes=[2, 3], opset=18),
], ids=["bilinear_hp", "bilinear_pt", "bilinear_ac_sizes", "bilinear_asym", "nearest_floor", "nearest_rpf",
        "nearest_rpc_sizes", "nearest_ac_ceil", "axes_opset18"])
def test_resize(data, graph_eval):
    g = check(data, graph_eval)
    (n,) = g.nodes
    assert isinstance(n.op, G.Resize)


def test_resize_integer_sizes_become_scales_in_fixed_size_models():
    g = load_onnx(_resize("linear", "align_corners", sizes=[1, 3, 12, 14]))
    assert g.nodes[0].op.size is None and g.nodes[0].op.scale == (2.0, 2.0)
    g = load_onnx(_resize("linear", "half_pixel", sizes=[1, 3, 9, 14]))  # 1.5x: kept as a fixed size
    assert g.nodes[0].op.size == (9, 14)


def test_upsample_opset9(graph_eval):
    data = make_model([oh.make_node("Upsample", ["x", "s"], ["y"], mode="nearest")],
                      {"s": np.array([1, 1, 2, 3], np.float32)}, opset=9, ir=4)
    g = load_onnx(data)
    assert g.shapes((5, 6))[g.output] == (3, 10, 18)
    x = image(3, 12, 14)
    assert np.array_equal(graph_eval(g, x), np.repeat(np.repeat(x, 2, 1), 3, 2))


@pytest.mark.parametrize("mode,pads", [("reflect", [2, 1, 0, 3]), ("edge", [1, 0, 2, 2]),
                                       ("constant", [-1, 2, 3, -2])])
def test_pad_opset18_axes(mode, pads, graph_eval):
    data = make_model([oh.make_node("Pad", ["x", "p", "v", "a"], ["y"], mode=mode)],
                      {"p": np.array(pads, np.int64), "v": np.array(0.5, np.float32), "a": np.array([2, 3], np.int64)},
                      opset=18)
    g = check(data, graph_eval)
    assert g.nodes[0].op.pads == (pads[0], pads[1], pads[2], pads[3])


def test_pointwise_ops(graph_eval):
    nodes = [
        oh.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        oh.make_node("Clip", ["c", "lo"], ["a"]),                    # min only
        oh.make_node("LeakyRelu", ["c"], ["b"], alpha=0.2),
        oh.make_node("Elu", ["c"], ["e"], alpha=0.7),
        oh.make_node("HardSigmoid", ["c"], ["hs"], alpha=0.3, beta=0.4),
        oh.make_node("Sum", ["a", "b", "e"], ["s1"]),
        oh.make_node("Max", ["s1", "hs", "c"], ["m1"]),
        oh.make_node("Sigmoid", ["m1"], ["sg"]),
        oh.make_node("Div", ["two", "sg"], ["d"]),                    # constant on the left
        oh.make_node("Pow", ["d", "half"], ["p"]),
        oh.make_node("Sub", ["pc", "p"], ["q"]),                      # per-channel constant (1, C, 1, 1)
        oh.make_node("PRelu", ["q", "slope"], ["pr"]),
        oh.make_node("Erf", ["pr"], ["er"]),
        oh.make_node("Softplus", ["er"], ["sp"]),
        oh.make_node("Tanh", ["sp"], ["th"]),
        oh.make_node("HardSwish", ["th"], ["hw"]),
        oh.make_node("Mul", ["hw", "c3"], ["mc"]),                    # per-channel constant (C, 1, 1)
        oh.make_node("Abs", ["mc"], ["ab"]),
        oh.make_node("Sqrt", ["ab"], ["sq"]),
        oh.make_node("Neg", ["sq"], ["ng"]),
        oh.make_node("Exp", ["ng"], ["ex"]),
        oh.make_node("Identity", ["ex"], ["id"]),
        oh.make_node("Dropout", ["id"], ["dr"]),
        oh.make_node("Cast", ["dr"], ["ca"], to=TP.FLOAT),
        oh.make_node("Softmax", ["ca"], ["sm"], axis=-3),
        oh.make_node("LogSoftmax", ["sm"], ["y"], axis=1),
    ]
    inits = {"w": w(4, 3, 3, 3), "lo": np.array(-0.1, np.float32), "two": np.array(2.0, np.float32),
             "half": np.array([0.5], np.float32), "pc": w(1, 4, 1, 1, seed=4),
             "slope": np.array([0.1, 0.2, 0.3, 0.4], np.float32).reshape(4, 1, 1), "c3": w(4, 1, 1, seed=5)}
    g = check(make_model(nodes, inits), graph_eval)
    assert {"Conv", "Unary", "Binary", "PRelu", "Softmax"} == kinds(g)


@pytest.mark.parametrize("approx", ["none", "tanh"])
def test_gelu_opset20(approx, graph_eval):
    g = check(make_model([oh.make_node("Gelu", ["x"], ["y"], approximate=approx)], opset=20), graph_eval)
    assert g.nodes[0].op.fn == ("gelu" if approx == "none" else "gelu_tanh")


def test_instance_and_group_norm(graph_eval):
    c = 6
    nodes = [oh.make_node("InstanceNormalization", ["x", "s", "b"], ["i"], epsilon=1e-4),
             oh.make_node("GroupNormalization", ["i", "gs", "gb"], ["y"], num_groups=3, epsilon=1e-5)]
    inits = {"s": w(c) + 1, "b": w(c, seed=1), "gs": w(c, seed=2) + 1, "gb": w(c, seed=3)}
    g = check(make_model(nodes, inits, shape=(1, c, 9, 11), opset=21), graph_eval, channels=c)
    assert [n.op.groups for n in g.nodes] == [6, 3]


def test_global_pools(graph_eval):
    nodes = [oh.make_node("GlobalAveragePool", ["x"], ["g"]),
             oh.make_node("ReduceMean", ["x", "ax"], ["r"], keepdims=1),
             oh.make_node("Add", ["g", "r"], ["s"]),
             oh.make_node("Mul", ["x", "s"], ["y"])]
    g = check(make_model(nodes, {"ax": np.array([-1, -2], np.int64)}, opset=18), graph_eval)
    assert sum(isinstance(n.op, G.GlobalPool) for n in g.nodes) == 2


def test_split_slice_concat_channels(graph_eval):
    nodes = [oh.make_node("Split", ["x", "sp"], ["a", "b"], axis=1),
             oh.make_node("Slice", ["x", "s0", "s1", "ax"], ["c"]),
             oh.make_node("Concat", ["b", "a", "c"], ["y"], axis=-3)]
    inits = {"sp": np.array([1, 2], np.int64), "s0": np.array([1, 2, -3], np.int64),
             "s1": np.array([3, 11, 2**62], np.int64), "ax": np.array([1, 2, 3], np.int64)}
    data = make_model(nodes, inits, shape=(1, 3, 12, 14))
    with pytest.raises(Exception):  # ORT refuses the size mismatch; so does the importer
        load_onnx(data)
    nodes[1] = oh.make_node("Slice", ["x", "s0", "s1", "ax"], ["c"])
    inits.update(s0=np.array([1], np.int64), s1=np.array([3], np.int64), ax=np.array([1], np.int64))
    g = check(make_model(nodes, inits), graph_eval)
    assert kinds(g) == {"Slice", "Concat"}


def test_size_dependent_margin_crop(graph_eval):
    """x[..., 2:H-3, 1:W-1] computed from Shape(x): a constant-margin Slice at any size."""
    nodes = [oh.make_node("Shape", ["x"], ["sh"]),
             oh.make_node("Gather", ["sh", "i23"], ["hw"]),
             oh.make_node("Sub", ["hw", "m"], ["ends"]),
             oh.make_node("Slice", ["x", "starts", "ends", "axes"], ["y"])]
    inits = {"i23": np.array([2, 3], np.int64), "m": np.array([3, 1], np.int64),
             "starts": np.array([2, 1], np.int64), "axes": np.array([2, 3], np.int64)}
    data = make_model(nodes, inits, shape=None, inputs=[oh.make_tensor_value_info("x", TP.FLOAT, [1, 3, "h", "w"])])
    g = load_onnx(data)
    (n,) = g.nodes
    assert isinstance(n.op, G.Slice) and n.op.starts[1:] == (2, 1) and n.op.stops[1:] == (-3, -1)
    for size in ((12, 14), (31, 7)):
        x = image(3, *size)
        assert np.array_equal(graph_eval(g, x), ort_run(data, x))


def test_size_dependent_centre_crop_to_other_tensor(graph_eval):
    """crop a to b's size around the centre, b a strided conv of a: CropLike(a, b)."""
    nodes = [oh.make_node("Conv", ["x", "w"], ["b"], strides=[2, 2]),
             oh.make_node("Shape", ["x"], ["sa"]), oh.make_node("Shape", ["b"], ["sb"]),
             oh.make_node("Slice", ["sa", "two", "four"], ["ha"]), oh.make_node("Slice", ["sb", "two", "four"], ["hb"]),
             oh.make_node("Sub", ["ha", "hb"], ["d"]), oh.make_node("Div", ["d", "two1"], ["st"]),
             oh.make_node("Add", ["st", "hb"], ["en"]),
             oh.make_node("Slice", ["x", "st", "en", "axes"], ["c"]),
             oh.make_node("Concat", ["c", "b"], ["y"], axis=1)]
    inits = {"w": w(2, 3, 3, 3), "two": np.array([2], np.int64), "four": np.array([4], np.int64),
             "two1": np.array([2], np.int64), "axes": np.array([2, 3], np.int64)}
    data = make_model(nodes, inits, inputs=[oh.make_tensor_value_info("x", TP.FLOAT, [1, 3, "h", "w"])])
    g = load_onnx(data)
    crop = [n for n in g.nodes if isinstance(n.op, G.CropLike)]
    assert len(crop) == 1 and crop[0].inputs == ("x", "b") and crop[0].op.anchor == "centre"
    for size in ((12, 14), (17, 23)):
        x = image(3, *size)
        assert rel_err(graph_eval(g, x), ort_run(data, x)) < REL


def test_size_dependent_crop_refused_in_dynamic_model():
    """x[..., :H//2]: no size-independent form; a dynamic model is refused with the node named."""
    nodes = [oh.make_node("Shape", ["x"], ["sh"]), oh.make_node("Gather", ["sh", "i2"], ["h"]),
             oh.make_node("Div", ["h", "two"], ["e"]),
             oh.make_node("Slice", ["x", "zero", "e", "ax"], ["y"], name="half_crop")]
    inits = {"i2": np.array([2], np.int64), "two": np.array([2], np.int64), "zero": np.array([0], np.int64),
             "ax": np.array([2], np.int64)}
    data = make_model(nodes, inits, inputs=[oh.make_tensor_value_info("x", TP.FLOAT, [1, 3, "h", "w"])])
    with pytest.raises(ModelError, match="half_crop"):
        load_onnx(data)
    fixed = make_model(nodes, inits, shape=(1, 3, 12, 14))  # a fixed-size model freezes it at its size
    g = load_onnx(fixed)
    assert g.shapes((12, 14))[g.output] == (3, 6, 14)


def test_dynamic_batch_and_names_uniquified():
    nodes = [oh.make_node("Relu", ["x"], ["a"], name="act"), oh.make_node("Sigmoid", ["a"], ["b"], name="act"),
             oh.make_node("Tanh", ["b"], ["y"])]
    data = make_model(nodes, inputs=[oh.make_tensor_value_info("x", TP.FLOAT, ["n", 2, "h", "w"])])
    g = load_onnx(data)
    assert [n.name for n in g.nodes] == ["act", "act_1", "y"]
    assert g.in_channels == 2


def test_several_outputs_pick_one():
    nodes = [oh.make_node("Relu", ["x"], ["a"]), oh.make_node("Sigmoid", ["x"], ["b"])]
    data = make_model(nodes, outputs=("a", "b"))
    with pytest.raises(ModelError, match="2 outputs.*output="):
        load_onnx(data)
    g = load_onnx(data, output="b")
    assert [n.op.fn for n in g.nodes] == ["sigmoid"]


def test_path_and_model_proto(tmp_path):
    data = make_model([oh.make_node("Relu", ["x"], ["y"])])
    p = tmp_path / "m.onnx"
    p.write_bytes(data)
    assert load_onnx(p).nodes[0].op.fn == "relu"
    assert load_onnx(str(p)).nodes[0].op.fn == "relu"
    assert load_onnx(onnx.load_from_string(data)).nodes[0].op.fn == "relu"


# ----------------------------------------------------------------------------- errors


def refuse(data, match=None):
    """load_onnx must raise a one-line ModelError after a small amount of work that does not
    grow with the absurd sizes in the file: few function calls (no loop over them; about
    150 today) and no big allocation."""
    calls = 0

    def count(frame, event, arg):
        nonlocal calls
        calls += event in ("call", "c_call")

    tracemalloc.start()
    sys.setprofile(count)
    try:
        with pytest.raises(ModelError) as e:
            load_onnx(data)
    finally:
        sys.setprofile(None)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert calls < 10_000, calls
    assert peak < 64 << 20, peak
    msg = str(e.value)
    assert "\n" not in msg and msg
    if match:
        assert all(s in msg for s in ([match] if isinstance(match, str) else match)), msg
    return msg


def test_unsupported_ops_listed_in_one_error():
    nodes = [oh.make_node("Relu", ["x"], ["a"], name="r"),
             oh.make_node("LRN", ["a"], ["b"], size=3, name="lrn1"),
             oh.make_node("TopK", ["b", "k"], ["c", "ci"], name="topk"),
             oh.make_node("LRN", ["c"], ["d"], size=3, name="lrn2"),
             oh.make_node("Fancy", ["d"], ["y"], domain="com.example", name="fancy")]
    data = make_model(nodes, {"k": np.array([1], np.int64)})
    msg = refuse(data, ["LRN ('lrn1', 'lrn2')", "TopK ('topk')", "com.example::Fancy ('fancy')"])
    assert msg.count("unsupported") == 1


def test_ops_unsupported_on_images_listed_together():
    nodes = [oh.make_node("Transpose", ["x"], ["t"], perm=[0, 1, 3, 2], name="tr"),
             oh.make_node("Reshape", ["x", "shape"], ["r"], name="flat"),
             oh.make_node("Add", ["t", "r"], ["y"])]
    data = make_model(nodes, {"shape": np.array([1, -1], np.int64)}, shape=(1, 3, 12, 12))
    refuse(data, ["Transpose ('tr'", "Reshape ('flat'"])


def test_cycle_refused():
    nodes = [oh.make_node("Add", ["x", "b"], ["a"], name="n1"), oh.make_node("Relu", ["a"], ["b"], name="n2"),
             oh.make_node("Relu", ["b"], ["y"], name="n3")]
    refuse(make_model(nodes), "cycle")


def test_missing_initializer_refused():
    refuse(make_model([oh.make_node("Conv", ["x", "weights"], ["y"], name="conv")]), ["conv", "weights"])


def test_absurd_initializer_refused():
    t = TP()
    t.name, t.data_type = "w", TP.FLOAT
    t.dims.extend([1_000_000, 1_000_000, 3, 3])
    t.raw_data = b"\0" * 64
    g = oh.make_graph([oh.make_node("Conv", ["x", "w"], ["y"])], "g",
                      [oh.make_tensor_value_info("x", TP.FLOAT, [1, 3, 8, 8])],
                      [oh.make_tensor_value_info("y", TP.FLOAT, None)], initializer=[t])
    m = oh.make_model(g, opset_imports=[oh.make_opsetid("", 17)])
    refuse(m.SerializeToString(), "elements")
    t.dims[:] = [4, 3, 3, 3]  # plausible dims, too little data
    m.graph.initializer[0].CopyFrom(t)
    refuse(m.SerializeToString(), "truncated or corrupt")


def test_absurd_folded_tensor_refused():
    nodes = [oh.make_node("ConstantOfShape", ["shape"], ["big"]),
             oh.make_node("Add", ["x", "big"], ["y"])]
    refuse(make_model(nodes, {"shape": np.array([100000, 100000, 1000], np.int64)}), "absurd")


@pytest.mark.parametrize("arg,value", [("sz", [1, 3, 10**9, 10**9]), ("s", [1, 1, 1e7, 1e7])])
def test_absurd_resize_refused(arg, value):
    inits = {arg: np.array(value, np.int64 if arg == "sz" else np.float32)}
    ins = ["x", "", "s"] if arg == "s" else ["x", "", "", "sz"]
    refuse(make_model([oh.make_node("Resize", ins, ["y"])], inits), "absurd")


def test_absurd_reach_with_sane_output_shape_refused():
    """Dilation 1e8 with pads 1e8 keeps a 12 x 14 output but would ask for a 1e8-pixel halo."""
    big = 10**8
    conv = oh.make_node("Conv", ["x", "w"], ["y"], dilations=[big, big], pads=[big] * 4, name="wide")
    refuse(make_model([conv], {"w": w(2, 3, 3, 3)}), ["'wide'", "absurd kernel, dilation or padding"])


def test_average_pool_with_dilations_is_unsupported():
    pool = oh.make_node("AveragePool", ["x"], ["y"], kernel_shape=[3, 3], dilations=[2, 2], name="dap")
    refuse(make_model([pool], opset=19), ["AveragePool ('dap'", "dilations"])
    with pytest.raises(ValueError, match="dilation"):
        G.Pool(mode="avg", kernel=(3, 3), stride=(1, 1), dilation=(2, 2))


def test_external_data_refused():
    t = nh.from_array(w(2, 3, 1, 1), "w")
    t.ClearField("raw_data")
    t.data_location = TP.EXTERNAL
    e = t.external_data.add()
    e.key, e.value = "location", "weights.bin"
    g = oh.make_graph([oh.make_node("Conv", ["x", "w"], ["y"])], "g",
                      [oh.make_tensor_value_info("x", TP.FLOAT, [1, 3, 8, 8])],
                      [oh.make_tensor_value_info("y", TP.FLOAT, None)], initializer=[t])
    refuse(oh.make_model(g, opset_imports=[oh.make_opsetid("", 17)]).SerializeToString(), "external")


def test_truncated_and_garbage_bytes_refused(reference_onnx):
    _, data = reference_onnx("unet_valid", dynamic=True)
    cuts = sorted({1, 2, 7, 16, len(data) - 1, len(data) // 2, *range(0, len(data), max(len(data) // 40, 1))} - {0})
    for n in cuts:
        refuse(data[:n])
    refuse(b"")
    refuse(b"not an onnx file at all\n" * 10)
    refuse(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    refuse(bytes(data[:100]) + b"\xff" * 100)


def test_bad_inputs_refused():
    relu = [oh.make_node("Relu", ["x"], ["y"])]
    assert load_onnx(make_model(relu, shape=(4, 3, 8, 8))).nodes[0].op.fn == "relu"  # run per image
    refuse(make_model(relu, shape=(0, 3, 8, 8)), "batch size of 0")
    mix = [oh.make_node("Transpose", ["x"], ["t"], perm=[1, 0, 2, 3], name="swap"), oh.make_node("Relu", ["t"], ["y"])]
    refuse(make_model(mix, shape=(4, 3, 8, 8)), ["Transpose ('swap'", "mixes batch elements"])
    refuse(make_model(relu, shape=(3, 8, 8)), "rank 3")
    two = [oh.make_node("Add", ["x", "z"], ["y"])]
    inputs = [oh.make_tensor_value_info(n, TP.FLOAT, [1, 3, 8, 8]) for n in ("x", "z")]
    refuse(make_model(two, inputs=inputs), ["2 inputs", "'x'", "'z'"])
    refuse(make_model(relu, inputs=[oh.make_tensor_value_info("x", TP.INT64, [1, 3, 8, 8])]), "float32")
    refuse(make_model(relu, shape=(1, 3, 10**12, 8)), "image side")
    refuse(make_model(relu, opset=5), "opset 5")


def test_other_malformed_graphs_refused(tmp_path):
    refuse(make_model([oh.make_node("Relu", ["x"], ["y"]), oh.make_node("Sigmoid", ["x"], ["y"])]), "twice")
    refuse(make_model([oh.make_node("Relu", ["x"], ["a"])]), "produced by no node")
    refuse(make_model([oh.make_node("Relu", ["c"], ["y"]), oh.make_node("Constant", [], ["c"],
                                                                           value=nh.from_array(w(1, 3, 2, 2)))]),
           "does not depend on the input")
    with pytest.raises(ModelError, match="no such"):
        load_onnx(tmp_path / "missing.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_text("hello")
    with pytest.raises(ModelError, match="bad.onnx"):
        load_onnx(bad)


def test_shape_errors_name_the_node():
    data = make_model([oh.make_node("Conv", ["x", "w"], ["y"], name="big_conv")], {"w": w(2, 3, 9, 9)},
                      shape=(1, 3, 5, 5))
    refuse(data, ["big_conv", "5x5"])


def test_from_torch():
    torch = pytest.importorskip("torch")
    from hirestile.torch_import import from_torch

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"), torch.nn.ReLU()).eval()
    g = from_torch(net, torch.zeros(1, 3, 16, 16))
    assert [type(n.op).__name__ for n in g.nodes] == ["Conv", "Unary"]
    assert g.nodes[0].op.pad_mode == "reflect"
    with pytest.raises(ModelError, match="nn.Module"):
        from_torch(lambda v: v, torch.zeros(1, 3, 8, 8))


def test_corrupted_bytes_never_crash(reference_onnx):
    """Random byte flips in a real export: a ModelError or a model, never another exception."""
    _, data = reference_onnx("unet_valid", dynamic=True)
    rng = np.random.default_rng(0)
    for _ in range(300):
        b = bytearray(data)
        for i in rng.integers(0, len(b), rng.integers(1, 4)):
            b[i] = rng.integers(0, 256)
        try:
            load_onnx(bytes(b))
        except ModelError as e:
            assert "\n" not in str(e)
