"""One image pipeline, from files (or an upload's bytes) to the pixels a tower takes: for the feature cache, the index
build (through the cache), the Ray actors and live writes.

Files are read and decoded on a pool of threads sized to the machine's cores (PIL's and torchvision's decoders
release the GIL), a bounded number of batches ahead of the consumer, so reading, decoding and the forward pass
overlap while memory stays bounded. Where the tower runs on a CUDA device, JPEG files are decoded there
(``torchvision.io.decode_jpeg`` on the device), resized and normalised there (``TensorPreprocess``, the tower's own
preprocess as tensor operations); any other format, and any file the device decoder refuses, goes the CPU way with
its error handling. CPU batches are pinned when they go to a CUDA device, so the copy does not block.

A file that is missing or not a readable image raises ``CorruptImageError`` naming it, or with ``skip_corrupt`` is
listed in its batch's ``skipped`` and left out.
"""

from __future__ import annotations

import io
import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from PIL import Image, UnidentifiedImageError

from core.data import ImageInput

JPEG_START = b"\xff\xd8\xff"
JPEG_END = b"\xff\xd9"
BATCHES_AHEAD = 2  # batches decoded ahead of the one being encoded, per decoding thread
T = TypeVar("T")
R = TypeVar("R")


class CorruptImageError(ValueError):
    """An image file is missing, truncated or not an image."""

    def with_skip_hint(self) -> CorruptImageError:
        """The error as a build reports it: naming the file and the flag that lists and skips such files."""
        return CorruptImageError(f"{self} (pass --skip-corrupt to list and skip such images)")


UNREADABLE = (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError)


def unreadable(path: Path, error: Exception) -> CorruptImageError:
    """The error that names an image file that could not be read (missing, or not a whole image)."""
    if isinstance(error, FileNotFoundError):
        return CorruptImageError(f"image file missing: {path}")
    return CorruptImageError(f"corrupt or unreadable image {path}: {error}")


def load_image(path: Path, preprocess: Callable[[Any], torch.Tensor], data: bytes | None = None) -> torch.Tensor:
    """Decode fully (so truncation is caught) and preprocess; raise CorruptImageError naming the file. ``data``: the
    image's bytes, read instead of the file (an upload)."""
    try:
        with Image.open(path if data is None else io.BytesIO(data)) as image:
            image.load()
            return preprocess(image.convert("RGB"))
    except UNREADABLE as e:
        raise unreadable(path, e) from e


def in_order_ahead(start: Callable[[T], Callable[[], R]], items: Sequence[T], depth: int) -> Iterator[R]:
    """Each item's result in order, with up to ``depth`` items started ahead of the one consumed: ``start(item)``
    sets its work going (on a pool) and returns what waits for its result. Memory stays bounded by ``depth``."""
    pending: deque[Callable[[], R]] = deque()
    started = 0
    while pending or started < len(items):
        while started < len(items) and len(pending) < depth:
            pending.append(start(items[started]))
            started += 1
        yield pending.popleft()()


def decode_threads() -> int:
    """Decoding threads: the cores this process may use, one left to the forward pass (at least 1, at most 16)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(16, cores - 1))


def image_batch_size(device: torch.device | str) -> int:
    """Images per forward pass: a GPU is filled by large batches, a CPU gains nothing past a few dozen."""
    return 512 if torch.device(device).type == "cuda" else 64


def text_batch_size(device: torch.device | str) -> int:
    return 1024 if torch.device(device).type == "cuda" else 256


@dataclass(frozen=True)
class TensorPreprocess:
    """The tower's preprocess (resize the shorter side, centre crop, scale to [0, 1], normalise) as tensor operations
    on decoded uint8 (3, H, W) images, or a stack of same-size ones (N, 3, H, W), on whatever device they are."""

    size: int  # the shorter side after resizing
    crop: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str

    @classmethod
    def of(cls, preprocess: Any) -> TensorPreprocess | None:
        """The tensor form of an open_clip evaluation transform (Resize, CenterCrop, RGB, ToTensor, Normalize);
        None for any other transform (its images then take the CPU way)."""
        from torchvision import transforms

        steps = list(getattr(preprocess, "transforms", []))
        resize = next((s for s in steps if isinstance(s, transforms.Resize)), None)
        crop = next((s for s in steps if isinstance(s, transforms.CenterCrop)), None)
        normalize = next((s for s in steps if isinstance(s, transforms.Normalize)), None)
        if resize is None or crop is None or normalize is None or not isinstance(resize.size, int | Sequence):
            return None
        size = resize.size if isinstance(resize.size, int) else resize.size[0]
        if not isinstance(resize.size, int) and len(resize.size) != 1:
            return None  # a fixed (h, w) resize distorts the aspect: not modelled here
        height, width = (crop.size, crop.size) if isinstance(crop.size, int) else tuple(crop.size)
        mean, std = [float(m) for m in normalize.mean], [float(s) for s in normalize.std]
        return cls(int(size), (int(height), int(width)), (mean[0], mean[1], mean[2]), (std[0], std[1], std[2]),
                   str(resize.interpolation.value))

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms.v2 import functional

        resized = functional.resize(image, [self.size], interpolation=InterpolationMode(self.interpolation),
                                    antialias=True)
        cropped = functional.center_crop(resized, list(self.crop))
        scaled = cropped.float().div_(255.0)
        return functional.normalize(scaled, list(self.mean), list(self.std))


@dataclass(frozen=True)
class PixelBatch:
    """A batch of preprocessed images, in input order, without those that could not be read."""

    ids: list[int]
    pixels: torch.Tensor  # (B, 3, H, W) float32, on the device or pinned for it
    skipped: list[str]  # paths of unreadable images (skip_corrupt)
    count: int  # inputs this batch covered, read or not


class ImagePipeline:
    """Decode and preprocess images in batches, ahead of their consumer, for a tower on ``device``."""

    def __init__(self, preprocess: Callable[[Any], torch.Tensor], device: torch.device | str, *,
                 batch_size: int | None = None, threads: int | None = None, skip_corrupt: bool = False,
                 device_decode: bool | None = None) -> None:
        """``device_decode``: decode JPEGs with torchvision on ``device`` (default: where it is a CUDA device)."""
        self.preprocess, self.device = preprocess, torch.device(device)
        self.batch_size = batch_size or image_batch_size(self.device)
        self.threads = threads or decode_threads()
        self.skip_corrupt = skip_corrupt
        use_device = self.device.type == "cuda" if device_decode is None else device_decode
        self.tensor_preprocess = TensorPreprocess.of(preprocess) if use_device else None

    def batches(self, items: Sequence[ImageInput]) -> Iterator[PixelBatch]:
        """The items' pixels, batch by batch in order; up to ``BATCHES_AHEAD`` batches per thread in flight."""
        return self.chunked([items[i:i + self.batch_size] for i in range(0, len(items), self.batch_size)])

    def chunked(self, chunks: Sequence[Sequence[ImageInput]]) -> Iterator[PixelBatch]:
        """One batch per chunk the caller made (a shard's batches, one shard after another: reading runs ahead
        across shards), in order; up to ``BATCHES_AHEAD`` chunks per thread in flight."""
        with ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="decode") as pool:
            def start(chunk: Sequence[ImageInput]) -> Callable[[], PixelBatch]:
                futures = [pool.submit(self._read, item) for item in chunk]  # items in parallel, not chunks
                return lambda: self._batch(chunk, [future.result() for future in futures])

            yield from in_order_ahead(start, chunks, BATCHES_AHEAD * self.threads)

    def pixels(self, items: Sequence[ImageInput]) -> PixelBatch:
        """Every item in one batch (a small request: a Ray actor's batch, a write)."""
        parts = list(self.batches(items))
        if len(parts) == 1:
            return parts[0]
        return PixelBatch([i for p in parts for i in p.ids], torch.cat([p.pixels for p in parts]),
                          [s for p in parts for s in p.skipped], sum(p.count for p in parts))

    def _read(self, item: ImageInput) -> torch.Tensor | bytes | CorruptImageError:
        """A decoded, preprocessed image (the CPU way), a JPEG's bytes (to decode on the device), or the error."""
        try:
            if self.tensor_preprocess is not None:
                data = item.path.read_bytes() if item.data is None else item.data
                # a truncated JPEG lacks its end marker: the CPU way refuses it, as it refuses any unreadable file
                if data.startswith(JPEG_START) and data.rstrip(b"\x00").endswith(JPEG_END):
                    return data
            return load_image(item.path, self.preprocess, item.data)
        except CorruptImageError as e:
            return e
        except OSError as e:  # reading the bytes: missing, a folder, not permitted
            return unreadable(item.path, e)

    def _batch(self, chunk: Sequence[ImageInput], read: list[torch.Tensor | bytes | CorruptImageError]) -> PixelBatch:
        if any(isinstance(r, bytes) for r in read):
            read = self._decode_on_device(chunk, read)
        ids, tensors, skipped = [], [], []
        for item, result in zip(chunk, read, strict=True):
            if isinstance(result, CorruptImageError):
                if not self.skip_corrupt:
                    raise result
                skipped.append(str(item.path))
                continue
            assert isinstance(result, torch.Tensor)
            ids.append(item.id)
            tensors.append(result)
        if not tensors:
            return PixelBatch(ids, torch.zeros(0), skipped, len(chunk))
        return PixelBatch(ids, self._stacked(tensors), skipped, len(chunk))

    def _stacked(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        """One batch tensor: on a CUDA device, CPU-decoded pixels pinned and copied without blocking."""
        if self.device.type != "cuda":
            return torch.stack(tensors)
        if all(t.device.type == "cpu" for t in tensors):
            return torch.stack(tensors).pin_memory().to(self.device, non_blocking=True)
        return torch.stack([t.to(self.device, non_blocking=True) for t in tensors])

    def _decode_on_device(self, chunk: Sequence[ImageInput],
                          read: list[torch.Tensor | bytes | CorruptImageError]) -> list[Any]:
        """JPEG bytes decoded on the device in one call (torchvision's batched decoder), preprocessed there; a file
        it refuses is decoded the CPU way instead, so it fails, or not, as it would have there."""
        from torchvision.io import ImageReadMode, decode_jpeg

        assert self.tensor_preprocess is not None
        positions = [n for n, r in enumerate(read) if isinstance(r, bytes)]
        data = [torch.frombuffer(bytearray(read[n]), dtype=torch.uint8) for n in positions]  # type: ignore[arg-type]
        out: list[Any] = list(read)
        try:
            decoded = decode_jpeg(data, mode=ImageReadMode.RGB, device=self.device)
        except RuntimeError:
            decoded = [self._one_on_device(d) for d in data]
        same_size: dict[tuple[int, ...], list[tuple[int, torch.Tensor]]] = {}
        for n, image in zip(positions, decoded, strict=True):
            if image is None:
                try:
                    out[n] = load_image(chunk[n].path, self.preprocess, chunk[n].data)
                except CorruptImageError as e:
                    out[n] = e
            else:
                same_size.setdefault(tuple(image.shape), []).append((n, image))
        for group in same_size.values():  # photos of one size resized in one call, not one call per photo
            for (n, _), pixels in zip(group, self.tensor_preprocess(torch.stack([i for _, i in group])), strict=True):
                out[n] = pixels
        return out

    def _one_on_device(self, data: torch.Tensor) -> torch.Tensor | None:
        from torchvision.io import ImageReadMode, decode_jpeg

        try:
            return decode_jpeg(data, mode=ImageReadMode.RGB, device=self.device)
        except RuntimeError:
            return None
