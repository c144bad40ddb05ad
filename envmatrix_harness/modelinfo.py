"""What a model file says about itself, read without the `onnx` package (not in the images).

An ONNX file is a protobuf ModelProto. Its top-level fields are read straight from the wire
format, skipping the (large) graph by seeking past it: ir_version (field 1), producer name and
version (2, 3) and opset_import (8: OperatorSetIdProto with domain = 1, version = 2). That is
enough to explain "this model is newer than your runtime" without loading it.
"""

import hashlib
import io
import os

from .errors import ModelError

_VARINT, _FIXED64, _BYTES, _FIXED32 = 0, 1, 2, 5


def _read_varint(stream):
    shift = result = 0
    while True:
        byte = stream.read(1)
        if not byte:
            raise EOFError("truncated varint")
        value = byte[0]
        result |= (value & 0x7F) << shift
        if not value & 0x80:
            return result
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _fields(stream, end):
    """Yield (field number, wire type, value or None) for each field up to offset `end`."""
    while stream.tell() < end:
        tag = _read_varint(stream)
        number, wire = tag >> 3, tag & 7
        if wire == _VARINT:
            yield number, wire, _read_varint(stream)
        elif wire == _BYTES:
            length = _read_varint(stream)
            start = stream.tell()
            yield number, wire, (start, length)
            stream.seek(start + length)  # skip what the consumer did not read
        elif wire == _FIXED64:
            stream.seek(8, os.SEEK_CUR)
        elif wire == _FIXED32:
            stream.seek(4, os.SEEK_CUR)
        else:
            raise ValueError(f"unsupported wire type {wire}")


def _read_bytes(stream, span):
    start, length = span
    stream.seek(start)
    data = stream.read(length)
    stream.seek(start + length)
    return data


def _opset(stream, span):
    sub = io.BytesIO(_read_bytes(stream, span))
    domain, version = "", 0
    for number, wire, value in _fields(sub, len(sub.getvalue())):
        if number == 1 and wire == _BYTES:
            domain = _read_bytes(sub, value).decode("utf-8", "replace")
        elif number == 2 and wire == _VARINT:
            version = value
    return domain, version


def read_onnx_header(path):
    """{'ir_version', 'opsets', 'producer'} of an ONNX file; ValueError if it is not one."""
    info = {"ir_version": None, "opsets": {}, "producer": None}
    size = os.path.getsize(path)
    with open(path, "rb") as stream:
        producer = []
        for number, wire, value in _fields(stream, size):
            if number == 1 and wire == _VARINT:
                info["ir_version"] = value
            elif number in (2, 3) and wire == _BYTES:
                producer.append(_read_bytes(stream, value).decode("utf-8", "replace"))
            elif number == 8 and wire == _BYTES:
                domain, version = _opset(stream, value)
                info["opsets"][domain] = version
        if producer:
            info["producer"] = " ".join(producer)
    if info["ir_version"] is None:
        raise ValueError("no ir_version field")
    return info


def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def describe(path, backend):
    """The result's `model` block (without inputs/outputs); ModelError if it cannot be read."""
    if not os.path.isfile(path):
        raise ModelError(f"model file {path} does not exist (or is not a file)")
    try:
        info = {"path": path, "sha256": sha256_file(path), "ir_version": None, "opsets": {}}
    except OSError as err:
        raise ModelError(f"model file {path} cannot be read: {err}") from err
    if backend == "onnxruntime":
        try:
            info.update(read_onnx_header(path))
        except (ValueError, EOFError, UnicodeDecodeError) as err:
            raise ModelError(
                f"model file {path} is not a valid ONNX file ({err}); pass an .onnx model, or "
                "--backend torch for TorchScript") from err
    return info
