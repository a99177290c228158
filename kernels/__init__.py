"""Numba kernels on plain arrays (docs/architecture.md, layer 3).

Every kernel here works on float32 arrays in **HWC layout** ``(h, w, C)``
(channels last, C-contiguous) and knows nothing of graphs, regions or files.
Spatial kernels are "valid" kernels: the caller (the executor) hands them an
input *window* that already holds the op's padding values (zeros, reflected or
replicated pixels, -inf) at the positions that fall outside the feature map,
so a kernel never needs global coordinates.

Determinism across regions (docs/architecture.md, section 1): the reduction order for one
output element never depends on the window's size or origin. Routes that work
on output tiles (Winograd) state their tile step through :func:`conv_tile`; the
executor then asks only for output regions whose global origin and size are
multiples of it.

Modules
-------
conv       conv2d (direct and fast routes), conv_tile
pool       max_pool2d, avg_pool2d
resize     resize_nearest, resize_bilinear
pointwise  unary activations, prelu, binary ops, channel affine, softmax
norm       whole-image ops: global average pool, instance / group norm

Their slow, obvious NumPy twins live in the tests (tests/test_kernels_*.py).
"""
