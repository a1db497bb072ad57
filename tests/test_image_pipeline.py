"""The image pipeline (core/image_pipeline.py): batches in order, corrupt files, bounded read-ahead, and the device
decoding path (torchvision's JPEG decoder and the tensor preprocess), exercised here on the CPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.data import ImageInput
from core.image_pipeline import (
    BATCHES_AHEAD,
    CorruptImageError,
    ImagePipeline,
    TensorPreprocess,
    load_image,
)


def photo(seed: int, size: tuple[int, int] = (120, 90)) -> Image.Image:
    """A smooth image (a gradient plus low-frequency noise), like a photo and unlike pure noise, so two resizers
    agree on it closely."""
    rng = np.random.default_rng(seed)
    width, height = size
    x, y = np.meshgrid(np.linspace(0, 1, width), np.linspace(0, 1, height))
    coarse = rng.random((4, 4, 3))
    blocks = np.kron(coarse, np.ones((height // 4 + 1, width // 4 + 1, 1)))[:height, :width]
    pixels = 255 * (0.4 * x[..., None] + 0.3 * y[..., None] + 0.3 * blocks)
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


def write(path: Path, image: Image.Image, fmt: str) -> Path:
    image.save(path, format=fmt, quality=95) if fmt == "JPEG" else image.save(path, format=fmt)
    return path


@pytest.fixture()
def files(tmp_path: Path) -> list[ImageInput]:
    items = []
    for n in range(11):
        fmt = "PNG" if n % 4 == 3 else "JPEG"
        size = (120 + 7 * (n % 3), 90)  # repeated sizes: the device path resizes same-size photos together
        items.append(ImageInput(100 + n, write(tmp_path / f"{n}.{fmt.lower()}", photo(n, size), fmt)))
    return items


def test_batches_come_in_order_with_every_image(files: list[ImageInput], tiny_backbone) -> None:  # type: ignore[no-untyped-def]
    pipeline = ImagePipeline(tiny_backbone.preprocess, "cpu", batch_size=4, threads=3)
    batches = list(pipeline.batches(files))
    assert [b.count for b in batches] == [4, 4, 3]
    assert [i for b in batches for i in b.ids] == [item.id for item in files]
    for batch in batches:
        for row, item_id in enumerate(batch.ids):
            expected = load_image(files[item_id - 100].path, tiny_backbone.preprocess)
            assert torch.equal(batch.pixels[row], expected)  # the CPU way: the tower's own preprocess, bit for bit


def test_corrupt_files_raise_naming_the_file_or_are_skipped(files: list[ImageInput], tmp_path: Path,
                                                            tiny_backbone) -> None:  # type: ignore[no-untyped-def]
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(files[0].path.read_bytes()[:300])
    not_image = tmp_path / "notes.jpg"
    not_image.write_text("not an image")
    bad = [ImageInput(1, truncated), ImageInput(2, not_image), ImageInput(3, tmp_path / "missing.jpg")]
    for device_decode in (False, True):
        for item in bad:
            pipeline = ImagePipeline(tiny_backbone.preprocess, "cpu", batch_size=2, device_decode=device_decode)
            with pytest.raises(CorruptImageError, match=item.path.name):
                list(pipeline.batches([files[1], item]))
        skipping = ImagePipeline(tiny_backbone.preprocess, "cpu", batch_size=2, skip_corrupt=True,
                                 device_decode=device_decode)
        batches = list(skipping.batches([files[0], *bad, files[1]]))
        assert [i for b in batches for i in b.ids] == [files[0].id, files[1].id]
        assert sorted(s for b in batches for s in b.skipped) == sorted(str(i.path) for i in bad)
        assert sum(b.count for b in batches) == 5


def test_read_ahead_is_bounded(files: list[ImageInput], tiny_backbone) -> None:  # type: ignore[no-untyped-def]
    reads: list[int] = []

    class Counting(ImagePipeline):
        def _read(self, item: ImageInput):  # type: ignore[no-untyped-def]
            reads.append(item.id)
            return super()._read(item)

    pipeline = Counting(tiny_backbone.preprocess, "cpu", batch_size=1, threads=2)
    batches = pipeline.batches(files)
    next(batches)
    assert len(reads) <= BATCHES_AHEAD * 2  # one batch of 1 per slot, not all 11 files
    assert len(list(batches)) == len(files) - 1


def test_device_decoding_matches_the_cpu_way(files: list[ImageInput], tiny_backbone) -> None:  # type: ignore[no-untyped-def]
    """JPEGs decoded by torchvision and preprocessed as tensors give the pixels of PIL and the tower's transform
    up to resampling differences; the tower's features agree closely. Other formats take the CPU way exactly."""
    tensor_preprocess = TensorPreprocess.of(tiny_backbone.preprocess)
    assert tensor_preprocess is not None
    cpu = next(ImagePipeline(tiny_backbone.preprocess, "cpu", batch_size=16).batches(files))
    device = next(ImagePipeline(tiny_backbone.preprocess, "cpu", batch_size=16, device_decode=True).batches(files))
    assert device.ids == cpu.ids and device.pixels.shape == cpu.pixels.shape
    for row, item in enumerate(files):
        difference = (device.pixels[row] - cpu.pixels[row]).abs()
        if item.path.suffix == ".png":
            assert torch.equal(device.pixels[row], cpu.pixels[row])
        else:
            assert 0 < float(difference.mean()) < 0.03  # decoded the other way; about 2 of 255 grey levels
    same = torch.nn.functional.cosine_similarity(tiny_backbone.image_features(device.pixels),
                                                 tiny_backbone.image_features(cpu.pixels))
    assert float(same.min()) > 0.99


def test_a_transform_it_does_not_know_takes_the_cpu_way(files: list[ImageInput]) -> None:
    from torchvision import transforms

    odd = transforms.Compose([transforms.Resize((32, 48)), transforms.ToTensor()])
    assert TensorPreprocess.of(odd) is None
    batch = next(ImagePipeline(odd, "cpu", batch_size=2, device_decode=True).batches(files[:2]))
    assert batch.pixels.shape == (2, 3, 32, 48)


def test_encoding_files_equals_encoding_the_decoded_images(files: list[ImageInput], tiny_checkpoint: Path) -> None:
    from core.encoder import DuetEncoder

    encoder = DuetEncoder.from_checkpoint(tiny_checkpoint)
    images = []
    for item in files[:5]:
        with Image.open(item.path) as image:
            images.append(image.convert("RGB"))
    from_files = encoder.encode_image_files([item.path for item in files[:5]], threads=2)
    from_images = encoder.encode_images(images)
    assert np.allclose(from_files.dense, from_images.dense, atol=1e-6)
    with pytest.raises(CorruptImageError):
        encoder.encode_image_files([files[0].path.with_name("nowhere.jpg")])


def test_an_upload_is_encoded_from_the_pixels_a_build_gives_its_file(files: list[ImageInput],
                                                                      tiny_checkpoint: Path) -> None:
    """A live write's image (its bytes, checked by decoding them) gets the pixels the index build gives the same
    file: the CPU way from the image already decoded; where the pipeline decodes on the device (here forced on the
    CPU), JPEG bytes through the device decoder as a build's files go, other formats the CPU way."""
    from core.encoder import DuetEncoder
    from indexer.writes import decoded_image

    encoder = DuetEncoder.from_checkpoint(tiny_checkpoint)
    jpeg, png = files[0], files[3]
    assert jpeg.path.suffix == ".jpeg" and png.path.suffix == ".png"
    for item in (jpeg, png):
        data = item.path.read_bytes()
        image, _ = decoded_image(data)
        built = encoder.encode_image_files([item.path])
        assert np.array_equal(encoder.encode_upload(data, image).dense, built.dense)
        on_device = ImagePipeline(encoder.backbone.preprocess, "cpu", batch_size=1, device_decode=True)
        pixels = on_device.pixels([item]).pixels
        expected = encoder.encode_image_features(encoder.backbone.image_features(pixels))
        uploaded = encoder.encode_upload(data, image, device_decode=True)
        assert np.array_equal(uploaded.dense, expected.dense)
        # JPEG bytes went the device way: not the CPU way's pixels; a PNG's are the CPU way's exactly
        assert np.array_equal(uploaded.dense, built.dense) == (item is png)
