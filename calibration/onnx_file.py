"""The ONNX file a calibration table is measured on, named by one hash that covers every byte of its tensors.

A table is reused, and an INT8 file accepted, when the model's sha256 matches the one the table records. An
ONNX file that keeps its tensors in external data files (``onnx.save(..., save_as_external_data=True)``)
would hash only its graph: weights changed in ``model.data`` left the hash as it was, and a stale table was
reused (calibration review, session 31). Such files are refused, as ``uopsl sign`` refuses them: uopsl's own
exports are single files.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from uopsl.runtime.errors import ConfigError
from uopsl.runtime.fsio import sha256_file
from uopsl.runtime.optional import require


def _sparse(s: Any) -> Iterator[Any]:
    yield s.values
    yield s.indices


def _in_nodes(nodes: Any) -> Iterator[Any]:
    for node in nodes:
        for a in node.attribute:
            if a.HasField("t"):
                yield a.t
            yield from a.tensors
            if a.HasField("sparse_tensor"):
                yield from _sparse(a.sparse_tensor)
            for s in a.sparse_tensors:
                yield from _sparse(s)
            if a.HasField("g"):
                yield from _graph_tensors(a.g)
            for g in a.graphs:
                yield from _graph_tensors(g)


def _graph_tensors(graph: Any) -> Iterator[Any]:
    """Every tensor of ``graph`` and of its subgraphs (If / Loop / Scan bodies), sparse ones included."""
    yield from graph.initializer
    for s in graph.sparse_initializer:
        yield from _sparse(s)
    yield from _in_nodes(graph.node)


def model_tensors(model: Any) -> Iterator[Any]:
    """Every tensor an ONNX ``ModelProto`` holds: initializers, constant attributes, subgraphs, local functions."""
    yield from _graph_tensors(model.graph)
    for function in model.functions:
        yield from _in_nodes(function.node)


def has_external_data(model: Any) -> bool:
    """Whether any tensor of ``model`` (loaded with ``load_external_data=False``) lives in another file."""
    onnx = require("onnx", "reading an ONNX model's tensors")
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in model_tensors(model))


def refuse_external_data(path: str | os.PathLike[str], why: str) -> None:
    """ConfigError when the ONNX file at ``path`` keeps tensors in external data files; ``why`` says what for."""
    onnx = require("onnx", "reading an ONNX model's tensors")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - onnx raises several unrelated types for a bad file
        raise ConfigError(f"{path}: not a readable ONNX model ({exc}); export it with `uopsl export`") from exc
    if has_external_data(model):
        raise ConfigError(f"{Path(path).name} keeps tensors in external data files, {why}; save it as one file "
                          "(onnx.save(model, path, save_as_external_data=False)) and run again")


def model_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 of a single-file ONNX model: the name a calibration table and an INT8 file record it by."""
    refuse_external_data(path, "which the model's sha256 (what a calibration table is matched by) would not cover")
    return sha256_file(path)
