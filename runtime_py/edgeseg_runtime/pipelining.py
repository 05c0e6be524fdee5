"""Segmenting many images with decoding, inference and post-processing overlapped (a three-stage pipeline).

One image at a time, a segmentor waits: the backend idles while the next
file is decoded and resized, the CPU's other core idles while the backend
runs. :func:`pipelined` runs three stages at once, each in its own thread,
joined by bounded queues (``depth`` items each, so memory stays at a few
images)::

    loader threads     load(source) -> image, Segmentor.prepare(image) -> tensor (two images at once)
    inference thread   Segmentor.forward(tensor) -> raw output
    caller's thread    Segmentor.finish(output) -> labels, then whatever the caller does with them
                       (encode PNGs, count classes) while the next image is inferred

Pillow's decoders and resizers, numpy's large-array loops and every
backend's inference release the GIL, so the stages run in parallel on
separate cores. Results come back in input order. An image that cannot be
read or does not fit the model (:class:`~edgeseg_runtime.errors.ImageError`)
comes back as that error and the stream goes on; any other error stops the
stream and is raised in the caller's thread. Closing the iterator early
(``break``, Ctrl-C) stops the threads (they are daemons: a blocked backend
call never holds up the exit).
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, Optional, TypeVar

import numpy as np

from .errors import ImageError

__all__ = ["Item", "pipelined"]

T = TypeVar("T")
_END = object()


@dataclass
class Item(Generic[T]):
    """One source's outcome, in input order.

    Attributes:
        source: what was given (a path, a frame number, an array).
        image: the loaded ``(H, W, C)`` image (None when loading failed).
        labels: ``(H, W)`` label map (uint8, uint16 above 256 classes), None on error.
        scores: ``(C, H, W)`` float32 resized scores when asked for, else None.
        output: the raw network output.
        error: why this source was skipped (None on success).
    """

    source: T
    image: Optional[np.ndarray] = None
    labels: Optional[np.ndarray] = None
    scores: Optional[np.ndarray] = None
    output: Optional[np.ndarray] = None
    error: Optional[ImageError] = None


class _Failure:
    """An exception raised in a stage thread, carried to the caller's thread."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def pipelined(segmentor: Any, sources: Iterable[T], load: Callable[[T], np.ndarray], *,
              scores: bool = False, depth: int = 2, loaders: int = 2) -> Iterator[Item[T]]:
    """Segment ``sources`` with the three stages overlapped (see the module docstring).

    Args:
        segmentor: an active :class:`~edgeseg_runtime.segmentor.Segmentor`.
        sources: anything ``load`` takes (file paths, video frames); consumed in the loader thread.
        load: source → ``(H, W, C)`` image as :meth:`Segmentor.load` reads it; may raise ImageError.
        scores: also resize the class scores (``Item.scores``).
        depth: items waiting between two stages (>= 1).
        loaders: images loaded and pre-processed at once (threads; on 2 cores two decoders keep the backend
            fed: decoding is the slowest stage of ``edgeseg run`` on photos).

    Yields:
        :class:`Item` per source, in order.

    Raises:
        ToolchainError: the backend failed (the stream stops).
        Exception: an error other than ImageError raised by ``load`` or ``sources``.
    """
    stop = threading.Event()
    prepared: queue.Queue = queue.Queue(maxsize=max(1, depth))
    inferred: queue.Queue = queue.Queue(maxsize=max(1, depth))

    def put(q: queue.Queue, value: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(value, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def get(q: queue.Queue) -> Any:
        while not stop.is_set():
            try:
                return q.get(timeout=0.1)
            except queue.Empty:
                continue
        return _END

    def load_one(source: T) -> tuple[Item, Optional[np.ndarray]]:
        item: Item = Item(source)
        try:
            item.image = load(source)
            return item, segmentor.prepare(item.image)
        except ImageError as exc:
            item.image, item.error = None, exc
            return item, None

    def loader() -> None:
        # images are decoded `loaders` at a time (decoders release the GIL), handed on in input order
        try:
            for source in sources:
                if stop.is_set() or not put(prepared, pool.submit(load_one, source)):
                    return
        except BaseException as exc:  # noqa: BLE001  carried to the caller's thread and raised there
            put(prepared, _Failure(exc))
            return
        put(prepared, _END)

    def inference() -> None:
        while True:
            got = get(prepared)
            if got is _END or isinstance(got, _Failure):
                put(inferred, got)
                return
            try:
                item, tensor = got.result()
            except BaseException as exc:  # noqa: BLE001  load() raised something else than ImageError
                put(inferred, _Failure(exc))
                return
            if tensor is not None:
                try:
                    item.output = segmentor.forward(tensor)
                except BaseException as exc:  # noqa: BLE001  the backend failed: the stream stops
                    put(inferred, _Failure(exc))
                    return
            if not put(inferred, item):
                return

    pool = ThreadPoolExecutor(max_workers=max(1, loaders), thread_name_prefix="edgeseg-load")
    threads = [threading.Thread(target=loader, name="edgeseg-feed", daemon=True),
               threading.Thread(target=inference, name="edgeseg-infer", daemon=True)]
    for thread in threads:
        thread.start()
    try:
        while True:
            got = get(inferred)
            if got is _END:
                return
            if isinstance(got, _Failure):
                raise got.exc
            item = got
            if item.output is not None and item.image is not None:
                h, w = item.image.shape[:2]
                item.labels, item.scores = segmentor.finish(item.output, h, w, scores=scores)
            yield item
    finally:
        stop.set()
        pool.shutdown(wait=False, cancel_futures=True)
