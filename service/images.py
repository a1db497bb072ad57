"""Decoding uploaded images under limits: size, pixel count, format, completeness."""

from __future__ import annotations

import io
import warnings

from PIL import Image, UnidentifiedImageError

from service.errors import ApiError

ALLOWED_FORMATS = {"JPEG", "PNG", "WEBP", "GIF", "BMP"}


def decode_image(data: bytes, *, max_pixels: int) -> Image.Image:
    """Bytes -> a fully decoded RGB image, or an ApiError with the right status."""
    if not data:
        raise ApiError(422, "empty_image", "the image is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            # The header gives the size before any pixel is decoded, so bombs are refused cheaply.
            width, height = image.size
            if width * height > max_pixels:
                raise ApiError(413, "image_too_large",
                               f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}")
            if image.format not in ALLOWED_FORMATS:
                raise ApiError(415, "unsupported_image_format",
                               f"image format {image.format} is not accepted ({', '.join(sorted(ALLOWED_FORMATS))})")
            image.load()
    except ApiError:
        raise
    except UnidentifiedImageError as e:
        raise ApiError(415, "not_an_image", "the upload is not a readable image") from e
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ApiError(413, "image_too_large", f"image refused as a decompression bomb: {e}") from e
    except (OSError, ValueError, SyntaxError) as e:
        raise ApiError(422, "corrupt_image", f"the image could not be decoded (truncated or corrupt): {e}") from e
    return image.convert("RGB")
