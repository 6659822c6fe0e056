"""Content credentials in the tests: the c2pa library's own Reader (a third party's view of an
exported image), and PNG files tampered with chunk by chunk (valid PNGs, CRCs fixed, so
only the C2PA checks can notice)."""

from __future__ import annotations

import io
import json
import struct
import zlib

import c2pa


def read_store(data: bytes, trust_anchor_pem: str | None = None, fmt: str = "image/png") -> dict:
    """The manifest store as the c2pa library's Reader gives it (validated on reading), offline."""
    settings = {"verify": {"remote_manifest_fetch": False, "ocsp_fetch": False}}
    if trust_anchor_pem:
        settings["trust"] = {"user_anchors": trust_anchor_pem}
    with c2pa.Context.from_dict(settings) as context, c2pa.Reader(fmt, io.BytesIO(data), context=context) as reader:
        return json.loads(reader.json())


def active_manifest(store: dict) -> dict:
    return store["manifests"][store["active_manifest"]]


def assertion(manifest: dict, label: str) -> dict:
    return next(a["data"] for a in manifest["assertions"] if a["label"] == label)


def failure_codes(store: dict) -> list[str]:
    return [f["code"] for f in store["validation_results"]["activeManifest"]["failure"]]


def chunks(data: bytes) -> list[tuple[bytes, int, int]]:
    """(type, offset, length) of every chunk of a PNG."""
    out, offset = [], 8
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset:offset + 4])
        out.append((data[offset + 4:offset + 8], offset, length))
        offset += 12 + length
    return out


def _replace_chunk(data: bytes, kind: bytes, body: bytes) -> bytes:
    _, offset, length = next(c for c in chunks(data) if c[0] == kind)
    chunk = struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return data[:offset] + chunk + data[offset + 12 + length:]


def _chunk_body(data: bytes, kind: bytes) -> bytes:
    _, offset, length = next(c for c in chunks(data) if c[0] == kind)
    return data[offset + 8:offset + 8 + length]


def tamper_pixels(data: bytes) -> bytes:
    """The PNG with one pixel byte changed (IDAT re-compressed, a valid PNG)."""
    raw = bytearray(zlib.decompress(_chunk_body(data, b"IDAT")))
    raw[2] ^= 0x5A  # the first row's second byte (after the filter byte)
    return _replace_chunk(data, b"IDAT", zlib.compress(bytes(raw)))


def tamper_manifest(data: bytes, old: bytes, new: bytes) -> bytes:
    """The PNG with bytes `old` inside its C2PA manifest (caBX chunk) replaced by `new` (same length)."""
    assert len(old) == len(new)
    body = _chunk_body(data, b"caBX")
    assert old in body, old
    return _replace_chunk(data, b"caBX", body.replace(old, new, 1))


def truncate_manifest(data: bytes) -> bytes:
    """The PNG with its caBX chunk cut to half (a corrupt manifest)."""
    body = _chunk_body(data, b"caBX")
    return _replace_chunk(data, b"caBX", body[:len(body) // 2])
