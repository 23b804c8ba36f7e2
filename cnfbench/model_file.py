"""The model file format: a trained field's tensors and the cell that trained it, as safetensors bytes (no pickle).

A worker encodes a finished cell's field with :func:`encode_model` and returns
the bytes with its outcome; the main process checks them with
:func:`check_model` before it writes them (:func:`cnfbench.run_folder.write_model`),
and :func:`decode_model` checks a file's bytes again before any tensor is used.
This module imports neither pandas nor, until it encodes or decodes, torch:
the worker needs it and nothing else of the run folder.

Format (:data:`MODEL_FORMAT_VERSION` 1): a safetensors file whose tensors are
the field's ``state_dict()`` as trained (on CPU, dtypes kept) and whose
string metadata says what they are — ``format`` (:data:`MODEL_FORMAT`),
``format_version``, ``cell_id``, ``cell`` (the cell's JSON, whose hash is
``cell_id``), ``field`` (the field with every parameter), ``dim`` (the data's
dimension), ``cnfbench_version`` and ``torch_version``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cnfbench.cells import Cell
from cnfbench.messages import describe_exception, one_line

MODEL_FORMAT = "cnfbench.model"
MODEL_FORMAT_VERSION = 1
MODEL_METADATA = ("format", "format_version", "cell_id", "cell", "field", "dim", "cnfbench_version", "torch_version")
"""The metadata keys of a model file, all strings."""

_MAX_HEADER = 100 * 2**20  # safetensors' own limit on its JSON header, in bytes


class ModelFileError(ValueError):
    """Bytes that are not a sound model file of the expected cell; the message says what is wrong (without a path)."""


@dataclass(frozen=True)
class ModelSpec:
    """What a model file says it holds: the cell that trained the field, the data's dimension, all metadata."""

    cell: Cell
    dim: int
    metadata: dict[str, str]


def encode_model(tensors: Mapping[str, Any], cell: Cell, dim: int) -> bytes:
    """A field's ``state_dict()`` and the cell that trained it, as the bytes of a model file.

    Every tensor is copied to CPU on its own, so tied weights become two equal entries (safetensors
    refuses tensors that share memory) and load back into both.
    """
    import torch
    from safetensors.torch import save

    from cnfbench import __version__

    metadata = {"format": MODEL_FORMAT, "format_version": str(MODEL_FORMAT_VERSION), "cell_id": cell.cell_id,
                "cell": json.dumps(cell.to_json(), separators=(",", ":")),
                "field": cell.axes["field"].label(), "dim": str(int(dim)), "cnfbench_version": __version__,
                "torch_version": torch.__version__}
    return save({name: tensor.detach().to("cpu").clone().contiguous() for name, tensor in tensors.items()},
                metadata=metadata)


def _metadata(data: bytes) -> dict[str, str]:
    """The metadata in the safetensors header of ``data``, read without loading a tensor."""
    if len(data) < 8:
        raise ModelFileError(f"is damaged: {len(data)} bytes, too short for a safetensors file")
    size = int.from_bytes(data[:8], "little")
    if size > min(len(data) - 8, _MAX_HEADER):
        raise ModelFileError(f"is damaged: its safetensors header claims {size} bytes, the file has "
                             f"{len(data) - 8} after the length")
    try:
        header = json.loads(data[8 : 8 + size].decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ModelFileError(f"is damaged: its safetensors header is not JSON ({one_line(exc, 120)})") from None
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(metadata, dict) or metadata.get("format") != MODEL_FORMAT:
        raise ModelFileError(f"is not a cnfbench model file: its safetensors metadata has no format {MODEL_FORMAT!r}")
    missing = [key for key in MODEL_METADATA if not isinstance(metadata.get(key), str)]
    if missing:
        raise ModelFileError(f"is damaged: its metadata lacks {', '.join(missing)}")
    return metadata


def check_model(data: bytes, cell_id: str) -> ModelSpec:
    """What the model file ``data`` holds, after checking its header names ``cell_id`` with a spec that hashes to
    it; :class:`ModelFileError` otherwise. No tensor is loaded."""
    metadata = _metadata(data)
    version = metadata["format_version"]
    if version != str(MODEL_FORMAT_VERSION):
        raise ModelFileError(f"has model format version {version!r}; this cnfbench reads version "
                             f"{MODEL_FORMAT_VERSION}")
    if metadata["cell_id"] != cell_id:
        raise ModelFileError(f"holds the model of cell {metadata['cell_id']!r}, not of cell {cell_id!r}")
    try:
        cell = Cell.from_json(json.loads(metadata["cell"]))
    except Exception as exc:  # noqa: BLE001 - a hand-edited spec fails in many ways
        raise ModelFileError(f"is damaged: its cell spec cannot be read ({describe_exception(exc, 120)})") from None
    if cell.cell_id != cell_id:
        raise ModelFileError(f"does not match its spec: the recorded cell hashes to {cell.cell_id}, not {cell_id}")
    if metadata["field"] != cell.axes["field"].label():
        raise ModelFileError(f"does not match its spec: field {metadata['field']!r} is recorded beside a cell "
                             f"with field {cell.axes['field'].label()!r}")
    dim = int(metadata["dim"]) if metadata["dim"].isdigit() else 0
    if dim < 1:
        raise ModelFileError(f"is damaged: dimension {metadata['dim']!r} is not a positive integer")
    return ModelSpec(cell, dim, metadata)


def decode_model(data: bytes, cell_id: str) -> tuple[ModelSpec, dict[str, Any]]:
    """The spec and the tensors (``name -> torch.Tensor`` on CPU) of the model file ``data`` of ``cell_id``,
    checked; :class:`ModelFileError` when it is damaged or not this cell's."""
    spec = check_model(data, cell_id)
    from safetensors.torch import load

    try:
        tensors = load(data)
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error (and others) for damaged data
        raise ModelFileError(f"is damaged: {describe_exception(exc, 150)}") from None
    return spec, tensors
