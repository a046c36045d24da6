"""Put an exported ONNX model into a Triton Inference Server model repository.

    python -m export.to_triton sentiment.onnx -o models
    tritonserver --model-repository models          # serves "sentiment"

writes::

    models/sentiment/config.pbtxt     onnxruntime_onnx platform, the graph's exact
                                      inputs and outputs, dynamic batching, CPU instances
    models/sentiment/1/model.onnx     the file, byte for byte (its metadata keeps
                                      the text encoder for clients)

or from Python::

    from export.to_triton import write_repository
    write_repository("sentiment.onnx", "models")

The graph is read with onnxruntime (through `export.session.open_session`),
never TensorFlow. The model folder appears whole or not at all
(`export.files.atomic_dir`); a file that is not a loadable ONNX model is
refused before anything is created.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from export.cli import CliError, run
from export.files import atomic_dir
from export.session import open_session

__all__ = ["TRITON_DTYPES", "TensorSpec", "graph_tensors", "main", "model_config", "write_repository"]

#: onnxruntime's type string -> Triton's model-configuration data type.
TRITON_DTYPES = {
    "tensor(bool)": "TYPE_BOOL",
    "tensor(uint8)": "TYPE_UINT8",
    "tensor(uint16)": "TYPE_UINT16",
    "tensor(uint32)": "TYPE_UINT32",
    "tensor(uint64)": "TYPE_UINT64",
    "tensor(int8)": "TYPE_INT8",
    "tensor(int16)": "TYPE_INT16",
    "tensor(int32)": "TYPE_INT32",
    "tensor(int64)": "TYPE_INT64",
    "tensor(float16)": "TYPE_FP16",
    "tensor(float)": "TYPE_FP32",
    "tensor(double)": "TYPE_FP64",
    "tensor(bfloat16)": "TYPE_BF16",
    "tensor(string)": "TYPE_STRING",
}

DEFAULT_MAX_BATCH_SIZE = 256
#: Triton waits at most this long for a preferred batch to fill: about one
#: batch-64 call of the sentiment model on one core, so a lone request is
#: delayed by no more than the work it would share.
DEFAULT_QUEUE_DELAY_US = 2000
_PREFERRED_SIZES = (16, 64, 256)

# Triton loads a model from a folder of this name; keep it portable.
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output as Triton sees it.

    Attributes:
        name: the tensor's name in the graph.
        data_type: Triton's ``TYPE_*`` name.
        shape: every axis, ``-1`` for a symbolic one (the batch axis included).
    """

    name: str
    data_type: str
    shape: tuple[int, ...]


def _spec(node) -> TensorSpec:
    data_type = TRITON_DTYPES.get(node.type)
    if data_type is None:
        raise ValueError(f"tensor {node.name!r} has type {node.type}, which Triton cannot serve")
    shape = tuple(dim if isinstance(dim, int) and dim >= 0 else -1 for dim in node.shape)
    return TensorSpec(node.name, data_type, shape)


def graph_tensors(model: str | Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The inputs and outputs of an ONNX file, in graph order.

    Raises:
        FileNotFoundError: no file at ``model``.
        ValueError: not a loadable ONNX model, or a tensor of a type Triton lacks.
    """
    session = open_session(model, threads=1)
    return [_spec(node) for node in session.get_inputs()], [_spec(node) for node in session.get_outputs()]


def _batched(tensors: Sequence[TensorSpec]) -> bool:
    """Whether every tensor starts with a symbolic axis, which Triton can batch on."""
    return all(spec.shape and spec.shape[0] == -1 for spec in tensors)


def model_config(
    model: str | Path,
    *,
    name: str | None = None,
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
    queue_delay_us: int = DEFAULT_QUEUE_DELAY_US,
    instances: int = 1,
    threads: int = 0,
) -> str:
    """The ``config.pbtxt`` text for ``model`` (protobuf text format of Triton's ``ModelConfig``).

    Args:
        model: the ``.onnx`` file.
        name: the model's name in Triton (default: the file's stem).
        max_batch_size: most rows Triton gathers into one run. A model
            whose inputs or outputs do not all start with a symbolic axis
            cannot be batched by Triton and gets ``max_batch_size: 0`` (its
            dims then list every axis) and no dynamic batching.
        queue_delay_us: how long a request may wait for a preferred batch.
        instances: model instances on the CPU.
        threads: onnxruntime intra-op threads per instance; 0 leaves
            onnxruntime's default (one per physical core).

    Raises:
        FileNotFoundError, ValueError: as `graph_tensors`; ValueError also
            for an invalid name or a non-positive size.
    """
    name = Path(model).stem if name is None else name
    if not _NAME.match(name):
        raise ValueError(f"model name {name!r} must be letters, digits, '_', '.' or '-' (it names a folder)")
    if max_batch_size < 1 or instances < 1 or queue_delay_us < 0 or threads < 0:
        raise ValueError("max_batch_size and instances must be >= 1, queue_delay_us and threads >= 0")
    inputs, outputs = graph_tensors(model)
    batched = _batched(inputs) and _batched(outputs)
    skip = 1 if batched else 0

    def tensors(specs: list[TensorSpec]) -> str:
        items = []
        for spec in specs:
            dims = ", ".join(str(d) for d in spec.shape[skip:])
            items.append(f'  {{\n    name: "{spec.name}"\n    data_type: {spec.data_type}\n    dims: [ {dims} ]\n  }}')
        return "[\n" + ",\n".join(items) + "\n]"

    lines = [
        f'name: "{name}"',
        'platform: "onnxruntime_onnx"',
        f"max_batch_size: {max_batch_size if batched else 0}",
        f"input {tensors(inputs)}",
        f"output {tensors(outputs)}",
    ]
    if batched:
        preferred = sorted({min(size, max_batch_size) for size in _PREFERRED_SIZES})
        lines.append(
            "dynamic_batching {\n"
            f"  preferred_batch_size: [ {', '.join(map(str, preferred))} ]\n"
            f"  max_queue_delay_microseconds: {queue_delay_us}\n"
            "}"
        )
    lines.append(f"instance_group [\n  {{\n    count: {instances}\n    kind: KIND_CPU\n  }}\n]")
    # The onnxruntime backend's session options (strings, as Triton wants).
    for key, value in (("intra_op_thread_count", threads), ("inter_op_thread_count", 1)):
        lines.append(f'parameters {{\n  key: "{key}"\n  value: {{ string_value: "{value}" }}\n}}')
    return "\n".join(lines) + "\n"


def write_repository(
    model: str | Path,
    repository: str | Path,
    *,
    name: str | None = None,
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
    queue_delay_us: int = DEFAULT_QUEUE_DELAY_US,
    instances: int = 1,
    threads: int = 0,
) -> Path:
    """Write ``repository/<name>/config.pbtxt`` and ``repository/<name>/1/model.onnx``.

    The model folder is built beside its final place and moved in at once;
    an existing folder of that name is replaced only when the new one is
    complete. Other models in the repository are left alone.

    Args:
        model, name, max_batch_size, queue_delay_us, instances, threads: as
            `model_config`.
        repository: the model repository folder (created if missing).

    Returns:
        The model's folder.

    Raises:
        FileNotFoundError, ValueError: as `model_config`, before anything is written.
    """
    model = Path(model)
    config = model_config(
        model,
        name=name,
        max_batch_size=max_batch_size,
        queue_delay_us=queue_delay_us,
        instances=instances,
        threads=threads,
    )
    folder = Path(repository) / (model.stem if name is None else name)
    with atomic_dir(folder) as staging:
        (staging / "config.pbtxt").write_text(config, encoding="utf-8")
        (staging / "1").mkdir()
        shutil.copyfile(model, staging / "1" / "model.onnx")
    return folder


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m export.to_triton",
        description=(
            "Write a Triton Inference Server model repository entry for an ONNX file:\n"
            "REPOSITORY/<name>/config.pbtxt (onnxruntime_onnx, the graph's inputs and outputs,\n"
            "dynamic batching, CPU instances) and REPOSITORY/<name>/1/model.onnx (a byte copy)."
        ),
        epilog=(
            "example:\n"
            "  python -m export.to_triton sentiment.onnx -o models\n"
            "  docker run --rm -p 8000:8000 -v $PWD/models:/models \\\n"
            "      nvcr.io/nvidia/tritonserver:24.08-py3 tritonserver --model-repository=/models"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", metavar="MODEL.onnx", help="the exported model")
    parser.add_argument("-o", "--output", required=True, metavar="REPOSITORY", help="the model repository folder")
    parser.add_argument("--name", metavar="N", help="the model's name in Triton (default: the file's stem)")
    parser.add_argument(
        "--max-batch-size",
        type=int,
        default=DEFAULT_MAX_BATCH_SIZE,
        metavar="N",
        help=f"most rows per run that Triton gathers (default: {DEFAULT_MAX_BATCH_SIZE})",
    )
    parser.add_argument(
        "--queue-delay-us",
        type=int,
        default=DEFAULT_QUEUE_DELAY_US,
        metavar="US",
        help=f"how long a request may wait for others, in microseconds (default: {DEFAULT_QUEUE_DELAY_US})",
    )
    parser.add_argument("--instances", type=int, default=1, metavar="N", help="model instances on the CPU (default: 1)")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        metavar="N",
        help="onnxruntime intra-op threads per instance (default: 0, onnxruntime's choice)",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        folder = write_repository(
            args.model,
            args.output,
            name=args.name,
            max_batch_size=args.max_batch_size,
            queue_delay_us=args.queue_delay_us,
            instances=args.instances,
            threads=args.threads,
        )
    except (FileNotFoundError, ValueError) as error:
        raise CliError(str(error)) from None
    print(f"wrote {folder / 'config.pbtxt'} and {folder / '1' / 'model.onnx'}")
    return 0


def console() -> int:
    """The `keras-attn-triton` console script: `main` with one-line errors."""
    return run(main)


if __name__ == "__main__":
    sys.exit(console())
