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

__all__ = ["TRITON_DTYPES", "TensorSpec", "graph_tensors", "main", "model_config", "write_repository", "write_text_ensemble"]

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


def _tensor_list(specs: Sequence[tuple[str, str, Sequence[int]]]) -> str:
    items = [
        f'  {{\n    name: "{name}"\n    data_type: {data_type}\n    dims: [ {", ".join(map(str, dims))} ]\n  }}'
        for name, data_type, dims in specs
    ]
    return "[\n" + ",\n".join(items) + "\n]"


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
        return _tensor_list([(spec.name, spec.data_type, spec.shape[skip:]) for spec in specs])

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
    lines.append(_instance_group(instances))
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


#: The Python-backend models of the text ensemble, as files of this package.
_BACKEND = Path(__file__).with_name("triton_backend")
#: The one definition of the encoder and of the label rule, carried into the repository.
_TEXT_MODULE = Path(__file__).with_name("text.py")


def _instance_group(instances: int) -> str:
    return f"instance_group [\n  {{\n    count: {instances}\n    kind: KIND_CPU\n  }}\n]"


def _python_config(name: str, max_batch_size: int, inputs, outputs, instances: int) -> str:
    return (
        f'name: "{name}"\nbackend: "python"\nmax_batch_size: {max_batch_size}\n'
        f"input {_tensor_list(inputs)}\noutput {_tensor_list(outputs)}\n{_instance_group(instances)}\n"
    )


def _step(model: str, inputs: dict[str, str], outputs: dict[str, str]) -> str:
    maps = [f'      input_map {{ key: "{k}" value: "{v}" }}' for k, v in inputs.items()]
    maps += [f'      output_map {{ key: "{k}" value: "{v}" }}' for k, v in outputs.items()]
    return f'    {{\n      model_name: "{model}"\n      model_version: -1\n' + "\n".join(maps) + "\n    }"


def write_text_ensemble(
    model: str | Path,
    repository: str | Path,
    *,
    name: str | None = None,
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
    queue_delay_us: int = DEFAULT_QUEUE_DELAY_US,
    instances: int = 1,
    threads: int = 0,
) -> list[Path]:
    """Write a Triton ensemble ``<name>`` that takes text, and the three models it runs.

    ``<name>`` takes ``text`` (TYPE_STRING, one per row: shape ``[n, 1]``)
    and gives the model's outputs plus ``label`` (TYPE_STRING), as
    `export.serve`'s text interface names them. Its steps:
    ``<name>_encode`` (Python backend: the text encoder), ``<name>_ids`` (the
    ``onnxruntime_onnx`` model, as `write_repository` writes it) and
    ``<name>_decode`` (Python backend: the label rule). Both Python models
    carry ``text.py``, a byte copy of this package's `export.text` (numpy and
    the standard library only), and ``encoder.json`` from the model's metadata.

    Args:
        as `write_repository`; ``name`` defaults to the file's stem.

    Returns:
        The four model folders: the ensemble's, then its steps' in order.

    Raises:
        FileNotFoundError, ValueError: as `write_repository`, and a model
            without a text encoder or not of one id input and a
            ``probability`` output (before anything is written).
    """
    from export.runtime import TextClassifier

    model = Path(model)
    name = model.stem if name is None else name
    try:
        classifier = TextClassifier(model, threads=1)
    except ValueError as error:
        raise ValueError(f"--text needs a text model of ours: {error}") from None
    ids_name, encode_name, decode_name = f"{name}_ids", f"{name}_encode", f"{name}_decode"
    inputs, outputs = graph_tensors(model)
    if not (_batched(inputs) and _batched(outputs)):
        raise ValueError(f"{model}: the text ensemble needs a model whose every tensor has a batch axis first")
    ids_input = inputs[0]
    by_name = {spec.name: spec for spec in outputs}
    ids_config = model_config(
        model, name=ids_name, max_batch_size=max_batch_size, queue_delay_us=queue_delay_us,
        instances=instances, threads=threads,
    )
    encode_config = _python_config(
        encode_name, max_batch_size, [("text", "TYPE_STRING", [1])],
        [("ids", ids_input.data_type, ids_input.shape[1:])], instances,
    )
    probability = by_name["probability"]
    decode_config = _python_config(
        decode_name, max_batch_size, [("probability", probability.data_type, probability.shape[1:])],
        [("label", "TYPE_STRING", [1])], instances,
    )
    steps = [
        _step(encode_name, {"text": "text"}, {"ids": "ids"}),
        _step(ids_name, {ids_input.name: "ids"}, {spec.name: spec.name for spec in outputs}),
        _step(decode_name, {"probability": "probability"}, {"label": "label"}),
    ]
    ensemble_outputs = [(spec.name, spec.data_type, spec.shape[1:]) for spec in outputs] + [("label", "TYPE_STRING", [1])]
    ensemble_config = (
        f'name: "{name}"\nplatform: "ensemble"\nmax_batch_size: {max_batch_size}\n'
        f'input {_tensor_list([("text", "TYPE_STRING", [1])])}\noutput {_tensor_list(ensemble_outputs)}\n'
        "ensemble_scheduling {\n  step [\n" + ",\n".join(steps) + "\n  ]\n}\n"
    )
    encoder_json = classifier.encoder.to_json()
    repository = Path(repository)
    folders = []
    for folder_name, config, files in (
        (encode_name, encode_config, {"model.py": _BACKEND / "encode.py", "text.py": _TEXT_MODULE}),
        (ids_name, ids_config, {"model.onnx": model}),
        (decode_name, decode_config, {"model.py": _BACKEND / "decode.py", "text.py": _TEXT_MODULE}),
        (name, ensemble_config, {}),
    ):
        with atomic_dir(repository / folder_name) as staging:
            (staging / "config.pbtxt").write_text(config, encoding="utf-8")
            (staging / "1").mkdir()  # Triton wants a version folder for an ensemble too
            for target, source in files.items():
                shutil.copyfile(source, staging / "1" / target)
            if folder_name in (encode_name, decode_name):
                (staging / "1" / "encoder.json").write_text(encoder_json, encoding="utf-8")
        folders.append(repository / folder_name)
    return [folders[-1], *folders[:-1]]


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
    parser.add_argument(
        "--text", action="store_true",
        help="write a text ensemble named after the model instead (it takes `text`, gives the outputs "
        "and `label`), with its steps NAME_encode, NAME_ids (the model) and NAME_decode",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.text:
        try:
            folders = write_text_ensemble(
                args.model, args.output, name=args.name, max_batch_size=args.max_batch_size,
                queue_delay_us=args.queue_delay_us, instances=args.instances, threads=args.threads,
            )
        except (FileNotFoundError, ValueError) as error:
            raise CliError(str(error)) from None
        print(f"wrote the text ensemble {folders[0]} and its steps {', '.join(str(f) for f in folders[1:])}")
        return 0
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
