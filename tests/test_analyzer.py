"""Receptive-field analysis against values known from the literature and from first principles."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import hirestile
from hirestile import executor
from hirestile.errors import NotTileableError
from hirestile.graph import INPUT, Conv, GlobalPool, Graph, Node, Pool, Binary
from hirestile.models.unet import unet


def _conv(name, src, cin, cout, k=3, s=1, p=1, d=1):
    w = np.zeros((cout, cin, k, k), np.float32)
    return Node(name, Conv(kernel=(k, k), stride=(s, s), dilation=(d, d), pads=(p,) * 4, cin=cin, cout=cout),
                (src,), {"w": w, "b": np.zeros(cout, np.float32)})


def vgg16_to_pool5() -> Graph:
    nodes, src, c = [], INPUT, 3
    for stage, (reps, width) in enumerate([(2, 4), (2, 4), (3, 4), (3, 4), (3, 4)]):
        for r in range(reps):
            nodes.append(_conv(f"conv{stage}_{r}", src, c, width))
            src, c = f"conv{stage}_{r}", width
        nodes.append(Node(f"pool{stage + 1}", Pool(mode="max", kernel=(2, 2), stride=(2, 2)), (src,)))
        src = f"pool{stage + 1}"
    return Graph(nodes=tuple(nodes), output=src, in_channels=3)


def test_original_unet_572_to_388_with_92_px_per_side():
    rep = hirestile.analyze(unet(padding="valid", base=2, depth=4, bn=False), (572, 572))
    assert rep.output_shape[1:] == (388, 388)
    assert rep.input_window(((0, 388), (0, 388))) == ((0, 572), (0, 572))
    assert rep.halo_of(((0, 388), (0, 388))) == (92, 92, 92, 92)
    assert rep.stride == (16, 16)


def test_vgg16_receptive_field_212_at_pool5():
    rep = hirestile.analyze(vgg16_to_pool5(), (512, 512))
    assert rep.receptive_field == (212, 212)
    assert rep.stride == (32, 32)


def test_same_unet_halo_symmetric_and_tile_window():
    rep = hirestile.analyze(unet(base=2, depth=4), (512, 512))
    top, left, bottom, right = rep.halo
    assert top == left and bottom == right
    (y0, y1), (x0, x1) = rep.input_window(((128, 192), (128, 192)))
    assert y0 <= 128 - top and y1 >= 192 + bottom
    # border tiles of the bare network read outside the image (zero padding, reproduced
    # by the executor); with the reflect pad-to contract they stay inside it
    assert hirestile.analyze(unet(base=2, depth=4).graph, (512, 512)).input_window(((0, 16), (0, 16)))[0][0] < 0
    assert rep.input_window(((0, 16), (0, 16)))[0][0] == 0


def test_single_conv_rules_by_hand():
    g = Graph(nodes=(_conv("c", INPUT, 1, 1, k=5, s=2, p=2, d=3),), output="c", in_channels=1)
    rep = hirestile.analyze(g, (100, 100))
    # output o reads 2*o - 2 + 3*j, j in [0, 5)
    assert rep.input_window(((3, 7), (0, 1))) == ((4, 2 * 6 - 2 + 12 + 1), (-2, 11))
    assert rep.receptive_field == (13, 13)
    assert rep.flops_per_pixel == 2 * 25


@settings(max_examples=40, deadline=None)
@given(k=st.integers(1, 7), s=st.integers(1, 3), d=st.integers(1, 3), p=st.integers(0, 4),
       o0=st.integers(0, 30), n=st.integers(1, 10))
def test_window_matches_brute_force(k, s, d, p, o0, n):
    """The region rule equals the set of taps an output interval touches."""
    g = Graph(nodes=(_conv("c", INPUT, 1, 1, k=k, s=s, p=p, d=d),), output="c", in_channels=1)
    rep = hirestile.analyze(g, (200, 200))
    win = rep.input_window(((o0, o0 + n), (0, 1)))[0]
    taps = [s * o - p + d * j for o in range(o0, o0 + n) for j in range(k)]
    assert win == (min(taps), max(taps) + 1)


def _gap_net():
    nodes = (_conv("c1", INPUT, 2, 3), Node("gap", GlobalPool(), ("c1",)),
             Node("scale", Binary(fn="mul"), ("c1", "gap")))
    return Graph(nodes=nodes, output="scale", in_channels=2)


def test_whole_image_op_makes_model_not_tileable():
    rep = hirestile.analyze(_gap_net(), (20, 20))
    assert rep.tileable is False
    assert "'gap'" in rep.reason and "GlobalAveragePool" in rep.reason and "whole image" in rep.reason
    x = np.random.default_rng(0).random((2, 20, 20), np.float32)
    with pytest.raises(NotTileableError, match="gap"):
        hirestile.predict(_gap_net(), x, tile=8)
    y = hirestile.predict(_gap_net(), x)  # full-frame still runs
    assert y.shape == (3, 20, 20) and np.isfinite(y).all()


def test_plan_numbers_for_unet():
    rep = hirestile.analyze(unet(base=8, depth=3), (512, 512))
    assert rep.tileable and rep.reason == ""
    assert rep.redundancy(32) > rep.redundancy(128) > 1.0
    slab = [executor.region_memory(rep, *executor.regions_of(rep, ((192, 192 + t), (192, 192 + t)))) for t in (32, 128)]
    assert slab[1] > slab[0] > 0
    assert rep.flops_per_pixel > 0
    assert "halo" in rep.summary()


def test_node_table_sums_to_flops_per_pixel():
    rep = hirestile.analyze(unet(base=4, depth=2), (64, 64))
    table = rep.node_table()
    assert sum(r.flops for r in table) == pytest.approx(rep.flops_per_pixel * 64 * 64)
    conv = next(r for r in table if r.name == "enc.0.conv1")
    assert conv.op == "Conv" and conv.shape == (4, 64, 64) and conv.bytes == 4 * 4 * 64 * 64
    assert conv.flops == 2 * 9 * 3 * 4 * 64 * 64
    tile = rep.node_table(((0, 16), (0, 16)))
    assert 0 < sum(r.flops for r in tile) < sum(r.flops for r in table)


def test_kernel_alignment_is_not_counted_as_halo():
    """A 16->16 3x3 conv runs on the Winograd route (2x2 tile grid): the executor reads one
    extra row/col at odd edges, but halo and receptive field are the network's own."""
    rng = np.random.default_rng(0)
    node = Node("c", Conv(kernel=(3, 3), pads=(1, 1, 1, 1), cin=16, cout=16), (INPUT,),
                {"w": rng.standard_normal((16, 16, 3, 3)).astype(np.float32), "b": np.zeros(16, np.float32)})
    rep = hirestile.analyze(Graph(nodes=(node,), output="c", in_channels=16), (40, 40))
    assert rep.halo == (1, 1, 1, 1) and rep.receptive_field == (3, 3)
    assert rep.input_window(((5, 6), (5, 6))) == ((4, 7), (4, 7))
    win = rep.input_window(((5, 6), (5, 6)), aligned=True)
    assert win[0][0] <= 4 and win[0][1] >= 7
    x = rng.standard_normal((16, 40, 40)).astype(np.float32)
    assert np.array_equal(hirestile.predict(rep.graph, x, tile=5), hirestile.predict(rep.graph, x))


def test_halo_and_receptive_field_do_not_shrink_on_small_images():
    """Borders clip every window of a small image; the report still gives the network's own
    halo and receptive field (measured on a larger image of the same size modulo the stride)."""
    m = unet(in_channels=1, classes=2, base=2, depth=4)
    big = hirestile.analyze(m, (1024, 1024))
    assert big.halo[0] > 32 and big.receptive_field[0] > 64
    for hw in ((16, 16), (64, 80), (48, 1024)):
        small = hirestile.analyze(m, hw)
        assert (small.halo, small.receptive_field) == (big.halo, big.receptive_field), hw
