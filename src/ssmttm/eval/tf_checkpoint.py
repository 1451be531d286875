"""Read a TensorFlow 1 checkpoint (a tensor bundle) into numpy arrays, without tensorflow.

A bundle is two files: ``<prefix>.index``, an SSTable (LevelDB's table format) that maps each
variable name to a ``BundleEntryProto`` (dtype, shape, shard, offset, size), and
``<prefix>.data-00000-of-00001``, the tensors' raw little-endian bytes back to back. The index's
first key, the empty string, holds the ``BundleHeaderProto`` and is skipped.

SSTable layout: a 48-byte footer (metaindex and index block handles, then an 8-byte magic); the
index block maps keys to data-block handles; each block is a run of prefix-compressed entries
(``shared``, ``non_shared``, ``value_len`` varints, the key's new suffix, the value), then the
restart offsets (uint32 each) and their count, then a 5-byte trailer (compression type, crc32c).
Only uncompressed blocks are read: TF writes bundle indexes without compression, and so are
musicnn's.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_MAGIC = 0xDB4775248B80FB57
_FOOTER = 48
_TRAILER = 5
# TensorFlow's DataType enum (types.proto) -> numpy, for the dtypes a checkpoint holds.
_DTYPES = {
    1: np.float32,
    2: np.float64,
    3: np.int32,
    4: np.uint8,
    5: np.int16,
    6: np.int8,
    9: np.int64,
    10: np.bool_,
    17: np.uint16,
    19: np.float16,
    22: np.uint32,
    23: np.uint64,
}


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated or not in the format this reader knows."""


@dataclass(frozen=True)
class BundleEntry:
    """Where one tensor lies in the data file: the fields of ``BundleEntryProto`` this reader uses."""

    dtype: int
    shape: tuple[int, ...]
    shard_id: int
    offset: int
    size: int


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    """The base-128 varint at ``buf[pos]`` and the position after it."""
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise CheckpointError("truncated or overlong varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _proto_fields(buf: bytes) -> list[tuple[int, int, int | bytes]]:
    """A protobuf message's (field number, wire type, value) in order; varints as ints, the rest as bytes."""
    fields, pos = [], 0
    while pos < len(buf):
        tag, pos = _varint(buf, pos)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos : pos + 8], pos + 8
        elif wire == 2:
            n, pos = _varint(buf, pos)
            value, pos = buf[pos : pos + n], pos + n
        elif wire == 5:
            value, pos = buf[pos : pos + 4], pos + 4
        else:
            raise CheckpointError(f"unsupported protobuf wire type {wire}")
        if pos > len(buf):
            raise CheckpointError("truncated protobuf message")
        fields.append((number, wire, value))
    return fields


def _shape(buf: bytes) -> tuple[int, ...]:
    """``TensorShapeProto``: repeated ``dim`` (field 2), each a ``Dim`` with ``size`` (field 1)."""
    dims = []
    for number, _, dim in _proto_fields(buf):
        if number == 2:
            sizes = [v for n, _, v in _proto_fields(dim) if n == 1]
            dims.append(sizes[0] if sizes else 0)
    return tuple(dims)


def _bundle_entry(buf: bytes) -> BundleEntry:
    values: dict[str, object] = {"dtype": 0, "shape": (), "shard_id": 0, "offset": 0, "size": 0}
    for number, _, value in _proto_fields(buf):
        if number == 1:
            values["dtype"] = value
        elif number == 2:
            values["shape"] = _shape(value)
        elif number in (3, 4, 5):
            values[("shard_id", "offset", "size")[number - 3]] = value
        elif number == 7:
            raise CheckpointError("partitioned (sliced) variables are not supported")
    return BundleEntry(**values)  # type: ignore[arg-type]


def _block(data: bytes, handle: bytes) -> bytes:
    """The contents of the block a ``BlockHandle`` (offset, size varints) points at, without its trailer."""
    offset, pos = _varint(handle, 0)
    size, _ = _varint(handle, pos)
    if offset + size + _TRAILER > len(data):
        raise CheckpointError("block handle points past the end of the index file")
    compression = data[offset + size]
    if compression != 0:
        raise CheckpointError(f"compressed SSTable blocks (type {compression}) are not supported")
    return data[offset : offset + size]


def _block_entries(block: bytes) -> list[tuple[bytes, bytes]]:
    """A block's (key, value) pairs, undoing the key prefix compression."""
    if len(block) < 4:
        raise CheckpointError("block too short")
    (n_restarts,) = struct.unpack_from("<I", block, len(block) - 4)
    end = len(block) - 4 - 4 * n_restarts
    if end < 0:
        raise CheckpointError("corrupt block restart array")
    entries, key, pos = [], b"", 0
    while pos < end:
        shared, pos = _varint(block, pos)
        non_shared, pos = _varint(block, pos)
        value_len, pos = _varint(block, pos)
        if shared > len(key) or pos + non_shared + value_len > end:
            raise CheckpointError("corrupt block entry")
        key = key[:shared] + block[pos : pos + non_shared]
        pos += non_shared
        entries.append((key, block[pos : pos + value_len]))
        pos += value_len
    return entries


def read_index(index_path: str | Path) -> dict[str, BundleEntry]:
    """Every variable's ``BundleEntry`` in a ``.index`` file, by name."""
    path = Path(index_path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint index not found: {path}")
    data = path.read_bytes()
    if len(data) < _FOOTER or struct.unpack_from("<Q", data, len(data) - 8)[0] != _MAGIC:
        raise CheckpointError(f"not an SSTable (bad footer magic): {path}")
    footer = data[-_FOOTER:]
    _, pos = _varint(footer, 0)  # the metaindex handle: unused by bundles
    _, pos = _varint(footer, pos)
    entries = {}
    for _, handle in _block_entries(_block(data, footer[pos:])):
        for key, value in _block_entries(_block(data, handle)):
            if key:  # the empty key is the BundleHeaderProto
                entries[key.decode()] = _bundle_entry(value)
    return entries


def read_checkpoint(prefix: str | Path) -> dict[str, np.ndarray]:
    """All tensors of the checkpoint at ``prefix`` (``prefix.index`` and ``prefix.data-*``), by variable name.

    A prefix may end in ``/`` as musicnn's do (its files are ``<dir>/.index`` and so on).
    """
    prefix = str(prefix)
    entries = read_index(prefix + ".index")
    shards = {e.shard_id for e in entries.values()}
    n_shards = max(shards, default=0) + 1
    blobs = {}
    for shard in shards:
        data_path = Path(f"{prefix}.data-{shard:05d}-of-{n_shards:05d}")
        if not data_path.is_file():
            raise CheckpointError(f"checkpoint data file not found: {data_path}")
        blobs[shard] = data_path.read_bytes()
    tensors = {}
    for name, entry in entries.items():
        if entry.dtype not in _DTYPES:
            raise CheckpointError(f"{name}: unsupported TensorFlow dtype {entry.dtype}")
        dtype = np.dtype(_DTYPES[entry.dtype]).newbyteorder("<")
        blob = blobs[entry.shard_id]
        if entry.offset + entry.size > len(blob) or entry.size != dtype.itemsize * int(np.prod(entry.shape)):
            raise CheckpointError(f"{name}: entry does not fit the data file (truncated or corrupt)")
        flat = np.frombuffer(blob, dtype=dtype, count=entry.size // dtype.itemsize, offset=entry.offset)
        tensors[name] = flat.reshape(entry.shape).astype(dtype.newbyteorder("="))
    return tensors
