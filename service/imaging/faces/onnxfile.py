"""The parts of an ONNX file that CenterFace's loader reads, decoded from protobuf's wire format with numpy.

Importing the ``onnx`` package costs about 0.6 s of CPU (most of it loading ``ml_dtypes``), paid again by every worker
process that detects; the loader needs only the graph's nodes (op type, inputs, outputs, integer attributes) and its
float32 / int64 initializers, which this module reads directly. Field numbers are those of ``onnx.proto``
(ModelProto.graph = 7; GraphProto.node = 1, initializer = 5; NodeProto.input = 1, output = 2, op_type = 4,
attribute = 5; AttributeProto.name = 1, i = 3, ints = 8; TensorProto.dims = 1, data_type = 2, float_data = 4,
int64_data = 7, name = 8, raw_data = 9, data_location = 14). The tests compare the result with the onnx package's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["OnnxNode", "read_graph"]

_DTYPES = {1: np.float32, 7: np.int64}  # TensorProto.DataType: FLOAT, INT64
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


@dataclass(frozen=True)
class OnnxNode:
    """One node of the graph: ``attrs`` holds its integer and integer-list attributes (others are left out)."""

    op_type: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: dict[str, int | list[int]] = field(default_factory=dict)


def read_graph(path: str | Path) -> tuple[list[OnnxNode], dict[str, np.ndarray]]:
    """(the nodes in graph order, the initializers by name) of the ONNX model at ``path``.

    Raises ValueError when the file is not a readable ONNX model or an initializer keeps its data outside the file.
    """
    data = memoryview(Path(path).read_bytes())
    graphs = [v for f, v in _fields(data) if f == 7]
    if len(graphs) != 1:
        raise ValueError(f"{path}: not an ONNX model (expected one graph, found {len(graphs)})")
    nodes, weights = [], {}
    for f, v in _fields(graphs[0]):
        if f == 1:
            nodes.append(_node(v))
        elif f == 5:
            name, array = _tensor(v)
            if array is not None:
                weights[name] = array
    return nodes, weights


def _varint(buf: memoryview, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= len(buf):
            raise ValueError("truncated protobuf varint")
        byte = buf[i]
        value |= (byte & 0x7F) << shift
        i += 1
        if byte < 0x80:
            return value, i
        shift += 7


def _fields(buf: memoryview):
    """(field number, value) pairs of one message: ints for varints, memoryviews for the rest."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        number, wire = key >> 3, key & 7
        if wire == _VARINT:
            value, i = _varint(buf, i)
        elif wire == _LEN:
            size, i = _varint(buf, i)
            value, i = buf[i : i + size], i + size
        elif wire in (_I64, _I32):
            size = 8 if wire == _I64 else 4
            value, i = buf[i : i + size], i + size
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        if i > len(buf):
            raise ValueError("truncated protobuf message")
        yield number, value


def _ints(value: int | memoryview) -> list[int]:
    """A repeated int64 field's one entry (a varint) or packed entries (length-delimited), as signed ints."""
    if isinstance(value, int):
        out = [value]
    else:
        out, i = [], 0
        while i < len(value):
            v, i = _varint(value, i)
            out.append(v)
    return [v - (1 << 64) if v >= 1 << 63 else v for v in out]


def _node(buf: memoryview) -> OnnxNode:
    inputs, outputs, op_type, attrs = [], [], "", {}
    for f, v in _fields(buf):
        if f == 1:
            inputs.append(bytes(v).decode())
        elif f == 2:
            outputs.append(bytes(v).decode())
        elif f == 4:
            op_type = bytes(v).decode()
        elif f == 5:
            attrs.update(_attribute(v))
    return OnnxNode(op_type, tuple(inputs), tuple(outputs), attrs)


def _attribute(buf: memoryview) -> dict[str, int | list[int]]:
    name, single, many = "", None, None
    for f, v in _fields(buf):
        if f == 1:
            name = bytes(v).decode()
        elif f == 3:
            single = _ints(v)[0]
        elif f == 8:
            many = (many or []) + _ints(v)
    if many is not None:
        return {name: many}
    return {} if single is None else {name: single}


def _tensor(buf: memoryview) -> tuple[str, np.ndarray | None]:
    """(name, array) of a TensorProto; the array is None for data types the loader does not read."""
    name, dims, dtype, raw, floats, int64s = "", [], 0, None, [], []
    for f, v in _fields(buf):
        if f == 1:
            dims += _ints(v)
        elif f == 2:
            dtype = v
        elif f == 4:
            floats.append(np.frombuffer(v, "<f4"))  # packed, or one 32-bit entry
        elif f == 7:
            int64s += _ints(v)
        elif f == 8:
            name = bytes(v).decode()
        elif f == 9:
            raw = v
        elif f == 14 and v == 1:
            raise ValueError(f"initializer {name or '?'} keeps its data outside the file (external data)")
    if dtype not in _DTYPES:
        return name, None
    if raw is not None:
        array = np.frombuffer(raw, np.dtype(_DTYPES[dtype]).newbyteorder("<"))
    elif dtype == 1:
        array = np.concatenate(floats) if floats else np.zeros(0, np.float32)
    else:
        array = np.array(int64s, np.int64)
    return name, array.astype(_DTYPES[dtype]).reshape(dims)
