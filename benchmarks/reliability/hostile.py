"""The hostile-input part of the reliability harness: a corpus of hostile images and texts, built in code at run
time (nothing downloaded) and kept under ``work/hostile`` for reproduction, sent to a real ``python -m service`` as
searches (JSON and multipart) and as writes; every answer must be a 2xx or a 4xx with the service's JSON error body,
never a 5xx or a dropped connection. Also: whether ``/healthz`` keeps answering while a 40-megapixel image decodes.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import re
import shutil
import statistics
import struct
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from benchmarks.reliability.config import ReliabilityConfig
from benchmarks.reliability.copies import collection_root_args, copy_index
from benchmarks.reliability.figures import Goal, PartResult
from benchmarks.service_process import Server, serving

KEY = "reliability-hostile-key"
SEARCH = "/v1/search"
ITEMS = "/v1/items"
BOUNDARY = "reliability-hostile-boundary"
REQUEST_TIMEOUT_S = 120.0
HEALTHZ_LIMIT_S = 0.5
HEALTHZ_TIMEOUT_S = 10.0
SLOW_S = 5.0  # an answer slower than this is reported (a cheap input that costs much is a denial of service)
PEAK_RISE_MIB = 256.0  # so is one that raises the server's peak memory this much
EXCERPT = 200
# the big valid image of the stall check: just under the service's default 40,000,000-pixel limit
BIG_SIDE = 6324

# answered: a 2xx with a normal result, or a 4xx with the error body; refused: only the 4xx; accepted: only the 2xx
Expect = Literal["answered", "refused", "accepted"]


# -- the checker -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """What came back: ``status`` None when the connection dropped or timed out (``error`` says how)."""

    status: int | None
    content_type: str = ""
    body: bytes = b""
    seconds: float = 0.0
    error: str | None = None

    @property
    def code(self) -> str | None:
        try:
            return str(json.loads(self.body)["error"]["code"])
        except (ValueError, KeyError, TypeError):
            return None


@dataclass(frozen=True)
class Verdict:
    failure: str | None = None  # None: answered as expected
    fatal: bool = False  # a 5xx or a dropped connection


def _strict_json(body: bytes) -> Any:
    """JSON as RFC 8259 has it: UTF-8, no NaN or Infinity."""

    def no_constant(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    return json.loads(body.decode("utf-8"), parse_constant=no_constant)


def error_body_problem(content_type: str, body: bytes) -> str | None:
    """Why a 4xx/5xx body is not the documented ``{"error": {"code", "message", "request_id"}}``, or None."""
    if not content_type.lower().startswith("application/json"):
        return f"error body is {content_type or 'untyped'}, not application/json"
    try:
        payload = _strict_json(body)
    except ValueError as e:
        return f"error body is not JSON ({e})"
    error = payload.get("error") if isinstance(payload, dict) else None
    if not isinstance(error, dict) or set(payload) != {"error"}:
        return "error body is not {\"error\": {...}}"
    if not isinstance(error.get("code"), str) or not error["code"] or not isinstance(error.get("message"), str):
        return "error body lacks a string code and message"
    if "request_id" not in error or not isinstance(error["request_id"], str | None):
        return "error body lacks a request_id"
    return None


def result_problem(answer: Answer, result_keys: tuple[str, ...]) -> str | None:
    """Why a 2xx is not a normal result (a JSON object with these keys), or None."""
    try:
        payload = _strict_json(answer.body)
    except ValueError as e:
        return f"{answer.status} body is not JSON ({e})"
    missing = [k for k in result_keys if not isinstance(payload, dict) or k not in payload]
    return f"{answer.status} body lacks {', '.join(missing)}" if missing else None


def judge(expect: Expect, answer: Answer, result_keys: tuple[str, ...] = ()) -> Verdict:
    """An answer against what the input deserves."""
    status = answer.status
    if status is None:
        return Verdict(f"dropped: {answer.error}", fatal=True)
    if status >= 500:
        return Verdict(f"{status} {answer.code or ''}".strip(), fatal=True)
    if 200 <= status < 300:
        if expect == "refused":
            return Verdict(f"accepted ({status}); expected a 4xx")
        return Verdict(result_problem(answer, result_keys))
    if 400 <= status < 500:
        problem = error_body_problem(answer.content_type, answer.body)
        if problem is None and expect == "accepted":
            problem = f"refused ({status} {answer.code}); a valid image should be accepted"
        return Verdict(problem)
    return Verdict(f"unexpected status {status}")


# -- the corpus --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One hostile input: image bytes (sent as ``content_type``), a text, or a raw request body."""

    name: str
    expect: Expect
    data: bytes = b""
    content_type: str = "application/octet-stream"
    text: str | None = None


def _saved(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _noise(size: tuple[int, int], seed: int, mode: str = "RGB") -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels).convert(mode)


def _chunk(kind: bytes, data: bytes, *, crc_ok: bool = True) -> bytes:
    crc = zlib.crc32(kind + data) ^ (0 if crc_ok else 0xFFFFFFFF)
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def png_bytes(width: int, height: int, rows: Iterable[bytes] | None, *, bit_depth: int = 8, colour: int = 2,
              crc_ok: bool = True) -> bytes:
    """A PNG assembled by hand: its IHDR as given, its rows (each with its filter byte) streamed through zlib,
    so a huge image costs only its compressed size; rows None: no IDAT at all (a header that lies)."""
    header = _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, bit_depth, colour, 0, 0, 0), crc_ok=crc_ok)
    idat = b""
    if rows is not None:
        packer = zlib.compressobj(9)
        idat = _chunk(b"IDAT", b"".join(packer.compress(row) for row in rows) + packer.flush())
    return b"\x89PNG\r\n\x1a\n" + header + idat + _chunk(b"IEND", b"")


def big_png(side: int = BIG_SIDE) -> bytes:
    """A valid RGB PNG of side x side pixels: a gradient row, then rows 'Up'-filtered to it (tiny compressed)."""
    first = b"\x00" + bytes((x * 7) % 256 for x in range(side * 3))
    return png_bytes(side, side, [first] + [b"\x02" + b"\x00" * (side * 3)] * (side - 1))


def _png_bomb() -> bytes:
    """20000 x 20000 1-bit pixels: 400 megapixels in ~50 KB."""
    row = b"\x00" * (1 + 20000 // 8)
    return png_bytes(20000, 20000, (row for _ in range(20000)), bit_depth=1, colour=0)


def _rgb16_png() -> bytes:
    rows = [b"\x00" + b"".join(struct.pack(">HHH", x * 1000, y * 1000, 65535 - x * 1000) for x in range(32))
            for y in range(32)]
    return png_bytes(32, 32, rows, bit_depth=16, colour=2)


def _patched_jpeg_size(jpeg: bytes, width: int, height: int) -> bytes:
    """The JPEG with its SOF0 frame header claiming another size (the scan data left as it was)."""
    at = jpeg.index(b"\xff\xc0")
    return jpeg[:at + 5] + struct.pack(">HH", height, width) + jpeg[at + 9:]


def _huge_gif() -> bytes:
    """A 2x2 GIF whose logical screen claims 65535 x 65535."""
    gif = _saved(_noise((2, 2), 1, "P"), "GIF")
    return gif[:6] + struct.pack("<HH", 65535, 65535) + gif[10:]


def _huge_webp() -> bytes:
    """A lossless WEBP header claiming 16384 x 16384, then garbage."""
    bits = (16384 - 1) | ((16384 - 1) << 14)
    payload = b"\x2f" + struct.pack("<I", bits) + b"\x00" * 64
    return b"RIFF" + struct.pack("<I", 4 + 8 + len(payload)) + b"WEBPVP8L" + struct.pack("<I", len(payload)) + payload


def _huge_tiff() -> bytes:
    """A little-endian TIFF whose tags claim 100000 x 100000 1-bit pixels in a 16-byte strip."""
    tags = [(256, 4, 100000), (257, 4, 100000), (258, 3, 1), (259, 3, 1), (262, 3, 1), (273, 4, 8),
            (278, 4, 100000), (279, 4, 16)]
    ifd = struct.pack("<H", len(tags)) + b"".join(struct.pack("<HHII", t, k, 1, v) for t, k, v in tags)
    return b"II*\x00" + struct.pack("<I", 24) + b"\x00" * 16 + ifd + b"\x00\x00\x00\x00"


def _frames(count: int) -> list[Image.Image]:
    return [_noise((48, 48), 10 + n) for n in range(count)]


def _exif_rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise
    return _saved(_noise((64, 32), 7), "JPEG", exif=exif.tobytes())


def _palette_transparent_png() -> bytes:
    image = _noise((48, 48), 8, "RGB").convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return _saved(image, "PNG", transparency=0)


def _gray16_png() -> bytes:
    return _saved(Image.fromarray(np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16), "PNG")


def _animated(fmt: str) -> bytes:
    first, *rest = _frames(3)
    return _saved(first, fmt, save_all=True, append_images=rest, duration=100, loop=0)


SVG = (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="64" height="64">'
       b'<rect width="64" height="64" fill="red"/></svg>')
HTML = b"<!doctype html><html><body><img src=x onerror=alert(1)><script>alert(2)</script></body></html>"


def _valid_images() -> Iterator[Sample]:
    rgb = _noise((64, 48), 1)
    yield Sample("png", "accepted", _saved(rgb, "PNG"), "image/png")
    yield Sample("jpeg", "accepted", _saved(rgb, "JPEG", quality=90), "image/jpeg")
    yield Sample("gif", "accepted", _saved(rgb.convert("P"), "GIF"), "image/gif")
    yield Sample("webp", "accepted", _saved(rgb, "WEBP"), "image/webp")
    yield Sample("bmp", "accepted", _saved(rgb, "BMP"), "image/bmp")
    yield Sample("tiff", "answered", _saved(rgb, "TIFF"), "image/tiff")  # refusing the format is fine too
    yield Sample("png-1x1", "accepted", _saved(_noise((1, 1), 2), "PNG"), "image/png")
    yield Sample("png-rgba", "accepted", _saved(_noise((40, 40), 3, "RGBA"), "PNG"), "image/png")
    yield Sample("png-palette-transparency", "accepted", _palette_transparent_png(), "image/png")
    yield Sample("png-16bit-gray", "accepted", _gray16_png(), "image/png")
    yield Sample("png-16bit-rgb", "accepted", _rgb16_png(), "image/png")
    yield Sample("jpeg-cmyk", "accepted", _saved(_noise((48, 48), 4, "CMYK"), "JPEG"), "image/jpeg")
    yield Sample("jpeg-exif-orientation", "accepted", _exif_rotated_jpeg(), "image/jpeg")
    yield Sample("gif-animated", "accepted", _animated("GIF"), "image/gif")
    yield Sample("webp-animated", "accepted", _animated("WEBP"), "image/webp")
    yield Sample("jpeg-garbage-after-eoi", "answered", _saved(rgb, "JPEG") + b"GARBAGE!" * 512, "image/jpeg")
    # a tiny file whose shortest side is 1 pixel: resized to the model's input it becomes a huge image
    yield Sample("png-aspect-2000x1", "answered", _saved(_noise((2000, 1), 5), "PNG"), "image/png")


def _broken_images() -> Iterator[Sample]:
    jpeg, png = _saved(_noise((96, 96), 6), "JPEG", quality=95), _saved(_noise((96, 96), 6), "PNG")
    yield Sample("empty", "refused", b"", "image/png")
    yield Sample("jpeg-truncated", "answered", jpeg[:len(jpeg) * 3 // 5], "image/jpeg")
    yield Sample("png-truncated", "answered", png[:len(png) * 3 // 5], "image/png")
    yield Sample("png-header-only", "refused", png[:33], "image/png")
    yield Sample("png-bad-crc-ihdr", "answered", png_bytes(8, 8, [b"\x00" + b"\x80" * 24] * 8, crc_ok=False),
                 "image/png")
    yield Sample("png-bad-crc-idat", "answered", png[:-16] + bytes(b ^ 0xFF for b in png[-16:-12]) + png[-12:],
                 "image/png")
    yield Sample("png-bomb-1bit-20000x20000", "refused", _png_bomb(), "image/png")
    yield Sample("png-claims-100000x100000", "refused", png_bytes(100000, 100000, None), "image/png")
    yield Sample("jpeg-claims-65500x65500", "refused", _patched_jpeg_size(jpeg, 65500, 65500), "image/jpeg")
    yield Sample("gif-claims-65535x65535", "refused", _huge_gif(), "image/gif")
    yield Sample("webp-claims-16384x16384", "refused", _huge_webp(), "image/webp")
    yield Sample("tiff-claims-100000x100000", "refused", _huge_tiff(), "image/tiff")
    yield Sample("svg-as-png", "refused", SVG, "image/png")
    yield Sample("html-as-png", "refused", HTML, "image/png")


def image_corpus() -> list[Sample]:
    return [*_valid_images(), *_broken_images()]


def text_corpus() -> list[Sample]:
    """Texts sent as a JSON string (json.dumps escapes a lone surrogate as \\ud800) and as a multipart field."""
    return [
        Sample("text-control-characters", "answered", text="red \x01\x02\x1b[31m square\x7f\x08"),
        Sample("text-nul", "answered", text="red\x00square"),
        # not escaped by json.dumps(ensure_ascii=False), and str.splitlines() splits on each of them
        Sample("text-line-separators", "answered", text="red\u2028square\u2029blue\x85dot\x1cend"),
        Sample("text-100k-characters", "refused", text="red square " * 10_000),
        Sample("text-lone-surrogate", "answered", text="\ud800 red square"),
        Sample("text-rtl-arabic-hebrew", "answered",
               text="\u202e\u200fكلب أحمر \u05db\u05dc\u05d1 \u05d0\u05d3\u05d5\u05dd"),
        Sample("text-only-stopwords", "answered", text="the a of"),
        Sample("text-only-punctuation", "answered", text="?!.,;:-()[]{}'\"…"),
        Sample("text-emoji-zwj", "answered", text="👨‍👩‍👧‍👦 🏳️‍🌈 🐕‍🦺 red dog"),
        Sample("text-combining-x10000", "refused", text="a" + "\u0301" * 10_000),
        Sample("text-whitespace-only", "refused", text=" \t\n\u00a0\u2003\u3000 "),
    ]


def _json_with(raw_value: str) -> bytes:
    return ('{"text": "red square", ' + raw_value + "}").encode()


def raw_json_corpus() -> list[Sample]:
    """Bodies sent as application/json byte for byte, to a search and to a write."""
    deep = "[" * 5000 + "]" * 5000
    return [
        Sample("json-invalid-utf8", "refused", b'{"text": "red \xff\xfe square"}'),
        Sample("json-bom-prefixed", "answered", b'\xef\xbb\xbf{"text": "red square"}'),
        Sample("json-top-k-5000-digits", "refused", _json_with('"top_k": 1' + "0" * 4999)),
        Sample("json-w-dense-5000-digits", "refused", _json_with('"w_dense": 1' + "0" * 4999)),
        Sample("json-nested-5000-array-field", "refused", _json_with('"x": ' + deep)),
        Sample("json-nested-5000-object-field", "refused", _json_with('"x": ' + '{"a": ' * 5000 + "1" + "}" * 5000)),
        Sample("json-nested-5000-body", "refused", deep.encode()),
        Sample("json-nested-5000-metadata", "refused", _json_with('"metadata": ' + '{"a": ' * 5000 + "1" + "}" * 5000)),
        Sample("json-top-k-true", "refused", _json_with('"top_k": true')),
        Sample("json-explain-yes", "refused", _json_with('"explain": "yes"')),
        Sample("json-w-dense-nan", "refused", _json_with('"w_dense": NaN')),
        Sample("json-w-sparse-infinity", "refused", _json_with('"w_sparse": Infinity')),
        Sample("json-duplicate-keys", "answered", b'{"text": "red square", "text": "blue dot"}'),
    ]


def raw_multipart_corpus() -> list[Sample]:
    """Multipart fields whose bytes are not UTF-8 (a lone surrogate's WTF-8 bytes among them)."""
    return [
        Sample("multipart-text-invalid-utf8", "refused", b"red \xff\xfe square"),
        Sample("multipart-text-surrogate-bytes", "refused", b"\xed\xa0\x80 red square"),
    ]


# -- the requests ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Probe:
    """One request of the corpus: its input, how it is sent, and what a right answer looks like."""

    name: str
    route: str  # search-json, search-multipart, write-json, write-multipart
    path: str
    body: bytes
    content_type: str
    expect: Expect
    result_keys: tuple[str, ...]
    write: bool


SEARCH_KEYS = ("hits", "query", "request_id")
WRITE_KEYS = ("seq", "id", "written")


Upload = tuple[str, str, bytes, str]  # field name, file name, bytes, content type


def multipart(fields: Sequence[tuple[str, bytes]], files: Sequence[Upload] = ()) -> tuple[bytes, str]:
    """A multipart/form-data body from raw field bytes (not necessarily UTF-8) and files."""
    parts = [f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode() + value + b"\r\n"
             for name, value in fields]
    parts += [f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
              f"Content-Type: {kind}\r\n\r\n".encode() + data + b"\r\n" for name, filename, data, kind in files]
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode(), f"multipart/form-data; boundary={BOUNDARY}"


def _json_probe(sample: Sample, route: str, payload: dict[str, Any]) -> Probe:
    write = route.startswith("write")
    return Probe(sample.name, route, ITEMS if write else SEARCH, json.dumps(payload).encode(), "application/json",
                 sample.expect, WRITE_KEYS if write else SEARCH_KEYS, write)


def _multipart_probe(sample: Sample, route: str, fields: Sequence[tuple[str, bytes]],
                     files: Sequence[Upload] = ()) -> Probe:
    body, content_type = multipart(fields, files)
    write = route.startswith("write")
    return Probe(sample.name, route, ITEMS if write else SEARCH, body, content_type, sample.expect,
                 WRITE_KEYS if write else SEARCH_KEYS, write)


def _metadata(sample: Sample) -> bytes:
    return json.dumps({"hostile": sample.name}).encode()


def image_probes(sample: Sample) -> list[Probe]:
    extension = sample.content_type.split("/")[-1]
    upload = [("image", f"{sample.name}.{extension}", sample.data, sample.content_type)]
    return [
        _json_probe(sample, "search-json", {"image_base64": base64.b64encode(sample.data).decode(), "top_k": 3}),
        _multipart_probe(sample, "search-multipart", [("top_k", b"3")], upload),
        _multipart_probe(sample, "write-multipart", [("captions", b"a hostile image"), ("metadata", _metadata(sample))],
                         upload),
    ]


def text_probes(sample: Sample) -> list[Probe]:
    assert sample.text is not None
    as_bytes = sample.text.encode("utf-8", "surrogatepass")  # a lone surrogate's bytes are not UTF-8: a 4xx
    expect: Expect = "refused" if as_bytes != sample.text.encode("utf-8", "ignore") else sample.expect
    return [
        _json_probe(sample, "search-json", {"text": sample.text, "top_k": 3}),
        _multipart_probe(Sample(sample.name, expect), "search-multipart", [("text", as_bytes), ("top_k", b"3")]),
        _json_probe(sample, "write-json", {"text": sample.text, "metadata": {"hostile": sample.name}}),
    ]


def raw_json_probes(sample: Sample) -> list[Probe]:
    return [Probe(sample.name, route, path, sample.data, "application/json", sample.expect, keys, path == ITEMS)
            for route, path, keys in (("search-json", SEARCH, SEARCH_KEYS), ("write-json", ITEMS, WRITE_KEYS))]


def raw_multipart_probes(sample: Sample) -> list[Probe]:
    image = [("image", "ok.png", _saved(_noise((32, 32), 9), "PNG"), "image/png")]
    return [
        _multipart_probe(sample, "search-multipart", [("text", sample.data)]),
        _multipart_probe(sample, "write-multipart", [("text", sample.data)]),
        _multipart_probe(Sample(sample.name + "-caption", sample.expect), "write-multipart",
                         [("captions", sample.data)], image),
        _multipart_probe(Sample(sample.name + "-metadata", sample.expect), "write-multipart",
                         [("text", b"red square"), ("metadata", b'{"k": "' + sample.data + b'"}')]),
    ]


def json_field_probes() -> list[Probe]:
    """Multipart fields the service parses as JSON (metadata, a captions list) holding what breaks a JSON parser."""
    digits, deep = b"1" + b"0" * 4999, b"[" * 5000 + b"]" * 5000
    image = [("image", "ok.png", _saved(_noise((32, 32), 9), "PNG"), "image/png")]
    text = [("text", b"red square")]
    return [
        _multipart_probe(Sample("multipart-metadata-5000-digits", "refused"), "write-multipart",
                         [*text, ("metadata", b'{"n": ' + digits + b"}")]),
        _multipart_probe(Sample("multipart-metadata-nested-5000", "refused"), "write-multipart",
                         [*text, ("metadata", b'{"n": ' + deep + b"}")]),
        # a caption that only looks like a JSON list stays a caption: refusing or accepting it are both right
        _multipart_probe(Sample("multipart-captions-5000-digits", "answered"), "write-multipart",
                         [("captions", b"[" + digits + b"]")], image),
        _multipart_probe(Sample("multipart-captions-nested-5000", "answered"), "write-multipart",
                         [("captions", deep)], image),
        _multipart_probe(Sample("multipart-top-k-5000-digits", "refused"), "search-multipart",
                         [*text, ("top_k", digits)]),
    ]


def all_probes() -> list[Probe]:
    probes = [p for s in image_corpus() for p in image_probes(s)]
    probes += [p for s in text_corpus() for p in text_probes(s)]
    probes += [p for s in raw_json_corpus() for p in raw_json_probes(s)]
    probes += [p for s in raw_multipart_corpus() for p in raw_multipart_probes(s)]
    return probes + json_field_probes()


def save_corpus(probes: list[Probe], folder: Path) -> None:
    """Each request's exact body, and a manifest of how it is sent and what it should get."""
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "requests").mkdir(parents=True)
    for sample in image_corpus():
        (folder / "images").mkdir(exist_ok=True)
        (folder / "images" / f"{sample.name}.{sample.content_type.split('/')[-1]}").write_bytes(sample.data)
    manifest = []
    for probe in probes:
        body_file = folder / "requests" / f"{probe.name}.{probe.route}.bin"
        body_file.write_bytes(probe.body)
        manifest.append({"name": probe.name, "route": probe.route, "method": "POST", "path": probe.path,
                         "content_type": probe.content_type, "body": str(body_file.relative_to(folder)),
                         "expect": probe.expect, "needs_key": probe.write})
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1))


# -- sending -----------------------------------------------------------------------------------------------------


def send(server: Server, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
         timeout: float = REQUEST_TIMEOUT_S) -> Answer:
    started = time.perf_counter()
    try:
        reply = server.request(method, path, body, headers, timeout=timeout)
    except (OSError, http.client.HTTPException) as e:  # reset, refused, timed out, cut short
        return Answer(None, seconds=time.perf_counter() - started, error=f"{type(e).__name__}: {e}")
    return Answer(reply.status, reply.headers.get("content-type", ""), reply.body, time.perf_counter() - started)


def send_probe(server: Server, probe: Probe) -> Answer:
    headers = {"Content-Type": probe.content_type}
    if probe.write:
        headers["Authorization"] = f"Bearer {KEY}"
    return send(server, "POST", probe.path, probe.body, headers)


def rss_mib(pid: int, field: str = "VmRSS") -> float | None:
    """A process's resident memory (Linux; VmHWM: its peak so far), None where it cannot be read."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class ServerLog:
    """The server's log, read from where it was before a request: the exception a 5xx left behind."""

    EXCEPTION = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit)\b.*")

    def __init__(self, path: Path) -> None:
        self.path = path

    def offset(self) -> int:
        try:
            return self.path.stat().st_size
        except OSError:
            return 0

    def exception_since(self, offset: int) -> str:
        try:
            with self.path.open("rb") as handle:
                handle.seek(offset)
                lines = handle.read().decode("utf-8", "replace").splitlines()
        except OSError:
            return ""
        found = [line for line in lines if self.EXCEPTION.match(line)]
        return found[-1][:EXCERPT] if found else ""


# -- what the writes left behind ---------------------------------------------------------------------------------

LOG_ERROR = re.compile(r"^\d{4}-\d\d-\d\d [\d:,]+ \| (ERROR|CRITICAL) \| ([\w.]+) \| (.*)")
HANDLED_5XX = "internal error on "  # the 5xx handler's own line: counted where the 5xx was seen


def logged_errors(path: Path) -> Counter[str]:
    """Each distinct error the server logged (its message and the exception ending its traceback), but the
    lines of 5xx answers: a failure in the background (a compaction) answers no request."""
    found: Counter[str] = Counter()
    current: str | None = None
    exception = ""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return found
    for line in [*lines, "0000-00-00 00:00:00,000 | INFO | end | end"]:
        head = LOG_ERROR.match(line)
        if head is not None or re.match(r"^\d{4}-\d\d-\d\d ", line):
            if current is not None:
                found[f"{current}{f' [{exception}]' if exception else ''}"] += 1
            current, exception = None, ""
            if head is not None and not head.group(3).startswith(HANDLED_5XX):
                current = f"{head.group(2)}: {head.group(3)[:EXCERPT]}"
        elif current is not None and ServerLog.EXCEPTION.match(line):
            exception = line[:EXCERPT]
    return found


def _compaction_state(server: Server, auth: dict[str, str], timeout: float) -> dict[str, Any] | None:
    """The compaction's state once none is running (None: still running at the timeout)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answer = send(server, "GET", "/v1/collection", None, auth)
        state = json.loads(answer.body).get("compaction", {}) if answer.status == 200 else {}
        if answer.status == 200 and not state.get("running"):
            return state
        time.sleep(0.5)
    return None


def compaction_error(server: Server, key: str, timeout: float = 600.0) -> str | None:
    """Compact everything the run wrote (after any automatic compaction still running, which began before the
    last writes) and wait for it: the compaction's error, or None."""
    auth = {"Authorization": f"Bearer {key}"}
    for _ in range(3):
        started = send(server, "POST", "/v1/compact", b"", auth)
        if started.status not in (202, 409):
            return f"POST /v1/compact answered {started.status} {_excerpt(started.body)}"
        state = _compaction_state(server, auth, timeout)
        if state is None:
            return f"compaction still running after {timeout:.0f} s"
        if started.status == 202:
            return state.get("last_error")
    return "POST /v1/compact kept answering 409 (a compaction always running)"


def ready_problem(server: Server, timeout: float = 300.0) -> str | None:
    """Wait for /readyz: why the index is not served (the error that stopped its load), or None once it is."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answer = send(server, "GET", "/readyz", timeout=10)
        if answer.status == 200:
            return None
        try:
            reason = json.loads(answer.body).get("reason") if answer.status == 503 else None
        except ValueError:
            reason = None
        if reason and reason != "loading":
            return str(reason)[:EXCERPT * 2]
        time.sleep(0.5)
    return f"not ready after {timeout:.0f} s"


def reload_problem(index: Path, log: Path, args: tuple[str, ...] = ()) -> str | None:
    """Whether the index the run wrote to loads again in a fresh server: why not, or None."""
    try:
        with serving(index, log, args=args) as server:
            return ready_problem(server)
    except (RuntimeError, TimeoutError) as e:
        return f"the server did not start: {str(e)[-EXCERPT:]}"


@contextmanager
def serving_ready(index: Path, log: Path, args: tuple[str, ...]) -> Iterator[Server]:
    """A started server whose index is loaded (a run would otherwise measure a server still loading)."""
    with serving(index, log, args=args) as server:
        problem = ready_problem(server)
        if problem is not None:
            raise RuntimeError(f"the index did not load: {problem}")
        yield server


def aftermath(part: str, compaction: str | None, log: Path, reload: str | None) -> tuple[dict[str, Any], list[str]]:
    """Figures and findings of what the writes left behind: a failed compaction, errors in the log, an index
    that no longer loads."""
    errors = logged_errors(log)
    findings = [f"{part} aftermath: the final compaction failed: {compaction}"] if compaction else []
    findings += [f"{part} aftermath: the server logged {message} ({count}x)" for message, count in errors.items()]
    if reload is not None:
        findings.append(f"{part} aftermath: the index the run wrote to does not load again: {reload}")
    return {"compaction_error": compaction, "logged_errors": sum(errors.values()), "reloads": reload is None}, findings


# -- the run -----------------------------------------------------------------------------------------------------


@dataclass
class Tally:
    answers: list[dict[str, Any]] = field(default_factory=list)
    findings: dict[tuple[str, str, str], str] = field(default_factory=dict)
    fatal: int = 0
    wrong: int = 0
    costly: int = 0  # answered as expected, but slowly or with a jump of the server's peak memory


def _excerpt(body: bytes) -> str:
    return body[:EXCERPT].decode("utf-8", "replace")


def _cost(answer: Answer, peak_rise: float) -> str | None:
    if answer.seconds > SLOW_S:
        return f"slow: answered {answer.status} after {answer.seconds:.1f} s"
    if peak_rise > PEAK_RISE_MIB:
        return f"costly: answered {answer.status}, the server's peak memory rose {peak_rise:.0f} MiB"
    return None


def _record(tally: Tally, probe: Probe, answer: Answer, verdict: Verdict, exception: str, folder: Path,
            peak_rise: float = 0.0) -> None:
    tally.answers.append({"name": probe.name, "route": probe.route, "status": answer.status, "code": answer.code,
                          "seconds": round(answer.seconds, 4), "peak_rise_mib": round(peak_rise, 1),
                          "expect": probe.expect, "failure": verdict.failure})
    problem = verdict.failure
    if problem is None and _cost(answer, peak_rise) is not None:
        tally.costly += 1
        problem = _cost(answer, peak_rise)
    elif verdict.fatal:
        tally.fatal += 1
    elif problem is not None:
        tally.wrong += 1
    if problem is None:
        return
    key = (probe.name, probe.route, problem)
    tally.findings.setdefault(key, (
        f"hostile {probe.name} via {probe.route}: {problem}{f' [{exception}]' if exception else ''}; expected "
        f"{probe.expect}; reproduce: POST {probe.path} Content-Type: {probe.content_type.split(';')[0]} with "
        f"{folder.name}/requests/{probe.name}.{probe.route}.bin{' (with the key)' if probe.write else ''}; "
        f"answer: {answer.status} {_excerpt(answer.body) or answer.error}"))


def run_corpus(server: Server, probes: list[Probe], repeats: int, folder: Path) -> Tally:
    tally, log, pid = Tally(), ServerLog(server.log_path), server.process.pid
    for _ in range(repeats):
        for probe in probes:
            offset, peak = log.offset(), rss_mib(pid, "VmHWM")
            answer = send_probe(server, probe)
            verdict = judge(probe.expect, answer, probe.result_keys)
            exception = log.exception_since(offset) if verdict.fatal else ""
            after = rss_mib(pid, "VmHWM")
            rise = after - peak if after is not None and peak is not None else 0.0
            _record(tally, probe, answer, verdict, exception, folder, rise)
    return tally


def healthz_during(server: Server, request: Callable[[], Answer], interval: float = 0.02) -> dict[str, Any]:
    """The worst /healthz latency while ``request`` runs in another thread (a blocked event loop shows here)."""
    done: list[Answer] = []
    worker = threading.Thread(target=lambda: done.append(request()), daemon=True)
    worker.start()
    latencies = []
    while worker.is_alive():
        answer = send(server, "GET", "/healthz", timeout=HEALTHZ_TIMEOUT_S)
        latencies.append(answer.seconds if answer.status == 200 else HEALTHZ_TIMEOUT_S)
        time.sleep(interval)
    worker.join()
    big = done[0] if done else Answer(None, error="no answer")
    return {"max_healthz_s": round(max(latencies, default=0.0), 4), "polls": len(latencies),
            "request_status": big.status, "request_code": big.code, "request_s": round(big.seconds, 3)}


def stall_check(server: Server, repeats: int) -> dict[str, Any]:
    """/healthz while a 40-megapixel PNG is decoded, by a search and by a write."""
    sample = Sample(f"big-{BIG_SIDE}x{BIG_SIDE}", "accepted", big_png(), "image/png")
    search, _, write = image_probes(sample)
    rounds = {route.route: [healthz_during(server, lambda p=route: send_probe(server, p)) for _ in range(repeats)]
              for route in (search, write)}
    worst = max(r["max_healthz_s"] for runs in rounds.values() for r in runs)
    return {"image": f"{BIG_SIDE}x{BIG_SIDE} PNG, {len(sample.data)} bytes", "max_healthz_s": worst,
            "rounds": rounds}


def _stall_findings(stall: dict[str, Any]) -> list[str]:
    found = []
    for route, runs in stall["rounds"].items():
        for run in runs:
            if run["max_healthz_s"] > HEALTHZ_LIMIT_S:
                found.append(f"hostile stall: /healthz took {run['max_healthz_s']:.2f} s while POST {route} decoded "
                             f"a {stall['image']} (event loop blocked by the decode; limit {HEALTHZ_LIMIT_S} s)")
            if run["request_status"] is None or not 200 <= run["request_status"] < 300:
                found.append(f"hostile stall: the big valid image via {route} got {run['request_status']} "
                             f"{run['request_code']} (expected 2xx)")
    return found


def _figures(tally: Tally, probes: list[Probe], rss: tuple[float | None, float | None],
             stall: dict[str, Any], folder: Path) -> dict[str, Any]:
    seconds = [a["seconds"] for a in tally.answers]
    before, after = rss
    return {
        "inputs": len(probes), "sent": len(tally.answers), "corpus": str(folder),
        "statuses": dict(Counter(str(a["status"]) for a in tally.answers)),
        "answered_5xx_or_dropped": tally.fatal, "answered_wrongly": tally.wrong,
        "slow_or_costly": tally.costly,
        "latency_s": {"median": round(statistics.median(seconds), 4) if seconds else None,
                      "max": round(max(seconds, default=0.0), 4)},
        "rss_mib_before": before, "rss_mib_after": after,
        "rss_growth_mib": round(after - before, 1) if before is not None and after is not None else None,
        "healthz_during_big_decode": stall, "answers": tally.answers,
    }


def _goals(tally: Tally, stall: dict[str, Any]) -> list[Goal]:
    return [
        Goal(name="hostile inputs answered 5xx or dropped", target="0", value=tally.fatal, met=tally.fatal == 0),
        Goal(name="hostile inputs answered wrongly (an expected 4xx accepted, a valid image refused, a 4xx "
             "without the JSON error body)", target="0", value=tally.wrong, met=tally.wrong == 0),
        Goal(name="healthz stalls during big decode", target=f"max latency <= {HEALTHZ_LIMIT_S} s",
             value=stall["max_healthz_s"], met=stall["max_healthz_s"] <= HEALTHZ_LIMIT_S),
    ]


def run_hostile(config: ReliabilityConfig) -> PartResult:
    started = time.monotonic()
    folder = config.work / "hostile"
    probes = all_probes()
    save_corpus(probes, folder)
    index = copy_index(config.index, config.work / "hostile-index")
    args = collection_root_args(config.index)
    # no automatic compaction: the one at the end compacts every write of the corpus, and only once
    served = ("--api-key", KEY, "--auto-compact-ratio", "0", *args)
    with serving_ready(index, folder / "server.log", served) as server:
        send_probe(server, image_probes(image_corpus()[0])[0])  # warm: the first image search allocates the most
        before = rss_mib(server.process.pid)
        tally = run_corpus(server, probes, config.budget.hostile_repeats, folder)
        after = rss_mib(server.process.pid)
        stall = stall_check(server, config.budget.hostile_repeats)
        compaction = compaction_error(server, KEY)
    left, left_findings = aftermath("hostile", compaction, folder / "server.log",
                                    reload_problem(index, folder / "reload.log", args))
    findings = list(tally.findings.values()) + _stall_findings(stall) + left_findings
    figures = {**_figures(tally, probes, (before, after), stall, folder), "aftermath": left}
    return PartResult(part="hostile", goals=_goals(tally, stall), findings=findings, figures=figures,
                      seconds=round(time.monotonic() - started, 2))
