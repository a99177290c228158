"""The local tile runner: reader thread -> compute (this thread) -> writer thread.

Layer 7 of docs/architecture.md, under the scheduler: :func:`run_local` is the
scheduler's default way to compute and durably write a job's tiles in this
process. A reader thread reads the next tiles' windows (queued as stored, uint8
being a quarter of float32); the calling thread normalises and computes them
(numba's parallel kernels are called from one thread only), by default as bands
moving down column strips (:class:`hirestile.bands.Stream`); a writer thread
turns logits into the stored output, writes whole blocks, fsyncs them and marks
them done. Bounded queues keep memory at a few tiles, independent of the image
size. Process-level memory tuning (:func:`keep_freed_memory`) and the peak-RSS
reading live here too.
"""
from __future__ import annotations

import ctypes
import queue
import resource
import signal
import sys
import threading
import time
from typing import Any, Sequence

import numpy as np
import zarr

from . import executor
from .bands import Stream, stream_reads
from .contract import NAN_FILL_HINT
from .io import InputImage
from .resume import DoneLog, store_tile
from .tiling import Tile

CODEC_BATCH = 256                 # chunks zarr encodes or decodes per worker call
PIPELINE_DEPTH = 2                # windows queued for compute, and outputs queued for the writer
_STOP = object()


def peak_rss() -> int:
    """Peak resident set size of this process, bytes."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if sys.platform == "darwin" else r * 1024


def keep_freed_memory() -> None:
    """Tune glibc's allocator for a run: one malloc arena for all threads, and blocks of
    1 MiB and more served by mmap, so that freeing one returns it to the OS.

    The executor reuses its node buffers itself (:class:`hirestile.executor.Arena`, bounded
    by the plan's executor memory), which is what spares overlap tiles and bands the
    first-touch page faults of fresh buffers; the heap need not keep freed large blocks,
    and must not: kept there, blocks of changing sizes fragment it (measured before the
    arena: 2.3 against 1.76 GiB for UNet-16 bands of 256 x 8192). Setting the threshold
    also stops glibc from raising it after each free, which would move later large blocks
    onto the heap. No-op where glibc is absent.

    All threads share one arena (M_ARENA_MAX 1): the reader, the writer and zarr's codec
    threads would otherwise each get an arena of their own and keep their own peak
    (measured: 617 against 736 MiB at 8192^2, and no slower). Threads that already own an
    arena keep it, so call this before the first zarr read.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 20)      # M_MMAP_THRESHOLD
        libc.mallopt(-8, 1)            # M_ARENA_MAX
    except (OSError, AttributeError):
        pass


class _Pipeline:
    """Reader thread -> main thread (compute) -> writer thread, through bounded queues."""

    def __init__(self, depth: int = PIPELINE_DEPTH) -> None:
        self.inq: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self.outq: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.lock = threading.Lock()

    def fail(self, e: BaseException) -> None:
        with self.lock:
            if self.error is None:
                self.error = e
        self.stop.set()

    def put(self, q: queue.Queue[Any], item: Any) -> bool:
        """Put unless the pipeline stops; False when stopped."""
        while not self.stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False


def _output_memory(spare: queue.SimpleQueue[np.ndarray], n: int) -> np.ndarray:
    """A float32 buffer of at least ``n`` values for a tile's logits: one the writer has handed
    back (its pages already touched), else a new one. Buffers exist only while the compute
    thread, the output queue or the writer holds them (``PIPELINE_DEPTH + 2``, as the plan
    counts), and one too small is dropped."""
    try:
        mem = spare.get_nowait()
    except queue.Empty:
        return executor.aligned_empty(n)
    return mem if mem.size >= n else executor.aligned_empty(n)


def run_local(img: InputImage, model: Any, rep: Any, arr: Any, todo: Sequence[Tile], donelog: DoneLog,
              stats: Any, *, kind: str, nan_fill: float | None, progress: bool | None, total: int,
              streaming: bool = False) -> None:
    """This process's tile runner (the scheduler's default ``run_tiles``): ``todo`` through
    reader -> compute -> writer threads; raise the first error any stage hit.

    With ``streaming``, consecutive tiles of one column strip run as bands of one
    :class:`hirestile.bands.Stream` (give ``todo`` strip by strip, top to bottom): each
    intermediate row is computed once per strip instead of once per tile that needs it."""
    from tqdm import tqdm

    pipe = _Pipeline()
    spare: queue.SimpleQueue[np.ndarray] = queue.SimpleQueue()   # output buffers the writer is done with
    contract = model.contract
    band: Stream | None = None
    band_cols: Any = None
    if todo:
        executor.pack_weights(rep)    # packing's transient copies before the slab, not on top of it
    arena = executor.Arena()          # node buffers: one slab, reused tile after tile (and strip after strip)
    bar = tqdm(total=total, initial=total - len(todo), unit="tile", dynamic_ncols=True,
               disable=None if progress is None else not progress,      # None: only on a terminal
               desc="segment", smoothing=0.1)
    t0 = time.perf_counter()

    def reader() -> None:
        try:
            # narrowed again for this todo: after a band a resumed or masked run skips, the
            # next starts its strip afresh and reads its whole window
            for t in (stream_reads(rep, todo) if streaming else todo):
                if pipe.stop.is_set():
                    return
                s = time.perf_counter()
                raw = img.read(*t.read)     # queued as stored: uint8 is a quarter of float32
                stats.read += time.perf_counter() - s
                stats.in_pixels_read += t.read.size
                if not pipe.put(pipe.inq, (t, raw)):
                    return
            pipe.put(pipe.inq, _STOP)
        except BaseException as e:          # noqa: BLE001 - handed to the main thread
            pipe.fail(e)

    def writer() -> None:
        work: dict = {}                     # postprocessing's arrays, reused tile after tile
        try:
            while True:
                item = pipe.outq.get()
                if item is _STOP:
                    return
                t, logits, mem = item
                s = time.perf_counter()
                store_tile(arr, t, logits, kind=kind, output=stats.output, mark=donelog.mark, work=work)
                spare.put(mem)
                stats.write += time.perf_counter() - s
                stats.tiles_computed += 1
                stats.out_pixels += t.write.size
                el = time.perf_counter() - t0
                bar.set_postfix_str(f"{stats.out_pixels / 1e6 / el:.2f} MP/s", refresh=False)
                bar.update(1)
        except BaseException as e:          # noqa: BLE001
            pipe.fail(e)
            while True:                     # unblock the main thread
                try:
                    pipe.outq.get_nowait()
                except queue.Empty:
                    break

    # Ctrl-C / SIGTERM stop the run between tiles (an exception raised inside a kernel call
    # can surface as a SystemError); a second signal interrupts at once.
    interrupted = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        if interrupted.is_set():
            raise KeyboardInterrupt
        interrupted.set()
        sys.stderr.write("\nhirestile: stopping after the tile in progress (signal again to stop at once)\n")

    handlers = {}
    if threading.current_thread() is threading.main_thread():
        handlers = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    rt = threading.Thread(target=reader, name="hirestile-reader", daemon=True)
    wt = threading.Thread(target=writer, name="hirestile-writer", daemon=True)
    # zarr encodes a shard's chunks in one worker call instead of one each (thread hand-offs
    # and asyncio tasks per 256 x 256 chunk were a third of the writer's CPU); entered here,
    # in the main thread, before the reader and the writer start and left after both stop
    with zarr.config.set({"codec_pipeline.batch_size": CODEC_BATCH}):
        rt.start()
        wt.start()
        try:
            while True:
                s = time.perf_counter()
                item = None
                while item is None and not pipe.stop.is_set() and not interrupted.is_set():
                    try:
                        item = pipe.inq.get(timeout=0.1)
                    except queue.Empty:
                        pass
                stats.idle += time.perf_counter() - s
                if interrupted.is_set():
                    raise KeyboardInterrupt
                if item is None or item is _STOP:
                    break
                t, raw = item
                s = time.perf_counter()
                del item
                if streaming and (band is None or band_cols != t.write.cols):
                    band, band_cols = Stream(rep, arena), t.write.cols       # a new column strip
                mem = _output_memory(spare, rep.output_shape[0] * t.write.size)
                (y0, y1), (x0, x1) = t.write
                out = mem[:rep.output_shape[0] * t.write.size].reshape(rep.output_shape[0], y1 - y0, x1 - x0)
                logits = executor.run_window(rep, contract, raw, t, nan_fill=nan_fill, where=f"{img.path}:",
                                             hint=NAN_FILL_HINT, stream=band, arena=arena, out=out)
                del raw
                stats.compute += time.perf_counter() - s
                s = time.perf_counter()
                if not pipe.put(pipe.outq, (t, logits, mem)):
                    break
                stats.idle += time.perf_counter() - s
        except BaseException as e:
            pipe.fail(e)
            raise
        finally:
            # let the writer finish what was computed (those tiles are then durably done)
            while wt.is_alive():
                try:
                    pipe.outq.put(_STOP, timeout=0.1)
                    break
                except queue.Full:
                    continue
            wt.join()
            pipe.stop.set()
            rt.join()
            bar.close()
            for sig, h in handlers.items():
                signal.signal(sig, h)
    if pipe.error is not None:
        raise pipe.error


__all__ = ["run_local", "keep_freed_memory", "peak_rss", "PIPELINE_DEPTH"]
