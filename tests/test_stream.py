"""The streaming executor (issue 12): bands moving down column strips give the full-frame bits.

Every network of the exactness suite (tests/test_exactness.py), any image size, band height
and strip width (hypothesis, odd and prime sizes included), against the full-frame run.
"""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import hirestile
from hirestile import executor
from hirestile.bands import Stream
from hirestile.models.unet import unet
from hirestile.tiling import column_strips, grid_tiles
from test_exactness import NETS, _net, draw_case


@pytest.mark.parametrize("name", sorted(NETS))
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_streamed_equals_full_frame(name, data):
    """Bands of the drawn tile height down strips of the drawn tile width."""
    m, x, full, tile, origin = draw_case(name, data)
    assert np.array_equal(full, hirestile.predict(m, x, tile=tile, tile_origin=origin, stream=True))


@pytest.mark.parametrize("name, h, w, tile, origin", [("unet_nearest", 49, 49, (33, 1), (1, 0))])
def test_streamed_cases_hypothesis_found(name, h, w, tile, origin):
    """Kept from test_streamed_equals_full_frame's finds: strips one column wide, where a
    resident buffer's columns are padded otherwise from one band to the next, so its kept
    rows move to the new layout through a copy (Arena.resident)."""
    m = _net(name)
    x = np.random.default_rng(h * 100 + w).standard_normal((m.graph.in_channels, h, w)).astype(np.float32)
    assert np.array_equal(hirestile.predict(m, x), hirestile.predict(m, x, tile=tile, tile_origin=origin, stream=True))


def _flops_counter(monkeypatch):
    """Output pixels each conv computes, by patching the executor's conv runner."""
    counts: dict[str, int] = {}
    real = executor.RUNNERS[executor.Conv]

    def counting(node, bufs, comp, shapes, wts, **kw):
        (a, b), (c, d) = comp
        counts[node.name] = counts.get(node.name, 0) + (b - a) * (d - c)
        return real(node, bufs, comp, shapes, wts, **kw)
    monkeypatch.setitem(executor.RUNNERS, executor.Conv, counting)
    return counts


def test_each_row_is_computed_once_per_strip(monkeypatch):
    """Down one strip, every conv computes each of its rows once: the work equals one
    full-frame pass of that strip (up to the kernel step's alignment), where overlap tiles
    recompute every tile's halo."""
    m = unet(in_channels=1, classes=2, base=4, depth=3)
    x = np.random.default_rng(1).random((1, 96, 40), np.float32)
    rep = m.analyze((96, 40))
    tiles = grid_tiles(rep, (16, 40))
    counts = _flops_counter(monkeypatch)
    s = Stream(rep)
    for t in tiles:
        s.run(x[(slice(None), *t.read.slices)], t.read.origin, t.write)
    streamed, counts = dict(counts), _flops_counter(monkeypatch)
    for t in tiles:
        executor.run_region(rep, x[(slice(None), *t.read.slices)], t.read.origin, t.write)
    tiled, counts = dict(counts), _flops_counter(monkeypatch)
    executor.run_full(rep, x)
    full = dict(counts)
    assert set(streamed) == set(full)
    for name in full:
        assert streamed[name] <= full[name] + 2 * 40, name       # once, plus alignment rows
    assert sum(tiled.values()) > 1.5 * sum(streamed.values())


def test_line_buffers_hold_a_halo_not_the_image():
    """Between bands a stream keeps only the rows the next band needs again: their height does
    not grow with the image height."""
    m = unet(in_channels=1, classes=2, base=4, depth=3)
    held = []
    for h in (256, 1024):
        x = np.random.default_rng(2).random((1, h, 48), np.float32)
        rep = m.analyze((h, 48))
        s = Stream(rep)
        peak = 0
        for t in column_strips(grid_tiles(rep, (32, 48)))[0]:
            s.run(x[(slice(None), *t.read.slices)], t.read.origin, t.write)
            peak = max(peak, s.nbytes)
            # never views of the band's buffers (the arena slab): those are overwritten
            assert not any(np.shares_memory(b.data, s.arena.slab) for b in s.lines.values())
            # a resident node's stay in place, in its own memory; the others are copies
            assert s.resident and all(np.shares_memory(s.lines[n].data, s.arena.residents[n])
                                      for n in s.resident if n in s.lines)
            copies = [b.data for n, b in s.lines.items() if n not in s.resident]
            # nor of each other (each node's line buffer reuses only its own earlier memory)
            datas = [b.data for b in s.lines.values()]
            # on 64-byte lines, like the slab (executor.aligned_empty): vectors never span two
            assert s.arena.slab.ctypes.data % 64 == 0 and all(d.ctypes.data % 64 == 0 for d in copies)
            assert all(a.ctypes.data % 64 == 0 for a in s.arena.residents.values())
            assert not any(np.shares_memory(a, b) for i, a in enumerate(datas) for b in datas[:i])
        assert s.nbytes == 0                    # the strip's last band keeps nothing
        held.append(peak)
    assert 0 < held[0] == held[1]


def test_a_stream_given_any_regions_stays_exact():
    """Regions out of order, overlapping, or from another strip are computed afresh, never
    from stale rows."""
    m = unet(in_channels=1, classes=2, base=4, depth=2)
    x = np.random.default_rng(3).random((1, 61, 53), np.float32)
    rep = m.analyze((61, 53))
    full = executor.run_full(rep, x)
    s = Stream(rep)
    for reg in [((0, 20), (0, 30)), ((20, 35), (0, 30)), ((10, 25), (0, 30)), ((25, 61), (5, 53)),
                ((0, 7), (0, 53)), ((40, 61), (0, 30))]:
        (a, b), (c, d) = rep.input_window(reg, aligned=True)
        a, b, c, d = max(a, 0), min(b, 61), max(c, 0), min(d, 53)
        got = s.run(x[:, a:b, c:d], (a, c), reg)
        assert np.array_equal(got, full[:, reg[0][0]:reg[0][1], reg[1][0]:reg[1][1]]), reg


# ---- the command line: plan shows the mapping, --memory bounds it ------------------------------
def test_plan_shows_the_streamed_mapping_within_the_budget():
    from clihelp import assert_one_line_error, cli

    r = cli("plan", "--model", "unet", "--image", "4096x4096", "--memory", "1GB", "--stream")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "streamed: bands down column strips" in out and "stages of one band" in out
    assert "memory budget: 1,024 MiB (--memory)" in out and "does not fit" not in out
    peak = int(out.split("expected peak memory: ")[1].split(" MiB")[0].replace(",", ""))
    assert 0 < peak <= 1024 * 0.98 and "plans fill up to 1,004 MiB" in out
    again = int(out.split("a strip restarting mid-image holds up to ")[1].split(" MiB")[0].replace(",", ""))
    assert again >= peak and ("(fits)" in out) == (again <= 1004)
    assert "queued windows (uint8 as stored)" in out
    r = cli("plan", "--model", "unet", "--image", "4096x4096", "--memory", "1GB", "--stream", "--dtype", "float32")
    assert r.returncode == 0 and "queued windows (float32 as stored)" in r.stdout
    def tile(text):
        return next(line for line in text.splitlines() if line.startswith("tile ")).split()[1]

    wider = int(r.stdout.split("expected peak memory: ")[1].split(" MiB")[0].replace(",", ""))
    assert wider > peak or tile(r.stdout) != tile(out)     # float32 windows take more, or another tile is chosen
    stage_rows = [line for line in out.splitlines() if line.startswith("  enc.") or line.startswith("  dec.")]
    assert len(stage_rows) >= 8 and all(len(line.split()) >= 7 for line in stage_rows)
    for line in stage_rows:        # name, op (and a note), then C, rows, line rows, line MiB, GFLOP
        float(line.split()[-1]), float(line.split()[-2]), int(line.split()[-3]), int(line.split()[-4])
    assert "(resident: kept in place)" in next(line for line in stage_rows if line.startswith("  enc.0.conv2 "))
    r = cli("plan", "--model", "unet", "--image", "2048x2048", "--estimate")
    assert r.returncode == 0, r.stderr
    took, rate = r.stdout.split("estimated time: ")[1].split(" of compute at ")
    assert float(took.split()[0].replace(",", "")) > 0 and took.split()[1] in ("s", "min")
    assert float(rate.split(" GFLOP/s")[0].replace(",", "")) > 0
    r = cli("plan", "--model", "unet", "--image", "4096x4096")                 # overlap tiles by default
    assert r.returncode == 0 and "overlap tiles, each with its own halo" in r.stdout and "stages" not in r.stdout
    assert_one_line_error(cli("plan", "--model", "unet", "--memory", "lots"), 2, "not a memory size")


def test_weights_are_packed_before_the_slab_and_counted():
    """pack_weights packs every conv's weights on a small region (a run calls it before its
    slab exists); a real region then packs nothing more; weight_bytes counts the model's own
    parameters, the prepared copies (which the optimized graph's views share) and the packed
    forms."""
    from hirestile.kernels import conv

    m = unet(in_channels=3, classes=2, base=16, depth=2, seed=9)
    rep = m.analyze((200, 180))
    executor.pack_weights(rep)
    packed = {k: dict(v[1]) for k, v in conv._packed.items()}
    kinds = {n.name: type(n.op).__name__ for n in rep.graph.nodes}
    convs = [a["w"] for n, a in rep.weights.items() if kinds.get(n) == "Conv"]
    assert len(convs) >= 8 and all(id(w) in packed for w in convs)
    x = np.random.default_rng(9).random((3, 200, 180), np.float32)
    executor.run_region(rep, x, (0, 0), ((0, 200), (0, 180)))
    assert {k: dict(v[1]) for k, v in conv._packed.items()}.keys() == packed.keys()
    assert all(conv._packed[k][1].keys() == v.keys() for k, v in packed.items())
    own = sum(a.nbytes for n in m.graph.nodes for a in n.params.values())     # the model's (batch norms unfolded)
    prepared = sum(a.nbytes for arrays in rep.weights.values() for a in arrays.values())
    assert executor.weight_bytes(rep) > own + prepared > prepared


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 9), src=st.integers(0, 12), dst=st.integers(0, 12), row=st.integers(1, 40))
def test_moving_rows_within_a_buffer_equals_numpy(n, src, dst, row):
    """A resident buffer's kept rows move to the top (or anywhere) in chunks that never read
    what they write: the result is NumPy's copy through a temporary, overlaps included."""
    from hirestile.executor import _move_rows

    mem = np.random.default_rng(n * 1000 + src * 100 + dst * 10 + row).random(24 * row).astype(np.float32)
    want = mem.copy()
    want[dst * row:(dst + n) * row] = mem[src * row:(src + n) * row].copy()
    _move_rows(mem, src, dst, n, row)
    assert np.array_equal(mem, want)


def test_the_full_resolution_skip_is_resident_and_the_plan_counts_what_a_stream_holds():
    """A UNet's full-resolution skip keeps its buffer out of the slab (the plan is smaller
    than with every buffer in the slab), and the memory a stream holds over a strip (slab,
    resident buffers, line buffers) is what :func:`band_memory` plans: for a strip run from
    the top (``restarts=False``), and for one restarting mid-image (a resumed or masked run),
    whose first band's cone reaches above it."""
    from hirestile import bands

    m = unet(in_channels=1, classes=2, base=16, depth=4)
    h, w, bh = 1024, 512, 128
    rep = m.analyze((h, w))
    band = executor.interior_region(rep, (bh, w))
    x = np.random.default_rng(5).random((1, h, w), np.float32)
    want = executor.run_full(rep, x)
    strip = column_strips(grid_tiles(rep, (bh, w)))[0]
    for restarts, first in ((False, 0), (True, 4)):
        parts = bands._BandParts.of(rep, band, restarts=restarts)
        res = parts.residents()
        assert "enc.0.conv2" in res
        plan = bands.band_memory(rep, band, restarts=restarts)
        assert plan == parts.memory(res) < parts.memory(frozenset())
        s = Stream(rep)
        held, out = 0, []
        for t in strip[first:]:
            out.append(s.run(x[(slice(None), *t.read.slices)], t.read.origin, t.write))
            assert set(s.resident) == res
            held = max(held, s.arena.slab.nbytes + sum(a.nbytes for a in s.arena.residents.values())
                       + sum(a.nbytes for a in s.arena.lines.values()))
        assert np.array_equal(np.concatenate(out, axis=1), want[:, first * bh:])
        assert 0.95 * plan <= held <= 1.02 * plan, (restarts, held, plan)
    assert bands.band_memory(rep, band, restarts=False) < plan        # 128-row bands: the restart's cone is larger


@pytest.mark.parametrize("n", [16384, 40960])
def test_the_default_plan_streams_large_slides_recomputing_at_most_3_percent(n):
    """Issue 12's target, planned without running: UNet-16 at the default 2 GiB streams a
    16384^2 or 40960^2 slide in strips wide enough that at most 3 % of the FLOPs are
    recomputed at their edges, with the expected peak inside the budget."""
    from hirestile import scheduler

    rep = unet(in_channels=3, classes=2, base=16, depth=4).analyze((n, n))
    mode = scheduler.choose_mode(rep, None, None, memory=2 << 30)
    assert mode.stream and mode.stream_redundancy <= 1.03 < 1.13 * mode.stream_redundancy <= mode.tile_redundancy
    band, strip = mode.tile
    assert band >= 256 and strip >= 4096
    assert scheduler.PROCESS_BASELINE + scheduler._memory(rep, band, strip, stream=True, channels=3)[1] <= 2 << 30


def test_arena_grows_without_holding_two_slabs():
    """A region needing a larger slab (an interior tile after an edge tile) frees the old one
    before allocating the new: the plan counts one slab, never two."""
    import tracemalloc

    a = executor.Arena()
    tracemalloc.start()
    try:
        a.place(((1_000_000, 0, 0),))
        tracemalloc.reset_peak()
        a.place(((2_000_000, 0, 0),))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert a.slab.size == 2_000_000 and a.slab.ctypes.data % 64 == 0
    assert peak <= 4 * (2_000_000 + 16) + 65536, peak            # not 12 MB: the 4 MB slab was gone


def test_results_written_into_given_arrays_and_windows_into_the_arena():
    """run_window / run_region / Stream.run write into a caller's ``out`` (reused: no fresh
    pages) and normalise into the arena's scratch: the same bits as fresh arrays."""
    from hirestile.contract import InputContract

    m = unet(in_channels=3, classes=3, base=4, depth=2, seed=2)
    rep = m.analyze((97, 83))
    raw = (np.random.default_rng(4).random((3, 97, 83)) * 65535).astype(np.uint16)
    contract = InputContract(channels=3, scale="dtype", mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    want = executor.run_full(rep, contract.normalize(raw))
    arena, bands = executor.Arena(), Stream(rep)
    mem = np.full(3 * 97 * 83, np.nan, np.float32)          # one buffer, tile after tile
    for t in grid_tiles(rep, (31, 83)):
        (y0, y1), (x0, x1) = t.write
        out = mem[:3 * t.write.size].reshape(3, y1 - y0, x1 - x0)
        window = raw[(slice(None), *t.read.slices)]
        got = executor.run_window(rep, contract, window, t, arena=arena, out=out)
        assert got is out and np.array_equal(out, want[:, y0:y1, x0:x1])
        got = executor.run_window(rep, contract, window, t, stream=bands, out=out)
        assert got is out and np.array_equal(out, want[:, y0:y1, x0:x1])
    assert arena._scratch.size >= raw[:, :40].size
    with pytest.raises(ValueError, match="out must be float32"):
        executor.run_region(rep, contract.normalize(raw), (0, 0), ((0, 10), (0, 10)), out=np.empty((3, 10, 9), np.float32))


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.float32, np.float64])
def test_normalize_into_a_buffer_gives_astype_bits(dtype):
    from hirestile.contract import InputContract

    rng = np.random.default_rng(5)
    raw = (rng.random((2, 13, 17)) * 200 - (50 if dtype in (np.int16, np.float32, np.float64) else 0)).astype(dtype)
    for c in (InputContract(channels=2, scale="dtype", mean=(0.1, 0.2), std=(0.3, 0.7)),
              InputContract(channels=2, stretch="asinh", softening=3.0)):
        expect = c.normalize(raw)
        out = np.full(raw.shape, np.nan, np.float32)
        assert c.normalize(raw, out) is out
        np.testing.assert_array_equal(out, expect)
        ref = raw.astype(np.float64)                  # independent: float64 arithmetic, then compared loosely
        if np.issubdtype(dtype, np.integer):          # scale="dtype" (the default)
            ref = ref / np.iinfo(dtype).max
        if c.stretch == "asinh":
            ref = np.arcsinh(ref / 3.0)
        else:
            ref = (ref - np.array([0.1, 0.2])[:, None, None]) / np.array([0.3, 0.7])[:, None, None]
        np.testing.assert_allclose(out, ref, rtol=2e-6, atol=2e-6)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(h=st.integers(40, 131), w=st.integers(30, 97), band=st.integers(5, 37), strip=st.integers(20, 97),
       skip=st.integers(0, 5))
def test_stream_reads_cover_each_band_and_read_each_row_about_once(h, w, band, strip, skip):
    """A streamed run reads only the input rows each band computes from: windows cut to
    :func:`stream_reads` give the full-frame bits (a band after a skipped one starts afresh),
    and down a strip the rows read add up to about the image's, not a halo per band."""
    from hirestile.bands import stream_reads

    rep = unet(in_channels=2, classes=2, base=4, depth=3, seed=1).analyze((h, w))
    x = np.random.default_rng(h * w).random((2, h, w), np.float32)
    full = executor.run_full(rep, x)
    tiles = [t for s in column_strips(grid_tiles(rep, (band, strip))) for t in s]
    todo = [t for i, t in enumerate(tiles) if skip == 0 or i % 7 != skip]     # resumed runs skip some
    s, read_rows = Stream(rep), 0
    for t, r in zip(todo, stream_reads(rep, todo)):
        assert r.write == t.write and r.read.intersect(t.read) == r.read
        (a, b), (c, d) = r.read
        out = s.run(x[:, a:b, c:d], (a, c), t.write)
        assert np.array_equal(out, full[(slice(None), *t.write.slices)])
        read_rows += (b - a) * (d - c)
    if skip == 0:
        halo = max(rep.halo)
        strips = len(column_strips(grid_tiles(rep, (band, strip))))
        assert read_rows <= (h + 2 * halo) * (w + 2 * halo * strips) + 8 * len(tiles) * (w + 2 * halo)


def test_a_strips_first_band_runs_in_two_pieces_that_hold_less():
    """A band that starts a strip (at the top, or mid-image where a resumed or masked run
    restarts it) runs in two pieces (fresh_pieces): each lays out a smaller slab than the band
    whole, and after both every node's frontier is the band's, so the band below continues as
    it would; the strip gives the full-frame bits."""
    from hirestile.bands import fresh_pieces, plan_band
    from hirestile.region import Region

    rep = unet(in_channels=1, classes=2, base=16, depth=4).analyze((1024, 512))
    x = np.random.default_rng(3).random((1, 1024, 512), np.float32)
    want = executor.run_full(rep, x)
    for y0 in (0, 512):
        band = Region((y0, y0 + 256), (0, 512))
        pieces = fresh_pieces(rep, band)
        assert len(pieces) == 2 and pieces[0].rows[0] == y0 and pieces[1].rows[1] == y0 + 256
        assert pieces[0].rows[1] == pieces[1].rows[0] and (pieces[0].rows[1] - y0) % rep.tile_step[0] == 0
        held, comp, keep, done = plan_band(rep, band, {})
        slabs, after = [], {}
        for p in pieces:
            h, c, k, after = plan_band(rep, p, after)
            slabs.append(executor.region_memory(rep, h, c))
        assert max(slabs) < executor.region_memory(rep, held, comp)
        assert after == done and k.items() <= keep.items()
        s = Stream(rep)
        for t in column_strips(grid_tiles(rep, (256, 512)))[0][y0 // 256:]:
            (a, b), (c, d) = t.read
            assert np.array_equal(s.run(x[:, a:b, c:d], (a, c), t.write), want[(slice(None), *t.write.slices)])


def test_prepared_graph_holds_one_copy_of_the_conv_weights():
    """The optimized graph's conv weights (batch-norm folded) are views of the kernel-layout
    arrays the kernels read, with the folded values (one copy in memory, not two); in bf16 the
    kernel arrays are rounded, so the graph keeps its own float32 values."""
    from hirestile.graph import Conv, ConvTranspose
    from hirestile.rewrite import optimize

    m = unet(in_channels=3, classes=2, base=8, depth=2, seed=4)
    ref = optimize(m.runnable).by_name
    for precision in ("fp32", "bf16"):
        p = executor.prepare(m.runnable, precision)
        convs = [n for n in p.graph.nodes if isinstance(n.op, (Conv, ConvTranspose))]
        assert len(convs) >= 6
        for n in convs:
            assert np.array_equal(n.params["w"], ref[n.name].params["w"])
            assert np.array_equal(n.params["b"], ref[n.name].params["b"])
            assert np.shares_memory(n.params["w"], p.weights[n.name]["w"]) == (precision == "fp32")


def test_a_resident_buffer_takes_its_strips_room_at_the_strips_first_band():
    """Strip after strip on one arena: a resident buffer is sized for the whole strip at its
    first band (nothing is carried then), never grown while it holds kept rows (growing then
    copies them aside first: +280 MiB at UNet-64's 3072-wide strips); same bits."""
    rep = unet(in_channels=1, classes=2, base=16, depth=4).analyze((640, 768))
    x = np.random.default_rng(8).random((1, 640, 768), np.float32)
    want = executor.run_full(rep, x)
    arena = executor.Arena()
    for strip in column_strips(grid_tiles(rep, (128, 256))):
        s, first = Stream(rep, arena), None
        for t in strip:
            (a, b), (c, d) = t.read
            assert np.array_equal(s.run(x[:, a:b, c:d], (a, c), t.write), want[(slice(None), *t.write.slices)])
            bufs = {n: id(v) for n, v in arena.residents.items()}
            assert bufs and (first is None or bufs == first), t.write       # the same memory down the strip
            first = first or bufs
