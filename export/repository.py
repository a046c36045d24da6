"""A Triton model repository, read as Triton reads it, for ``python -m export.serve --model-repository``.

    REPO/NAME/config.pbtxt     Triton's ModelConfig in protobuf text format (optional)
    REPO/NAME/V/model.onnx     version V (a positive integer) of model NAME

What `export.to_triton` writes, and Triton's layout in general for
``onnxruntime_onnx`` models. The config is parsed with Triton's own message
(``tritonclient``'s ``model_config_pb2``, which the ``serve`` extra installs)
and protobuf's text format, so a config Triton takes reads the same here.
From it the server takes:

* ``version_policy``: ``latest { num_versions: N }`` (Triton's default,
  N = 1), ``all {}`` or ``specific { versions: [...] }``;
* ``max_batch_size`` (0: the model has no batch axis Triton may use) and
  ``dynamic_batching`` (its ``max_queue_delay_microseconds``): without it,
  Triton runs each request alone, and so does this server;
* ``default_model_filename`` (``model.onnx`` by default).

Other platforms (ensembles, the Python backend) are Triton's to run: such a
model is reported as not servable here, with the reason.

Pure file reading: nothing here knows about sessions or a server.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ModelSource", "RepositoryError", "config_as_json", "model_names", "read_model"]

_ONNX_PLATFORM = "onnxruntime_onnx"
_ONNX_BACKEND = "onnxruntime"
_DEFAULT_FILE = "model.onnx"


class RepositoryError(ValueError):
    """A model folder this server cannot serve; the message is one line naming it."""


@dataclass(frozen=True)
class ModelSource:
    """What the repository says of one model.

    Attributes:
        name: the model's folder name.
        files: version -> its model file, for the versions the policy
            serves, in ascending order.
        max_batch_size: Triton's ``max_batch_size``; 0 when the model's
            first axis is not a batch Triton may gather on.
        max_delay_ms: ``dynamic_batching``'s queue delay, in ms; None when
            the config has no ``dynamic_batching`` (each request runs alone).
        stamp: the files' versions, names, sizes and modification times,
            and the config's: equal stamps mean nothing changed on disk.
        config: the config as Triton gives it over HTTP (the protobuf's
            JSON, field names as in the proto), its name filled in.
    """

    name: str
    files: dict[int, Path]
    max_batch_size: int
    max_delay_ms: float | None
    stamp: tuple
    config: dict


def model_names(repository: str | os.PathLike[str]) -> list[str]:
    """The model folders of ``repository``, sorted (hidden ones skipped, as Triton does).

    Raises:
        RepositoryError: the repository is not a folder.
    """
    root = Path(repository)
    if not root.is_dir():
        raise RepositoryError(f"model repository {root} is not a folder")
    return sorted(entry.name for entry in root.iterdir() if entry.is_dir() and not entry.name.startswith("."))


def _stat(path: Path) -> tuple:
    info = path.stat()
    return (path.name, info.st_size, info.st_mtime_ns)


def _config(folder: Path):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    config = model_config_pb2.ModelConfig()
    path = folder / "config.pbtxt"
    if path.is_file():
        try:
            text_format.Parse(path.read_text(encoding="utf-8"), config)
        except (text_format.ParseError, UnicodeDecodeError) as error:
            raise RepositoryError(f"{path}: not a Triton model config: {error}") from None
    return config


def read_model(repository: str | os.PathLike[str], name: str) -> ModelSource:
    """Read model ``name`` of ``repository``: its config and the versions its policy serves.

    Raises:
        RepositoryError: no such folder, a config Triton would refuse or a
            platform other than onnxruntime_onnx, or no version to serve.
    """
    folder = Path(repository) / name
    if not folder.is_dir():
        raise RepositoryError(f"no model '{name}' in the repository {Path(repository)}")
    config = _config(folder)
    if config.name and config.name != name:
        raise RepositoryError(f"{folder}/config.pbtxt names the model '{config.name}', but its folder is '{name}'")
    platform = config.platform or (_ONNX_PLATFORM if config.backend in ("", _ONNX_BACKEND) else "")
    if platform != _ONNX_PLATFORM or config.backend not in ("", _ONNX_BACKEND):
        kind = f"platform '{config.platform}'" if config.platform else f"backend '{config.backend}'"
        raise RepositoryError(f"model '{name}' has {kind}: Triton runs it; this server serves {_ONNX_PLATFORM} models")
    filename = config.default_model_filename or _DEFAULT_FILE
    present = {}
    for entry in folder.iterdir():
        if entry.is_dir() and entry.name.isdigit() and int(entry.name) > 0 and (entry / filename).is_file():
            present[int(entry.name)] = entry / filename
    policy = config.version_policy.WhichOneof("policy_choice")
    if policy == "all":
        chosen = sorted(present)
    elif policy == "specific":
        wanted = sorted(set(config.version_policy.specific.versions))
        missing = [version for version in wanted if version not in present]
        if missing:
            raise RepositoryError(
                f"model '{name}': version_policy lists version {missing[0]}, which has no {folder}/{missing[0]}/{filename}"
            )
        chosen = wanted
    else:  # latest, Triton's default of one version
        count = config.version_policy.latest.num_versions if policy == "latest" else 1
        if count < 1:
            raise RepositoryError(f"model '{name}': version_policy latest needs num_versions >= 1")
        chosen = sorted(present)[-count:]
    if not chosen:
        raise RepositoryError(f"model '{name}' has no version to serve: no {folder}/<version>/{filename}")
    files = {version: present[version] for version in chosen}
    delay = None
    if config.HasField("dynamic_batching"):
        delay = config.dynamic_batching.max_queue_delay_microseconds / 1000
    config_path = folder / "config.pbtxt"
    stamp = (
        _stat(config_path) if config_path.is_file() else None,
        tuple((version, _stat(path)) for version, path in files.items()),
    )
    config.name, config.platform = name, _ONNX_PLATFORM
    return ModelSource(name, files, config.max_batch_size, delay, stamp, config_as_json(config))


def config_as_json(config) -> dict:
    """A ``ModelConfig`` message as Triton's HTTP API gives it: protobuf's JSON, field names as in
    the proto, and 64-bit integers as numbers (protobuf's JSON writes them as strings)."""
    from google.protobuf import json_format

    return _numbers(config.DESCRIPTOR, json_format.MessageToDict(config, preserving_proto_field_name=True))


def _numbers(descriptor, data: dict) -> dict:
    """``data`` (protobuf's JSON of a ``descriptor`` message) with its 64-bit integers as numbers."""
    from google.protobuf.descriptor import FieldDescriptor

    wide = (FieldDescriptor.CPPTYPE_INT64, FieldDescriptor.CPPTYPE_UINT64)
    for field in descriptor.fields:
        if field.name not in data:
            continue
        value = data[field.name]
        repeated = isinstance(value, list)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            inner = field.message_type.fields_by_name["value"]
            if inner.message_type is not None:
                for item in value.values():
                    _numbers(inner.message_type, item)
        elif field.message_type is not None:
            for item in value if repeated else [value]:
                _numbers(field.message_type, item)
        elif field.cpp_type in wide:
            data[field.name] = [int(item) for item in value] if repeated else int(value)
    return data
