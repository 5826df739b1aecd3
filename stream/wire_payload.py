"""Label-map payload encodings of the wire format (``docs/wire-format.md``).

The map is (H, W) uint8 class ids, C order (row-major):

    raw   H*W bytes.
    rle   uint32 LE run count N, then N uint32 LE run lengths (each >= 1, summing to H*W),
          then N uint8 values. Runs follow the flattened map and may cross rows.
          Total 4 + 5*N bytes.
    zstd  exactly one zstd frame whose header declares Frame_Content_Size = H*W and, from
          version 1.1 on (``"v_minor": 1``), carries a content checksum that decoders verify.

Decoders check the layout against the header's shape and raise :class:`WireError` (the
wire format's one error type, defined here, at the bottom, and re-exported by
:mod:`stream.wire`) naming the problem; decompression bombs are refused.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import zstandard

if TYPE_CHECKING:
    from stream.wire import LabelsHeader

ENCODINGS = ("raw", "rle", "zstd")
Buffer = bytes | bytearray | memoryview


class WireError(ValueError):
    """A message that does not follow the wire format; the text says what is wrong."""


def rle_encode(labels: np.ndarray) -> bytes:
    """(H, W) uint8 -> RLE bytes (layout in the module docstring), vectorised."""
    flat = np.ascontiguousarray(labels).reshape(-1)  # (H*W,)
    starts = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    starts = np.concatenate(([0], starts))  # (N,) first index of each run
    lengths = np.diff(np.append(starts, flat.size)).astype("<u4")  # (N,)
    values = flat[starts]  # (N,) uint8
    return b"".join((np.uint32(starts.size).astype("<u4").tobytes(), lengths.tobytes(),
                     values.tobytes()))


def rle_decode(payload: Buffer, size: int) -> np.ndarray:
    """RLE bytes -> flat (size,) uint8; checks the layout and that runs cover ``size``."""
    buf = memoryview(payload).cast("B")
    if len(buf) < 4:
        raise WireError(f"rle payload of {len(buf)} bytes is shorter than its 4-byte run count")
    n = int(np.frombuffer(buf, "<u4", count=1)[0])
    if n < 1 or n > size:
        raise WireError(f"rle run count {n} is impossible for {size} pixels")
    if len(buf) != 4 + 5 * n:
        raise WireError(f"rle payload is {len(buf)} bytes but {n} runs need {4 + 5 * n}")
    lengths = np.frombuffer(buf, "<u4", count=n, offset=4)
    values = np.frombuffer(buf, np.uint8, count=n, offset=4 + 4 * n)
    if int(lengths.min()) == 0:
        raise WireError("rle run of length 0")
    total = int(lengths.sum(dtype=np.uint64))
    if total != size:
        raise WireError(f"rle runs cover {total} pixels, shape needs {size}")
    return np.repeat(values, lengths)


def _zstd_frame_end(buf: memoryview) -> int:
    """Byte length of the single zstd frame at the start of ``buf`` (walks block headers)."""
    pos = zstandard.frame_header_size(buf)
    has_checksum = bool(buf[4] & 0x04)
    while True:
        if pos + 3 > len(buf):
            raise WireError("zstd payload truncated inside a block header")
        bh = buf[pos] | (buf[pos + 1] << 8) | (buf[pos + 2] << 16)
        last, btype, bsize = bh & 1, (bh >> 1) & 3, bh >> 3
        if btype == 3:
            raise WireError("zstd payload has a reserved block type")
        pos += 3 + (1 if btype == 1 else bsize)
        if last:
            return pos + (4 if has_checksum else 0)


def zstd_decode(payload: Buffer, size: int, dctx: zstandard.ZstdDecompressor, *,
                require_checksum: bool = False) -> np.ndarray:
    """One zstd frame declaring ``size`` bytes -> flat (size,) uint8; bombs are refused.

    A content checksum, when present, is verified (a corrupted payload is an error, not a
    wrong map); ``require_checksum`` (wire 1.1 messages) refuses frames without one.
    """
    buf = memoryview(payload).cast("B")
    try:
        declared = zstandard.frame_content_size(buf)
        end = _zstd_frame_end(buf)
        if declared != size:
            what = "no content size" if declared < 0 else f"content size {declared}"
            raise WireError(f"zstd frame declares {what}; shape needs exactly {size} bytes")
        if end != len(buf):
            raise WireError(f"zstd payload has {len(buf) - end} bytes after its frame")
        if require_checksum and not buf[4] & 0x04:
            raise WireError("zstd frame has no content checksum; wire format 1.1 requires one")
        out = dctx.decompress(buf, max_output_size=size)
    except zstandard.ZstdError as e:
        raise WireError(f"zstd payload is corrupt: {e}") from None
    if len(out) != size:
        raise WireError(f"zstd payload decompressed to {len(out)} bytes, shape needs {size}")
    return np.frombuffer(out, np.uint8)


class PayloadEncoder:
    """(H, W) uint8 label map -> payload buffer in one encoding. Not thread-safe.

    ``raw`` returns a view of the array itself (zero-copy when sent with ``copy=False``),
    so the caller must not modify the map after handing it over.
    """

    def __init__(self, encoding: str = "zstd", *, zstd_level: int = 1) -> None:
        if encoding not in ENCODINGS:
            raise ValueError(f"encoding must be one of {list(ENCODINGS)}, got {encoding!r}")
        if not 1 <= zstd_level <= 22:
            raise ValueError(f"zstd_level must be 1..22 (1-3 are fast), got {zstd_level}")
        self.encoding = encoding
        self._cctx = zstandard.ZstdCompressor(level=zstd_level, write_content_size=True,
                                              write_checksum=True)

    def encode(self, labels: np.ndarray) -> Buffer:
        labels = np.ascontiguousarray(labels)
        if self.encoding == "raw":
            return memoryview(labels).cast("B")
        if self.encoding == "rle":
            return rle_encode(labels)
        return self._cctx.compress(labels)


class PayloadDecoder:
    """Payload bytes + header -> (H, W) uint8 label map, validated. Not thread-safe."""

    def __init__(self) -> None:
        self._dctx = zstandard.ZstdDecompressor()

    def decode(self, header: LabelsHeader, payload: Buffer) -> np.ndarray:
        h, w = header.shape
        size = h * w
        if header.encoding == "raw":
            n = memoryview(payload).nbytes
            if n != size:
                raise WireError(f"raw payload is {n} bytes, shape {h}x{w} needs {size}")
            flat = np.frombuffer(payload, np.uint8)
        elif header.encoding == "rle":
            flat = rle_decode(payload, size)
        else:
            flat = zstd_decode(payload, size, self._dctx, require_checksum=header.minor >= 1)
        return flat.reshape(h, w)
