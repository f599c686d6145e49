"""A strict, memory-mapped safetensors reader and a streaming writer.

Reading maps the file and hands out NumPy views of the mapping, so a 13 GB checkpoint costs no
anonymous memory: pages are read from the page cache when touched. bf16 has no NumPy dtype, so
bf16 tensors are returned as uint16 views of their bits (see `bf16_to_f32`).

Every header is validated against the file before any tensor is handed out: the header length,
the JSON, each dtype and shape, and each tensor's byte range (inside the data area, of the size the
shape implies, not overlapping another). Errors name the file and tensor.

The writer takes every tensor's name, dtype and shape up front, writes the header, then accepts
each tensor's bytes in order as a stream of chunks, so a checkpoint of any size is written with
bounded memory.
"""
from __future__ import annotations

import json
import mmap
import os
import struct
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

# safetensors dtype -> (NumPy dtype of the stored bits, itemsize)
DTYPES: Dict[str, np.dtype] = {
    "BF16": np.dtype("<u2"),
    "F16": np.dtype("<f2"),
    "F32": np.dtype("<f4"),
    "F64": np.dtype("<f8"),
    "U8": np.dtype("u1"),
    "I8": np.dtype("i1"),
    "I16": np.dtype("<i2"),
    "I32": np.dtype("<i4"),
    "I64": np.dtype("<i8"),
    "U16": np.dtype("<u2"),
    "U32": np.dtype("<u4"),
    "U64": np.dtype("<u8"),
    "BOOL": np.dtype("?"),
}

MAX_HEADER_BYTES = 100 * 1024 * 1024


class SafetensorsError(ValueError):
    """A safetensors file is truncated, malformed, or lies about its contents."""


class TensorInfo:
    __slots__ = ("name", "dtype", "shape", "begin", "end")

    def __init__(self, name: str, dtype: str, shape: Tuple[int, ...], begin: int, end: int):
        self.name, self.dtype, self.shape, self.begin, self.end = name, dtype, shape, begin, end

    def __repr__(self):
        return f"TensorInfo({self.name!r}, {self.dtype}, {self.shape})"


class SafetensorsFile:
    """One memory-mapped safetensors file. `get(name)` returns a read-only view, no copy."""

    def __init__(self, path: str):
        self.path = path
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            raise SafetensorsError(f"{path}: no such file") from None
        try:
            size = os.fstat(fd).st_size
            if size < 8:
                raise SafetensorsError(f"{path}: truncated: {size} bytes, shorter than the "
                                       "8-byte header length")
            n = struct.unpack("<Q", os.pread(fd, 8, 0))[0]
            if n > MAX_HEADER_BYTES:
                raise SafetensorsError(f"{path}: header length {n} is implausibly large "
                                       f"(limit {MAX_HEADER_BYTES}); file corrupt?")
            if 8 + n > size:
                raise SafetensorsError(f"{path}: truncated: header says {n} bytes of JSON but "
                                       f"the file holds {size - 8} after the length")
            raw = os.pread(fd, n, 8)
            self._mm = mmap.mmap(fd, 0, access=mmap.ACCESS_READ) if size > 0 else None
        finally:
            os.close(fd)
        self.size = size
        self.data_start = 8 + n
        try:
            header = json.loads(raw.decode("utf-8").rstrip(" \x00"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise SafetensorsError(f"{path}: header is not valid JSON: {e}") from None
        if not isinstance(header, dict):
            raise SafetensorsError(f"{path}: header must be a JSON object")
        self.metadata = header.pop("__metadata__", None) or {}
        self.tensors: Dict[str, TensorInfo] = {}
        data_len = size - self.data_start
        spans = []
        for name, info in header.items():
            where = f"{path}: tensor {name!r}"
            if not isinstance(info, dict):
                raise SafetensorsError(f"{where}: entry must be an object")
            dtype = info.get("dtype")
            if dtype not in DTYPES:
                raise SafetensorsError(f"{where}: unknown dtype {dtype!r}")
            shape = info.get("shape")
            if not isinstance(shape, list) or not all(
                    isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
                raise SafetensorsError(f"{where}: bad shape {shape!r}")
            offs = info.get("data_offsets")
            if (not isinstance(offs, list) or len(offs) != 2
                    or not all(isinstance(o, int) and not isinstance(o, bool) for o in offs)):
                raise SafetensorsError(f"{where}: bad data_offsets {offs!r}")
            begin, end = offs
            nbytes = int(np.prod(shape, dtype=np.int64)) * DTYPES[dtype].itemsize
            if not 0 <= begin <= end:
                raise SafetensorsError(f"{where}: data_offsets {offs} are out of order")
            if end - begin != nbytes:
                raise SafetensorsError(f"{where}: data_offsets {offs} span {end - begin} bytes "
                                       f"but {dtype}{shape} needs {nbytes}")
            if end > data_len:
                raise SafetensorsError(f"{where}: truncated file: tensor ends at byte "
                                       f"{self.data_start + end} but the file has {size} bytes")
            self.tensors[name] = TensorInfo(name, dtype, tuple(shape), begin, end)
            if end > begin:
                spans.append((begin, end, name))
        spans.sort()
        for (b0, e0, n0), (b1, e1, n1) in zip(spans, spans[1:]):
            if b1 < e0:
                raise SafetensorsError(f"{path}: tensors {n0!r} and {n1!r} overlap in the file")

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def keys(self) -> List[str]:
        return list(self.tensors)

    def get(self, name: str) -> np.ndarray:
        info = self.tensors.get(name)
        if info is None:
            raise SafetensorsError(f"{self.path}: no tensor named {name!r}")
        dt = DTYPES[info.dtype]
        count = int(np.prod(info.shape, dtype=np.int64))
        if count == 0:
            return np.zeros(info.shape, dtype=dt)
        arr = np.frombuffer(self._mm, dtype=dt, count=count, offset=self.data_start + info.begin)
        return arr.reshape(info.shape)


def bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    """uint16 bf16 bit patterns -> float32 (exact)."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def f32_to_bf16(x: np.ndarray) -> np.ndarray:
    """float32 -> uint16 bf16 bit patterns, round to nearest even (NaN stays NaN)."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    nan = np.isnan(x)
    r = ((u + (np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1)))) >> np.uint32(16))
    r = r.astype(np.uint16)
    if nan.any():
        r[nan] = 0x7FC0
    return r


class SafetensorsWriter:
    """Streams tensors into one safetensors file: declare all up front, then write in order."""

    def __init__(self, path: str, entries: Sequence[Tuple[str, str, Tuple[int, ...]]],
                 metadata: Optional[Dict[str, str]] = None):
        self.path = path
        header: Dict[str, object] = {}
        if metadata:
            header["__metadata__"] = dict(metadata)
        self._order: List[Tuple[str, int]] = []
        off = 0
        for name, dtype, shape in entries:
            nbytes = int(np.prod(shape, dtype=np.int64)) * DTYPES[dtype].itemsize
            header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [off, off + nbytes]}
            self._order.append((name, nbytes))
            off += nbytes
        raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
        raw += b" " * (-len(raw) % 8)
        self._tmp = path + ".partial"
        self._f = open(self._tmp, "wb")
        self._f.write(struct.pack("<Q", len(raw)))
        self._f.write(raw)
        self._idx = 0
        self._written = 0

    def write(self, name: str, chunks: Iterable[np.ndarray]) -> None:
        want, nbytes = self._order[self._idx]
        if name != want:
            raise ValueError(f"{self.path}: expected tensor {want!r} next, got {name!r}")
        got = 0
        for c in chunks:
            b = np.ascontiguousarray(c).tobytes() if not isinstance(c, bytes) else c
            self._f.write(b)
            got += len(b)
        if got != nbytes:
            raise ValueError(f"{self.path}: tensor {name!r}: wrote {got} bytes, expected {nbytes}")
        self._idx += 1

    def skip(self, name: str) -> None:
        """Leave the next tensor's bytes as a hole (a sparse region that reads as zeros)."""
        want, nbytes = self._order[self._idx]
        if name != want:
            raise ValueError(f"{self.path}: expected tensor {want!r} next, got {name!r}")
        self._f.seek(nbytes, os.SEEK_CUR)
        self._idx += 1

    def close(self) -> None:
        if self._idx != len(self._order):
            self._f.close()
            raise ValueError(f"{self.path}: only {self._idx} of {len(self._order)} tensors written")
        self._f.truncate()  # the file ends where the last tensor does, holes included
        self._f.close()
        os.replace(self._tmp, self.path)
