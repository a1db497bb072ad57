"""Decoding uploaded images under limits: size, pixel count, format, completeness."""

from __future__ import annotations

import io
import warnings

from PIL import Image, UnidentifiedImageError

from service.errors import ApiError

ALLOWED_FORMATS = {"JPEG", "PNG", "WEBP", "GIF", "BMP"}
# A query image's shorter side is brought down to this before it waits for the engine: the model sees a few hundred
# pixels a side, and a 40-megapixel query held while it waits is 120 MB. Ordinary photos are left as they are.
QUERY_SIDE = 1024
# The model resizes the shorter side to a few hundred pixels: a 6 KB 2000x1 PNG became 448,000x224 (+388 MB), and a
# 100,000x1 one would take gigabytes. Panoramas stay well inside this.
MAX_ASPECT_RATIO = 20


def _reduced(image: Image.Image, shorter_side: int) -> Image.Image:
    width, height = image.size
    scale = shorter_side / min(width, height)
    if scale >= 1:
        return image
    return image.resize((max(1, round(width * scale)), max(1, round(height * scale))), Image.Resampling.BICUBIC,
                        reducing_gap=2.0)


def _check_header(image: Image.Image, max_pixels: int) -> None:
    """What the header tells before any pixel is decoded: bombs and absurd shapes are refused cheaply."""
    width, height = image.size
    if width * height > max_pixels:
        raise ApiError(413, "image_too_large",
                       f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}")
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise ApiError(422, "image_aspect_ratio", f"image is {width}x{height}; the longer side may be at most "
                       f"{MAX_ASPECT_RATIO} times the shorter")
    if image.format not in ALLOWED_FORMATS:
        raise ApiError(415, "unsupported_image_format",
                       f"image format {image.format} is not accepted ({', '.join(sorted(ALLOWED_FORMATS))})")


def decode_image(data: bytes, *, max_pixels: int, shorter_side: int | None = None) -> Image.Image:
    """Bytes -> a fully decoded RGB image (its shorter side at most ``shorter_side``), or an ApiError with the
    right status. A JPEG is decoded straight to about that size (DCT scaling): most of its pixels never exist."""
    if not data:
        raise ApiError(422, "empty_image", "the image is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            _check_header(image, max_pixels)
            if shorter_side is not None and image.format == "JPEG":
                width, height = image.size
                scale = shorter_side / min(width, height)
                if scale < 1:
                    image.draft("RGB", (max(1, round(width * scale)), max(1, round(height * scale))))
            image.load()
    except ApiError:
        raise
    except UnidentifiedImageError as e:
        raise ApiError(415, "not_an_image", "the upload is not a readable image") from e
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ApiError(413, "image_too_large", f"image refused as a decompression bomb: {e}") from e
    except (OSError, ValueError, SyntaxError) as e:
        raise ApiError(422, "corrupt_image", f"the image could not be decoded (truncated or corrupt): {e}") from e
    rgb = image.convert("RGB")
    return rgb if shorter_side is None else _reduced(rgb, shorter_side)
