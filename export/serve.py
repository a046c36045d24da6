"""Serve exported ONNX models: KServe v2 over HTTP and gRPC (as Triton speaks them) and v1, micro-batched.

    python -m export.serve sentiment.onnx other.onnx --port 8000
    python -m export.serve --model-repository models --model-control-mode poll

Each model file is named after its stem; a Triton model repository
(`export.repository`) gives names, versions and batching from its configs
(`ModelRegistry`). The gRPC service (``inference.GRPCInferenceService``,
port 8001 by default) is `export.grpc_service`, over the same models. HTTP
endpoints (each ``/v2/models/{name}`` route also as
``/v2/models/{name}/versions/{version}``):

==============================================  ==========================================
``GET /v2/health/live``, ``/v2/health/ready``   liveness, readiness
``GET /v2``                                     server metadata
``GET /v2/models/{name}``                       inputs and outputs (datatypes, shapes, -1)
``GET /v2/models/{name}/ready``                 model readiness
``GET /v2/models/{name}/config``                its Triton model config (the repository's, or as one)
``POST /v2/models/{name}/infer``                inference: JSON tensors or Triton binary data
``POST /v1/models/{name}:predict``              KServe v1: ``{"instances": [...]}``
``GET /v1/models/{name}``                       KServe v1 model status
``POST /v2/repository/index``                   the repository's models, their versions and states
``POST /v2/repository/models/{name}/load``      (re)load a model (``--model-control-mode explicit``)
``POST /v2/repository/models/{name}/unload``    stop serving it once its requests are answered
``GET /metrics``                                Prometheus text
``GET /``                                       a page: the models, and a text box to try them
==============================================  ==========================================

A text model (one exported with its encoder) also takes an input ``text``
of datatype BYTES and shape ``[n]``: the server encodes it and answers
with the model's outputs plus ``label`` (BYTES, the predicted label per row).

Concurrent requests to a model are gathered into one runtime call of up to
``--max-batch`` rows (`export.batching`), run off the event loop. A bad
request gets a 4xx and a one-line ``{"error": ...}``; the server goes on.

Imports numpy, onnxruntime, Starlette, uvicorn and prometheus-client;
never TensorFlow or Keras (``pip install "keras-attn[serve]"``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import contextvars
import copy
import importlib.metadata
import json
import logging
import math
import os
import re
import signal
import socket
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from export.batching import MicroBatcher
from export.cli import CliError, one_line, run
from export.protocol import (
    HEADER_LENGTH,
    HTTPError,
    InferRequest,
    ProtocolError,
    datatype_of,
    encode_infer_response,
    parse_infer_request,
    parse_v1_request,
)
from export.repository import ModelSource, RepositoryError, model_names, read_model
from export.runtime import METADATA_ENCODER_KEY, OnnxModel, TextClassifier, read_metadata

try:
    import prometheus_client
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import ClientDisconnect, Request
    from starlette.responses import HTMLResponse, JSONResponse, Response
    from starlette.routing import Route
except ImportError as missing:  # the serve extra is not installed
    _MISSING = missing
else:
    _MISSING = None

__all__ = ["ServedModel", "Settings", "create_app", "listen", "main", "parse_size"]

log = logging.getLogger("export.serve")

#: The input a text model takes its texts from, and the output of labels.
TEXT_INPUT = "text"
LABEL_OUTPUT = "label"
_PROBABILITY = "probability"

#: Passes the settings to worker processes (``--workers`` > 1).
_ENVIRONMENT = "KERAS_ATTN_SERVE"

#: Rows per runtime call: 8 clients sending 64 sentences got 1.4x the
#: sentences/s with 256 as with 64 (calls big enough for the runtime's
#: threads, and fewer of them), and the Triton config uses the same.
DEFAULT_MAX_BATCH = 256
DEFAULT_MAX_DELAY_MS = 2.0
DEFAULT_MAX_BODY = 8 * 1024 * 1024
#: Seconds a request may take to arrive whole: an 8 MiB body at 1 MiB/s, with room.
DEFAULT_TIMEOUT_READ = 30.0
#: Triton's --repository-poll-secs.
DEFAULT_POLL_SECONDS = 15.0
CONTROL_MODES = ("none", "explicit", "poll")
#: Triton's gRPC port.
DEFAULT_GRPC_PORT = 8001

_PAGE = Path(__file__).with_name("page.html")


@dataclass(frozen=True)
class Settings:
    """How the server runs; the CLI's options.

    Attributes:
        models: the ``.onnx`` files to serve; each is named after its stem.
        max_batch: most rows in one runtime call.
        max_delay_ms: how long a request may wait for others to share its
            call; it waits only while requests to its model are arriving
            (received, not yet parsed), so a lone request never waits.
        threads: most threads a runtime call may use; None leaves it to
            `export.runtime` (the usable cores, for calls big enough).
        max_body: largest accepted request body, in bytes.
        repository: a Triton model repository to serve (`export.repository`)
            instead of ``models``; its configs' ``max_batch_size`` and
            ``dynamic_batching`` replace ``max_batch`` and ``max_delay_ms``.
        control_mode: the repository's model control, as Triton's
            ``--model-control-mode``: ``none`` (every model at start, no
            load or unload), ``explicit`` (``load_models`` at start, then
            load and unload requests) or ``poll`` (every model at start,
            then the repository's changes every ``poll_seconds``).
        load_models: the models ``explicit`` loads at start; ``*`` for all.
        poll_seconds: how often ``poll`` looks at the repository.
        grpc_host, grpc_port: where the gRPC service listens; None: no gRPC.
    """

    models: tuple[str, ...] = ()
    max_batch: int = DEFAULT_MAX_BATCH
    max_delay_ms: float = DEFAULT_MAX_DELAY_MS
    threads: int | None = None
    max_body: int = DEFAULT_MAX_BODY
    repository: str | None = None
    control_mode: str = "none"
    load_models: tuple[str, ...] = ()
    poll_seconds: float = DEFAULT_POLL_SECONDS
    grpc_host: str = "127.0.0.1"
    grpc_port: int | None = None


class _Arrival:
    """A request to a model from its arrival until it reaches the batcher (or fails)."""

    def __init__(self, model: ServedModel) -> None:
        self.model = model
        self.open = True
        model.arriving += 1

    def done(self) -> None:
        if self.open:
            self.open = False
            self.model.arriving -= 1
            self.model.batcher.notify()


#: The arrival of the request this task answers.
_ARRIVAL: contextvars.ContextVar[_Arrival | None] = contextvars.ContextVar("arrival", default=None)


def _datatype(dtype: str) -> str:
    return datatype_of(np.dtype(dtype))


def _tensor_metadata(spec) -> dict:
    return {"name": spec.name, "datatype": _datatype(spec.dtype), "shape": [-1 if d is None else d for d in spec.shape]}


def _batch_major(specs) -> bool:
    """Whether every tensor's first axis is symbolic: rows of requests can be stacked on it."""
    return all(spec.shape and spec.shape[0] is None for spec in specs)


class ServedModel:
    """One model file behind the server: its runtime, its metadata and its batcher.

    Args:
        path: the ``.onnx`` file; a file carrying a text encoder is served
            as a text model (`export.runtime.TextClassifier`).
        threads: onnxruntime threads per call.
        name: the model's name (default: the file's stem).
        version: the version it is served as.

    Raises:
        FileNotFoundError, ValueError: as `export.runtime.OnnxModel`.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, threads: int | None = None, name: str | None = None, version: str = "1"
    ) -> None:
        self.path = Path(path)
        self.name = self.path.stem if name is None else name
        self.version = version
        if METADATA_ENCODER_KEY in read_metadata(self.path):
            self.classifier: TextClassifier | None = TextClassifier(self.path, threads=threads)
            self.model = self.classifier.model
            # What `TextClassifier.run_ids` answers with: the model's own outputs.
            known = {_PROBABILITY, "attention"}
            self.outputs = [spec for spec in self.model.outputs if spec.name in known]
        else:
            self.classifier = None
            self.model = OnnxModel(self.path, threads=threads)
            self.outputs = list(self.model.outputs)
        self.inputs = list(self.model.inputs)
        self._datatypes = {spec.name: _datatype(spec.dtype) for spec in self.inputs}
        self._batched = _batch_major(self.inputs) and _batch_major(self.outputs)
        self.batcher: MicroBatcher | None = None
        #: Requests received and not yet handed to the batcher, which waits for them.
        self.arriving = 0
        #: Requests being answered: a model swapped out is closed once none is left.
        self.in_flight = 0
        #: Its repository config (`export.repository.ModelSource.config`); None for a file.
        self.repository_config: dict | None = None

    # -- metadata -------------------------------------------------------------

    @property
    def output_names(self) -> list[str]:
        """Everything a request may ask for: the model's outputs, and ``label`` for a text model."""
        names = [spec.name for spec in self.outputs]
        return [*names, LABEL_OUTPUT] if self.classifier is not None else names

    def triton_config(self) -> dict:
        """Its Triton model config, as Triton gives it over HTTP: the repository's, or one made as a
        repository would have it (the graph's tensors, dims without the batch axis, the batcher's rows)."""
        if self.repository_config is not None:
            return self.repository_config
        skip = 1 if self._batched else 0

        def tensors(specs) -> list[dict]:
            typed = [(spec, _datatype(spec.dtype)) for spec in specs]
            return [
                {
                    "name": spec.name,
                    "data_type": "TYPE_" + ("STRING" if datatype == "BYTES" else datatype),
                    "dims": [-1 if d is None else d for d in spec.shape[skip:]],
                }
                for spec, datatype in typed
            ]

        return {
            "name": self.name,
            "platform": "onnxruntime_onnx",
            "max_batch_size": self.batcher.max_rows if self._batched else 0,
            "input": tensors(self.inputs),
            "output": tensors(self.outputs),
        }

    def metadata(self) -> dict:
        """The v2 model metadata; a text model's also says how to send text."""
        data = {
            "name": self.name,
            "versions": [self.version],
            "platform": "onnxruntime_onnx",
            "inputs": [_tensor_metadata(spec) for spec in self.inputs],
            "outputs": [_tensor_metadata(spec) for spec in self.outputs],
        }
        if self.classifier is not None:
            data["parameters"] = {
                "text_input": {"name": TEXT_INPUT, "datatype": "BYTES", "shape": [-1]},
                "label_output": {"name": LABEL_OUTPUT, "datatype": "BYTES", "shape": [-1]},
                "labels": list(self.classifier.labels),
                "seq_len": self.classifier.seq_len,
            }
        return data

    # -- inference ------------------------------------------------------------

    async def infer(self, request: InferRequest) -> dict[str, np.ndarray]:
        """The outputs a v2 request asks for, in its order (all by default).

        Raises:
            HTTPError: 400 for a request this model cannot take.
        """
        names = self._requested(request)
        if self.classifier is not None and TEXT_INPUT in request.inputs and TEXT_INPUT not in self._datatypes:
            outputs = await self._run_ids(self._text_ids(request))
        else:
            feeds = self._feeds(request)
            outputs = await (self._run_ids(feeds[self.inputs[0].name]) if self.classifier else self._run(feeds))
        return {name: outputs[name] for name in names}

    def _requested(self, request: InferRequest) -> list[str]:
        available = self.output_names
        if request.outputs is None:
            return available
        for output in request.outputs:
            if output.name not in available:
                raise HTTPError(400, f"unknown output '{output.name}': model '{self.name}' has {', '.join(available)}")
        return [output.name for output in request.outputs]

    def _text_ids(self, request: InferRequest) -> np.ndarray:
        if len(request.inputs) != 1:
            others = ", ".join(name for name in request.inputs if name != TEXT_INPUT)
            raise HTTPError(400, f"input '{TEXT_INPUT}' comes alone; also given: {others}")
        if request.datatypes[TEXT_INPUT] != "BYTES":
            raise HTTPError(400, f"input '{TEXT_INPUT}' must have datatype BYTES, got {request.datatypes[TEXT_INPUT]}")
        texts = request.inputs[TEXT_INPUT]
        if texts.ndim == 2 and texts.shape[1] == 1:
            texts = texts[:, 0]  # [n, 1], as Triton's text ensemble (export.to_triton --text) takes it
        if texts.ndim != 1:
            raise HTTPError(400, f"input '{TEXT_INPUT}' must have shape [n] or [n, 1], got {list(texts.shape)}")
        try:
            decoded = [item.decode("utf-8") for item in texts]
        except UnicodeDecodeError as error:
            raise HTTPError(400, f"input '{TEXT_INPUT}' is not UTF-8 text: {error}") from None
        return self.classifier.encoder.encode(decoded)

    def _feeds(self, request: InferRequest) -> dict[str, np.ndarray]:
        for name, datatype in request.datatypes.items():
            expected = self._datatypes.get(name)
            if expected is None:
                known = ", ".join(self._datatypes)
                if self.classifier is not None:
                    known += f" (or '{TEXT_INPUT}' as BYTES)"
                raise HTTPError(400, f"unknown input '{name}': model '{self.name}' takes {known}")
            if datatype != expected:
                raise HTTPError(400, f"input '{name}' has datatype {expected} in model '{self.name}', got {datatype}")
        try:
            return self.model.check_feeds(request.inputs)
        except ValueError as error:
            raise HTTPError(400, one_line(error)) from None

    def _rows(self, feeds: dict[str, np.ndarray]) -> int | None:
        """Rows of a batchable request, or None when it must run alone."""
        if not self._batched:
            return None
        counts = {value.shape[0] if value.ndim else None for value in feeds.values()}
        return counts.pop() if len(counts) == 1 and None not in counts else None

    async def _submit(self, key, payload, rows: int, run):
        arrival = _ARRIVAL.get()
        if arrival is not None:
            arrival.done()
        return await self.batcher.submit(key, payload, rows, run)

    async def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = self._rows(feeds)
        if rows is None:  # a model without a batch axis: each request is one call
            key = object()
            rows = 1
        else:
            key = ("tensors", tuple((name, value.shape[1:], value.dtype.str) for name, value in feeds.items()))
        return await self._submit(key, feeds, rows, self._run_feeds)

    def _run_feeds(self, batch: Sequence[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        if len(batch) == 1:
            return [self.model.run(batch[0])]
        joined = {name: np.concatenate([feeds[name] for feeds in batch]) for name in batch[0]}
        return _split(self.model.run(joined), [len(next(iter(feeds.values()))) for feeds in batch])

    async def _run_ids(self, ids: np.ndarray) -> dict[str, np.ndarray]:
        if ids.ndim == 2:
            key, rows = ("ids", ids.shape[1]), ids.shape[0]
        else:  # refused by run_ids, alone
            key, rows = object(), 1
        try:
            return await self._submit(key, ids, rows, self._run_id_batch)
        except ValueError as error:  # run_ids' documented refusals: bad ids
            raise HTTPError(400, one_line(error)) from None

    def _run_id_batch(self, batch: Sequence[np.ndarray]) -> list[dict[str, np.ndarray]]:
        ids = batch[0] if len(batch) == 1 else np.concatenate(batch)
        outputs = self.classifier.run_ids(ids)
        outputs[LABEL_OUTPUT] = self._labels(outputs[_PROBABILITY])
        return _split(outputs, [len(part) for part in batch])

    def _labels(self, probability: np.ndarray) -> np.ndarray:
        """The predicted label per row, as a BYTES (object) array."""
        labels = np.empty(len(probability), dtype=object)
        labels[:] = [self.classifier.labels[i] for i in self.classifier.label_indices(probability)]
        return labels

    async def predict_v1(self, instances: list) -> list:
        """KServe v1 predictions: per text, a `Prediction`'s fields; per row, the outputs.

        Raises:
            HTTPError: 400 for instances this model cannot take.
        """
        if self.classifier is not None and all(isinstance(item, str) for item in instances):
            predictions = await self._submit(("v1-text",), instances, len(instances), self._predict_texts)
            return [prediction.to_dict() for prediction in predictions]
        if self.classifier is not None:
            try:
                ids = np.asarray(instances)
            except ValueError:
                raise HTTPError(400, "instances must be texts, or token rows of equal length") from None
            if ids.dtype.kind not in "iu":
                raise HTTPError(400, "instances must be texts, or rows of integer token ids")
            outputs = await self._run_ids(ids)
            scores = self.classifier.label_scores(outputs[_PROBABILITY])
            labels = list(self.classifier.labels)
            return [
                {
                    LABEL_OUTPUT: label,
                    "probability": float(row[labels.index(label)]),
                    "scores": dict(zip(labels, row.tolist())),
                }
                for label, row in zip(outputs[LABEL_OUTPUT], scores)
            ]
        feeds = self._v1_feeds(instances)
        try:
            checked = self.model.check_feeds(feeds)
        except ValueError as error:
            raise HTTPError(400, one_line(error)) from None
        outputs = await self._run(checked)
        names = list(outputs)
        if len(names) == 1:
            return outputs[names[0]].tolist()
        return [{name: outputs[name][i].tolist() for name in names} for i in range(len(instances))]

    def _v1_feeds(self, instances: list) -> dict[str, np.ndarray]:
        names = [spec.name for spec in self.inputs]
        if len(names) == 1 and not all(isinstance(item, dict) for item in instances):
            columns = {names[0]: instances}
        else:
            if not all(isinstance(item, dict) and set(item) == set(names) for item in instances):
                raise HTTPError(400, f"each instance must be an object with the inputs {', '.join(names)}")
            columns = {name: [item[name] for item in instances] for name in names}
        feeds = {}
        for name, values in columns.items():
            try:
                feeds[name] = np.asarray(values)
            except ValueError:
                raise HTTPError(400, f"input '{name}': instances are not rows of one shape") from None
            if feeds[name].dtype.kind not in "biuf":
                raise HTTPError(400, f"input '{name}': instances must hold numbers")
        return feeds

    def _predict_texts(self, batch: Sequence[list[str]]) -> list[list]:
        predictions = self.classifier.predict([text for texts in batch for text in texts])
        parts, start = [], 0
        for texts in batch:
            parts.append(predictions[start : start + len(texts)])
            start += len(texts)
        return parts

    def close(self) -> None:
        (self.classifier or self.model).close()


def _split(outputs: dict[str, np.ndarray], sizes: list[int]) -> list[dict[str, np.ndarray]]:
    """Cut every output at the row counts ``sizes``, in order."""
    if len(sizes) == 1:  # a call of one request: nothing to cut
        return [outputs]
    cuts = np.cumsum(sizes)[:-1]
    pieces = {name: np.split(value, cuts) for name, value in outputs.items()}
    return [{name: pieces[name][i] for name in outputs} for i in range(len(sizes))]


class ModelRegistry:
    """The models being served, by name and version: found, loaded, swapped, unloaded.

    From files (``Settings.models``: each one version "1", named after its
    stem) or from a Triton model repository (``Settings.repository``). A
    model (re)loaded while it serves is swapped whole: requests already
    holding the old versions finish on their sessions, which are closed once
    the last one is answered, and new requests get the new versions. A
    version that fails to load is refused and the old ones keep serving.

    Raises (the constructor): FileNotFoundError, ValueError: a model file
        cannot be loaded, two files share a stem, or the repository is
        not a folder.
    """

    def __init__(self, settings: Settings, metrics: _Metrics, executor: ThreadPoolExecutor) -> None:
        self.settings = settings
        self._metrics = metrics
        self._executor = executor
        #: name -> version -> model, versions ascending.
        self.served: dict[str, dict[str, ServedModel]] = {}
        #: name -> why it is not served (repository models only).
        self.unavailable: dict[str, str] = {}
        self._stamps: dict[str, tuple] = {}
        self._unloading: set[str] = set()
        self._retiring: set[asyncio.Task] = set()
        self._lock: asyncio.Lock | None = None
        if settings.repository is None:
            for path in settings.models:
                name = Path(path).stem
                if name in self.served:
                    raise ValueError(f"two models are named '{name}' ({self.served[name]['1'].path} and {path}): rename one file")
                self._install(name, {"1": self._open(ServedModel(path, threads=settings.threads), None)})
            return
        names = model_names(settings.repository)
        if settings.control_mode == "explicit":
            wanted = names if "*" in settings.load_models else list(settings.load_models)
            for name in wanted:
                if name not in names:
                    raise ValueError(f"--load-model {name}: no such model in the repository {settings.repository}")
        else:
            wanted = names
        for name in names:
            self.unavailable[name] = "unloaded"
        for name in wanted:
            try:
                source = read_model(settings.repository, name)
                self._install(name, self._open_source(source), source.stamp)
            except (FileNotFoundError, ValueError) as error:
                self.unavailable[name] = one_line(error)
                log.warning("not serving %s: %s", name, one_line(error))

    # -- finding a model --------------------------------------------------------

    def get(self, name: str, version: str | None = None) -> ServedModel:
        """The model a request names: ``version``, or the newest served.

        Raises:
            HTTPError: 404 for a model or version not served, 503 while it unloads.
        """
        if name in self._unloading:
            raise HTTPError(503, f"model '{name}' is unloading")
        versions = self.served.get(name)
        if versions is None:
            if name in self.unavailable:
                raise HTTPError(404, f"model '{name}' is not loaded: {self.unavailable[name]}")
            raise HTTPError(404, f"unknown model '{name}'; this server has {', '.join(self.served) or 'none'}")
        if version is None:
            return next(reversed(versions.values()))
        model = versions.get(version)
        if model is None:
            raise HTTPError(404, f"model '{name}' has no version {version!r}; it serves {', '.join(versions)}")
        return model

    def models(self) -> list[ServedModel]:
        """The newest version of each served model."""
        return [next(reversed(versions.values())) for versions in self.served.values()]

    def metadata(self, model: ServedModel) -> dict:
        """The v2 model metadata, listing every version served."""
        return {**model.metadata(), "versions": list(self.served.get(model.name, {model.version: model}))}

    def index(self, ready_only: bool = False) -> list[dict]:
        """Triton's repository index: each served version READY, each other model UNAVAILABLE with its reason."""
        entries = []
        for name in sorted({*self.served, *self.unavailable}):
            for version in self.served.get(name, {}):
                entries.append({"name": name, "version": version, "state": "READY", "reason": ""})
            if name not in self.served and not ready_only:
                entries.append({"name": name, "version": "", "state": "UNAVAILABLE", "reason": self.unavailable[name]})
        return entries

    # -- loading and unloading --------------------------------------------------

    async def load(self, name: str) -> None:
        """(Re)load ``name`` from the repository and swap it in (explicit mode).

        Raises:
            HTTPError: 409 when the control mode is not explicit, 400 when
                the model cannot be loaded (the old versions keep serving).
        """
        self._check_explicit("load")
        async with self._locked():
            await self._reload(name)

    async def unload(self, name: str) -> None:
        """Stop serving ``name`` once the requests it is answering are done (explicit mode).

        Raises:
            HTTPError: 409 when the control mode is not explicit, 404 for a
                model not loaded.
        """
        self._check_explicit("unload")
        async with self._locked():
            versions = self.served.get(name)
            if versions is None:
                raise HTTPError(404, f"model '{name}' is not loaded")
            self._unloading.add(name)
            try:
                await asyncio.gather(*(self._retire(model) for model in versions.values()))
            finally:
                self._unloading.discard(name)
            del self.served[name]
            self._stamps.pop(name, None)
            self.unavailable[name] = "unloaded"
            log.info("unloaded %s", name)

    async def poll(self) -> None:
        """Serve the repository's changes every ``poll_seconds``: new, changed and removed models (poll mode)."""
        while True:
            await asyncio.sleep(self.settings.poll_seconds)
            async with self._locked():
                await self.poll_once()

    async def poll_once(self) -> None:
        names = await asyncio.to_thread(model_names, self.settings.repository)
        for name in [name for name in self.served if name not in names]:
            versions = self.served.pop(name)
            self._stamps.pop(name, None)
            await asyncio.gather(*(self._retire(model) for model in versions.values()))
            log.info("unloaded %s: its folder is gone", name)
        for name in [name for name in self.unavailable if name not in names]:
            del self.unavailable[name]
        for name in names:
            try:
                source = await asyncio.to_thread(read_model, self.settings.repository, name)
            except RepositoryError as error:
                if name not in self.served and self.unavailable.get(name) != one_line(error):
                    self.unavailable[name] = one_line(error)
                    log.warning("not serving %s: %s", name, one_line(error))
                continue
            if self._stamps.get(name) != source.stamp:
                with contextlib.suppress(HTTPError):  # logged; the old versions keep serving
                    await self._reload(name, source)

    async def close(self) -> None:
        """Close every model, once the requests they are answering are done."""
        await asyncio.gather(*self._retiring)
        for versions in self.served.values():
            for model in versions.values():
                model.close()

    # -- internals --------------------------------------------------------------

    def _check_explicit(self, action: str) -> None:
        if self.settings.repository is None:
            raise HTTPError(409, f"cannot {action}: this server serves files; start it with --model-repository")
        if self.settings.control_mode != "explicit":
            raise HTTPError(
                409, f"cannot {action}: the model control mode is {self.settings.control_mode}; "
                "start the server with --model-control-mode explicit"
            )

    def _locked(self) -> asyncio.Lock:
        if self._lock is None:  # made on the loop that uses it
            self._lock = asyncio.Lock()
        return self._lock

    async def _reload(self, name: str, source: ModelSource | None = None) -> None:
        try:
            if source is None:
                source = await asyncio.to_thread(read_model, self.settings.repository, name)
            versions = await asyncio.to_thread(self._open_source, source)
        except (FileNotFoundError, ValueError) as error:
            if source is not None:
                self._stamps[name] = source.stamp  # refused once, tried again when it changes
            if name not in self.served:
                self.unavailable[name] = one_line(error)
            kept = f"; still serving version {', '.join(self.served[name])}" if name in self.served else ""
            log.warning("cannot load %s: %s%s", name, one_line(error), kept)
            raise HTTPError(400, f"cannot load model '{name}': {one_line(error)}{kept}") from None
        old = self.served.get(name, {})
        self._install(name, versions, source.stamp)
        log.info("serving %s version %s", name, ", ".join(versions))
        for model in old.values():
            task = asyncio.create_task(self._retire(model))
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)

    def _open_source(self, source: ModelSource) -> dict[str, ServedModel]:
        """Every version ``source`` serves, opened; all or none."""
        opened: dict[str, ServedModel] = {}
        try:
            for version, path in source.files.items():
                model = ServedModel(path, threads=self.settings.threads, name=source.name, version=str(version))
                model.repository_config = source.config
                opened[str(version)] = self._open(model, source)
        except BaseException:
            for model in opened.values():
                model.close()
            raise
        return opened

    def _open(self, model: ServedModel, source: ModelSource | None) -> ServedModel:
        """Give ``model`` its batcher: the settings', or its repository config's."""
        max_rows, max_delay_ms = self.settings.max_batch, self.settings.max_delay_ms
        if source is not None:
            if source.max_delay_ms is None:  # no dynamic_batching: each request alone, as Triton
                max_rows, max_delay_ms = 1, 0.0
            else:
                max_rows, max_delay_ms = max(source.max_batch_size, 1), source.max_delay_ms
        model.batcher = MicroBatcher(
            max_rows=max_rows,
            max_delay=max_delay_ms / 1000,
            executor=self._executor,
            on_batch=self._metrics.batch_rows.labels(model.name).observe,
            arriving=lambda: model.arriving,
        )
        return model

    def _install(self, name: str, versions: dict[str, ServedModel], stamp: tuple | None = None) -> None:
        self.served[name] = dict(sorted(versions.items(), key=lambda item: int(item[0])))
        self.unavailable.pop(name, None)
        if stamp is not None:
            self._stamps[name] = stamp
        self._metrics.queue_rows.labels(name).set_function(
            lambda: sum(model.batcher.queued_rows for model in self.served.get(name, {}).values())
        )

    async def _retire(self, model: ServedModel) -> None:
        while model.in_flight:
            await asyncio.sleep(0.005)
        model.close()


class _Metrics:
    """The Prometheus series, in a registry of their own (one per app)."""

    def __init__(self) -> None:
        prometheus_client.disable_created_metrics()  # no *_created series: they only clutter the text
        self.registry = prometheus_client.CollectorRegistry()
        self._series: dict[tuple, tuple] = {}
        self.requests = prometheus_client.Counter(
            "keras_attn_requests",
            "Model requests answered, by model, endpoint, protocol (http, grpc) and status (HTTP's, or gRPC's code).",
            ["model", "endpoint", "protocol", "status"],
            registry=self.registry,
        )
        self.latency = prometheus_client.Histogram(
            "keras_attn_request_duration_seconds",
            "Time from a model request's arrival to its answer.",
            ["model", "endpoint", "protocol"],
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5),
            registry=self.registry,
        )
        self.batch_rows = prometheus_client.Histogram(
            "keras_attn_batch_rows",
            "Rows per runtime call after micro-batching.",
            ["model"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
            registry=self.registry,
        )
        self.queue_rows = prometheus_client.Gauge(
            "keras_attn_queue_rows",
            "Rows waiting for a runtime call.",
            ["model"],
            registry=self.registry,
        )

    def count(self, model: str, endpoint: str, protocol: str, status: str, started: float) -> None:
        """Count one answered request, and its time since ``started`` (`time.perf_counter`)."""
        key = (model, endpoint, protocol, status)
        series = self._series.get(key)
        if series is None:  # prometheus-client's labels() takes a lock and builds keys: once per series
            series = self._series[key] = (self.requests.labels(*key), self.latency.labels(*key[:3]))
        series[0].inc()
        series[1].observe(time.perf_counter() - started)


def _check_size(size: int, limit: int) -> None:
    if size > limit:
        raise HTTPError(413, f"the body has {size} bytes; this server takes at most {limit}")


async def _body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed ``limit``."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise HTTPError(400, "Content-Length is not a number")
        _check_size(int(declared), limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPError(413, f"the body exceeds {limit} bytes, the most this server takes")
        chunks.append(chunk)
    return b"".join(chunks)


def _error_content(message: str) -> bytes:
    return json.dumps({"error": message}, ensure_ascii=False, separators=(",", ":")).encode()


def _error(status: int, message: str) -> Response:
    return Response(_error_content(message), status_code=status, media_type="application/json")


def _failure(error: Exception, what: str) -> tuple[int, str]:
    """The status and one-line message answering a model request that raised ``error``; a bug is logged."""
    if isinstance(error, HTTPError):
        return error.status, one_line(error)
    if isinstance(error, ProtocolError):
        return 400, one_line(error)
    # a bug or a runtime failure: keep serving
    log.error("error answering %s", what, exc_info=error)
    return 500, f"internal error: {one_line(error)}"


#: The infer routes, as `create_app` routes them: name, and version if any.
_INFER_PATH = re.compile(rb"/v2/models/([^/]+)(?:/versions/([^/]+))?/infer")
_JSON_HEADERS = ((b"content-type", b"application/json"),)
_BINARY_CONTENT_TYPE = (b"content-type", b"application/octet-stream")
_HEADER_LENGTH_NAME = HEADER_LENGTH.encode()


class _DirectInfer:
    """An infer request answered at the HTTP protocol without ASGI (`export.http_protocol.DirectRequest`).

    Its model is found, and the request counted in flight and arriving, as
    soon as its headers are read: the batcher then knows of every request the
    event loop has read in a turn, not only of those whose turn to run came.

    Args:
        answer: ``answer(model, body, Inference-Header-Content-Length)``, the
            infer route's work: ``(content, JSON length or None)``.
    """

    def __init__(self, registry: ModelRegistry, metrics: _Metrics, answer, name: str, version: str | None,
                 json_length: str | None, max_body: int) -> None:
        self._started = time.perf_counter()
        self._metrics, self._answer, self._name = metrics, answer, name
        self._json_length, self._max_body = json_length, max_body
        self._model = self._arrival = self._error = None
        try:
            self._model = registry.get(name, version)
        except HTTPError as error:
            self._error = error
        else:
            self._model.in_flight += 1
            self._arrival = _Arrival(self._model)

    async def answer(self, body: bytes) -> tuple[int, Sequence[tuple[bytes, bytes]], bytes]:
        model, status = self._model, 200
        _ARRIVAL.set(self._arrival)
        try:
            if self._error is not None:
                raise self._error
            _check_size(len(body), self._max_body)
            content, json_length = await self._answer(model, body, self._json_length)
            if json_length is None:
                headers = _JSON_HEADERS
            else:
                headers = (_BINARY_CONTENT_TYPE, (_HEADER_LENGTH_NAME, b"%d" % json_length))
        except Exception as error:
            status, message = _failure(error, f"POST /v2/models/{self._name}/infer")
            headers, content = _JSON_HEADERS, _error_content(message)
        finally:
            self.abandon()
        self._metrics.count(self._name if model is not None else "", "infer", "http", str(status), self._started)
        return status, headers, content

    def abandon(self) -> None:
        """No longer arriving nor in flight (its answer is made, or it never will be)."""
        if self._arrival is not None:
            self._arrival.done()
            self._arrival = None
        if self._model is not None:
            self._model.in_flight -= 1
            self._model = None


def _server_version() -> str:
    try:
        return importlib.metadata.version("keras-attn")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def create_app(settings: Settings) -> Starlette:
    """The ASGI app serving ``settings``' models (`ModelRegistry`), loaded here; gRPC too when asked.

    Raises:
        FileNotFoundError, ValueError: a model file cannot be loaded, two
            files share a stem, or the repository is not a folder (one
            line each).
    """
    if _MISSING is not None:
        raise CliError(f'serving needs the serve extra: pip install "keras-attn[serve]" ({_MISSING})')
    if settings.max_batch < 1 or not settings.max_delay_ms >= 0 or settings.max_body < 1:
        raise ValueError("max_batch and max_body must be >= 1 and max_delay_ms >= 0")
    if settings.control_mode not in CONTROL_MODES:
        raise ValueError(f"control_mode must be one of {', '.join(CONTROL_MODES)}, got {settings.control_mode!r}")
    metrics = _Metrics()
    # Threads start as calls need them: one per model running at once.
    executor = ThreadPoolExecutor(max_workers=32, thread_name_prefix="serve-model")
    registry = ModelRegistry(settings, metrics, executor)
    page = _PAGE.read_text(encoding="utf-8")
    server_version = _server_version()

    def model_endpoint(endpoint: str, batched: bool = False):
        """Wrap a model handler: find the model, turn errors into one line, count and time it.

        A ``batched`` handler's request counts as arriving (`_Arrival`) until it
        reaches the model's batcher, which waits for it.
        """

        def decorate(handler):
            async def wrapped(request: Request) -> Response:
                started = time.perf_counter()
                name = request.path_params["name"]
                model = arrival = None
                try:
                    model = registry.get(name, request.path_params.get("version"))
                    model.in_flight += 1
                    arrival = _Arrival(model) if batched else None
                    _ARRIVAL.set(arrival)
                    response = await handler(request, model)
                except ClientDisconnect:
                    response = Response(status_code=499)
                except Exception as error:
                    response = _error(*_failure(error, f"{request.method} {request.url.path}"))
                finally:
                    if arrival is not None:
                        arrival.done()
                    if model is not None:
                        model.in_flight -= 1
                metrics.count(name if model is not None else "", endpoint, "http", str(response.status_code), started)
                return response

            return wrapped

        return decorate

    @model_endpoint("metadata")
    async def model_metadata(request: Request, model: ServedModel) -> Response:
        return JSONResponse(registry.metadata(model))

    @model_endpoint("config")
    async def model_config(request: Request, model: ServedModel) -> Response:
        return JSONResponse(model.triton_config())

    @model_endpoint("ready")
    async def model_ready(request: Request, model: ServedModel) -> Response:
        return JSONResponse({"name": model.name, "ready": True})

    async def infer_content(model: ServedModel, body: bytes, header: str | None) -> tuple[bytes, int | None]:
        """An infer request's answer from its body and its ``Inference-Header-Content-Length``: ``(content, the
        length of its JSON part, None when it is all JSON)``."""
        if header is not None and not header.isdigit():
            raise HTTPError(400, f"{HEADER_LENGTH} is not a number")
        parsed = parse_infer_request(body, None if header is None else int(header))
        outputs = await model.infer(parsed)
        if parsed.outputs is None:
            binary = set(outputs) if parsed.binary_output else set()
        else:
            binary = {output.name for output in parsed.outputs if output.binary or parsed.binary_output}
        return encode_infer_response(model.name, outputs, request_id=parsed.id, binary=binary, model_version=model.version)

    @model_endpoint("infer", batched=True)
    async def infer(request: Request, model: ServedModel) -> Response:
        body = await _body(request, settings.max_body)
        content, json_length = await infer_content(model, body, request.headers.get(HEADER_LENGTH))
        if json_length is None:
            return Response(content, media_type="application/json")
        return Response(content, media_type="application/octet-stream", headers={HEADER_LENGTH: str(json_length)})

    header_length = _HEADER_LENGTH_NAME.lower()

    def direct_route(method: bytes, path: bytes, headers: list[tuple[bytes, bytes]]) -> _DirectInfer | None:
        """The infer request at ``path``, to answer without ASGI (`export.http_protocol`); None for any other."""
        match = _INFER_PATH.fullmatch(path) if method == b"POST" else None
        if match is None:
            return None
        try:
            name, version = (None if part is None else part.decode() for part in match.groups())
        except UnicodeDecodeError:
            return None
        json_length = next((value.decode("latin-1") for key, value in headers if key == header_length), None)
        return _DirectInfer(registry, metrics, infer_content, name, version, json_length, settings.max_body)

    @model_endpoint("v1-metadata")
    async def v1_metadata(request: Request, model: ServedModel) -> Response:
        return JSONResponse({"name": model.name, "ready": True, **registry.metadata(model)})

    @model_endpoint("v1-predict", batched=True)
    async def v1_predict(request: Request, model: ServedModel) -> Response:
        instances = parse_v1_request(await _body(request, settings.max_body))
        return JSONResponse({"predictions": await model.predict_v1(instances)})

    async def v1_route(request: Request) -> Response:
        # KServe v1 puts the verb after a colon: /v1/models/NAME:predict.
        name, colon, verb = request.path_params["target"].rpartition(":")
        if colon and verb == "predict" and request.method == "POST":
            request.path_params["name"] = name
            return await v1_predict(request)
        if not colon and request.method == "GET":
            request.path_params["name"] = verb
            return await v1_metadata(request)
        return _error(404 if not colon or verb != "predict" else 405, f"no route {request.method} {request.url.path}")

    async def live(request: Request) -> Response:
        return JSONResponse({"live": True})

    async def ready(request: Request) -> Response:
        return JSONResponse({"ready": True})

    async def server_metadata(request: Request) -> Response:
        return JSONResponse({"name": "keras-attn", "version": server_version, "extensions": ["binary_tensor_data"]})

    async def prometheus(request: Request) -> Response:
        return Response(prometheus_client.generate_latest(metrics.registry), media_type=prometheus_client.CONTENT_TYPE_LATEST)

    async def home(request: Request) -> Response:
        models = json.dumps([registry.metadata(model) for model in registry.models()])
        return HTMLResponse(page.replace("__MODELS__", models.replace("</", "<\\/")))

    async def repository_index(request: Request) -> Response:
        body = await _body(request, settings.max_body)
        try:
            ready_only = bool(json.loads(body or b"{}").get("ready", False))
        except (ValueError, AttributeError):
            return _error(400, 'the body must be a JSON object such as {"ready": true}')
        return JSONResponse(registry.index(ready_only))

    def repository_action(action: str):
        async def answer(request: Request) -> Response:
            started, name = time.perf_counter(), request.path_params["name"]
            try:
                await (registry.load if action == "load" else registry.unload)(name)
                response = Response(status_code=200)
            except HTTPError as error:
                response = _error(error.status, one_line(error))
            metrics.count(name, action, "http", str(response.status_code), started)
            return response

        return answer

    @contextlib.asynccontextmanager
    async def lifespan(app):
        tasks, grpc_server = [], None
        try:
            if settings.repository is not None and settings.control_mode == "poll":
                tasks.append(asyncio.create_task(registry.poll()))
            if settings.grpc_port is not None:
                from export.grpc_service import start_grpc

                grpc_server = await start_grpc(registry, metrics, settings, server_version)
            yield
        finally:
            if grpc_server is not None:
                await grpc_server.stop(grace=5)
            for task in tasks:
                task.cancel()
            await registry.close()
            executor.shutdown(wait=True)

    routes = [
        Route("/", home),
        Route("/metrics", prometheus),
        Route("/v2", server_metadata),
        Route("/v2/health/live", live),
        Route("/v2/health/ready", ready),
    ]
    for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        routes += [
            Route(prefix, model_metadata),
            Route(prefix + "/ready", model_ready),
            Route(prefix + "/config", model_config),
            Route(prefix + "/infer", infer, methods=["POST"]),
        ]
    routes.append(Route("/v1/models/{target}", v1_route, methods=["GET", "POST"]))
    routes += [
        Route("/v2/repository/index", repository_index, methods=["POST"]),
        Route("/v2/repository/models/{name}/load", repository_action("load"), methods=["POST"]),
        Route("/v2/repository/models/{name}/unload", repository_action("unload"), methods=["POST"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.registry = registry
    app.state.direct_route = direct_route
    return app


def _announcing_server(config, announce):
    """uvicorn's server, calling ``announce()`` once it serves: after the lifespan (the models' batchers, the
    gRPC service) and the listening socket, so a client that reads the start line finds both protocols up."""

    class Announcing(uvicorn.Server):
        async def startup(self, sockets=None) -> None:
            await super().startup(sockets=sockets)
            if not self.should_exit:
                announce()

    return Announcing(config)


def app_from_environment() -> Starlette:
    """The app for a worker process of ``--workers`` > 1: settings from the environment."""
    data = json.loads(os.environ[_ENVIRONMENT])
    data["models"] = tuple(data["models"])
    return create_app(Settings(**data))


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket for uvicorn; port 0 picks a free one.

    Made with the TCP protocol number set (``socket.create_server`` leaves it
    0): asyncio turns Nagle's algorithm off only on such sockets, and with it
    on, every keep-alive answer written in two parts waited ~40 ms for the
    client's delayed ACK.

    Raises:
        OSError: the address cannot be bound.
    """
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    return sock


def reserve_port(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` (0: a free port) but not listening, with ``SO_REUSEPORT``.

    It holds the gRPC port from the start, so a port in use fails at once,
    on one line, and port 0 is known before any worker starts: each gRPC
    server then binds the same port (gRPC sets ``SO_REUSEPORT``, and the
    kernel spreads connections over the listening ones; this one never
    listens, so it gets none).

    Raises:
        OSError: the address cannot be bound.
    """
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmg]i?b?|b)?\s*$", re.I)


def parse_size(text: str) -> int:
    """Bytes from ``8MiB``, ``512k``, ``1.5MB``, ``1000``: k/M/G are powers of 1000, Ki/Mi/Gi of 1024.

    Raises:
        ValueError: not such a size, or zero.
    """
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"not a size: {text!r} (try 8MiB, 512k, 1000000)")
    number, unit = float(match.group(1)), (match.group(2) or "b").lower()
    power = {"k": 1, "m": 2, "g": 3}.get(unit[0], 0)
    size = int(number * (1024 if "i" in unit else 1000) ** power)
    if size < 1:
        raise ValueError(f"size must be at least 1 byte, got {text!r}")
    return size


def _uvicorn_logging() -> dict:
    """uvicorn's logging, less its start-up lines (we log our own); access lines, when on, to stderr."""
    config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    config["loggers"]["uvicorn.error"]["level"] = "WARNING"
    config["loggers"]["uvicorn.access"]["level"] = "INFO"
    config["handlers"]["access"]["stream"] = "ext://sys.stderr"
    return config


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m export.serve",
        description=(
            "Serve ONNX models with the KServe v2 protocol over HTTP and gRPC (as Triton speaks\n"
            "them, binary data included), KServe v1, Prometheus /metrics and a page at /. Each model\n"
            "file is named after its stem, or a Triton model repository gives names and versions;\n"
            "a model exported with its text encoder also takes text. Concurrent requests to a model\n"
            "are micro-batched into one onnxruntime call."
        ),
        epilog=(
            "examples:\n"
            "  python -m export.serve sentiment.onnx\n"
            "  python -m export.serve --model-repository models --model-control-mode poll\n"
            "  curl -s localhost:8000/v2/models/sentiment/infer -d \\\n"
            "    '{\"inputs\": [{\"name\": \"text\", \"datatype\": \"BYTES\", \"shape\": [1], \"data\": [\"great film\"]}]}'\n"
            "  curl -s localhost:8000/v1/models/sentiment:predict -d '{\"instances\": [\"great film\"]}'"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("models", nargs="*", metavar="MODEL.onnx", help="the model files to serve (or --model-repository)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on; 0 picks a free one (default: 8000)")
    parser.add_argument(
        "--grpc-port", type=int, default=DEFAULT_GRPC_PORT, metavar="PORT",
        help=(
            "port of the KServe v2 / Triton gRPC service (inference.GRPCInferenceService, what "
            f"tritonclient.grpc speaks) on --host; 0 picks a free one (default: {DEFAULT_GRPC_PORT})"
        ),
    )
    parser.add_argument("--no-grpc", action="store_true", help="no gRPC service, HTTP only")
    parser.add_argument(
        "--max-batch",
        type=int,
        default=DEFAULT_MAX_BATCH,
        metavar="N",
        help=f"most rows in one runtime call (default: {DEFAULT_MAX_BATCH})",
    )
    parser.add_argument(
        "--max-delay-ms",
        type=float,
        default=DEFAULT_MAX_DELAY_MS,
        metavar="MS",
        help=(
            "how long a request may wait for others to share its call; it waits only while other requests "
            f"to its model are being received (default: {DEFAULT_MAX_DELAY_MS:g})"
        ),
    )
    parser.add_argument("--threads", type=int, metavar="N", help="most threads a runtime call may use (default: the runtime's choice, the usable cores)")
    parser.add_argument(
        "--max-body",
        default="8MiB",
        metavar="SIZE",
        help="largest request body, e.g. 8MiB or 512k; larger ones get 413 (default: 8MiB)",
    )
    parser.add_argument(
        "--workers", type=int, default=1, metavar="N", help="server processes, each with its own models (default: 1)"
    )
    parser.add_argument(
        "--timeout-read", type=float, default=DEFAULT_TIMEOUT_READ, metavar="S",
        help=(
            "seconds a request (headers and body) may take to arrive; a slower one gets 408 and is closed "
            f"(default: {DEFAULT_TIMEOUT_READ:g})"
        ),
    )
    parser.add_argument(
        "--timeout-keep-alive", type=float, default=5.0, metavar="S",
        help="seconds an idle connection is kept open, new or between requests (default: 5)",
    )
    repository = parser.add_argument_group("a Triton model repository (what python -m export.to_triton writes)")
    repository.add_argument(
        "--model-repository", metavar="REPO",
        help="serve REPO/NAME/V/model.onnx with each REPO/NAME/config.pbtxt's version_policy, max_batch_size and dynamic_batching",
    )
    repository.add_argument(
        "--model-control-mode", choices=CONTROL_MODES, default="none",
        help=(
            "none: every model at start; explicit: --load-model ones at start, then POST "
            "/v2/repository/models/NAME/load and /unload; poll: every model at start, then the "
            "repository's changes (default: none)"
        ),
    )
    repository.add_argument(
        "--load-model", action="append", default=[], metavar="NAME",
        help="with explicit: a model to load at start; repeat it, or give '*' for all",
    )
    repository.add_argument(
        "--repository-poll-secs", type=float, default=DEFAULT_POLL_SECONDS, metavar="S",
        help=f"with poll: seconds between looks at the repository (default: {DEFAULT_POLL_SECONDS:g})",
    )
    parser.add_argument("--access-log", action="store_true", help="log every request on stderr")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if _MISSING is not None:
        raise CliError(f'serving needs the serve extra: pip install "keras-attn[serve]" ({_MISSING})')
    if args.max_batch < 1:
        raise CliError(f"--max-batch must be >= 1, got {args.max_batch}")
    if not args.max_delay_ms >= 0 or math.isinf(args.max_delay_ms):
        raise CliError(f"--max-delay-ms must be a finite number >= 0, got {args.max_delay_ms}")
    if args.threads is not None and args.threads < 1:
        raise CliError(f"--threads must be >= 1, got {args.threads}")
    if args.workers < 1:
        raise CliError(f"--workers must be >= 1, got {args.workers}")
    if bool(args.models) == bool(args.model_repository):
        raise CliError("give model files or --model-repository REPO, not both" if args.models else "no model: give MODEL.onnx files or --model-repository REPO")
    if args.model_control_mode != "none" and not args.model_repository:
        raise CliError(f"--model-control-mode {args.model_control_mode} needs --model-repository")
    if args.load_model and args.model_control_mode != "explicit":
        raise CliError("--load-model needs --model-control-mode explicit")
    if args.model_control_mode == "explicit" and args.workers > 1:
        raise CliError("--model-control-mode explicit needs --workers 1: each worker has its own models, and a load reaches one")
    for flag, value in (
        ("--timeout-read", args.timeout_read),
        ("--timeout-keep-alive", args.timeout_keep_alive),
        ("--repository-poll-secs", args.repository_poll_secs),
    ):
        if not (value > 0 and math.isfinite(value)):
            raise CliError(f"{flag} must be a number of seconds > 0, got {value}")
    from export.http_protocol import ReadTimeoutProtocol
    try:
        max_body = parse_size(args.max_body)
    except ValueError as error:
        raise CliError(f"--max-body: {error}") from None
    grpc_reservation = None
    if not args.no_grpc:
        try:
            grpc_reservation = reserve_port(args.host, args.grpc_port)
        except OSError as error:
            raise CliError(f"cannot listen on {args.host}:{args.grpc_port} for gRPC: {error.strerror or error}") from None
    settings = Settings(
        models=tuple(str(Path(path).resolve()) for path in args.models),
        max_batch=args.max_batch,
        max_delay_ms=args.max_delay_ms,
        threads=args.threads,
        max_body=max_body,
        repository=str(Path(args.model_repository).resolve()) if args.model_repository else None,
        control_mode=args.model_control_mode,
        load_models=tuple(args.load_model),
        poll_seconds=args.repository_poll_secs,
        grpc_host=args.host,
        grpc_port=None if grpc_reservation is None else grpc_reservation.getsockname()[1],
    )
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        # Loaded here even with --workers > 1: a bad file fails now, on one line.
        app = create_app(settings)
    except (FileNotFoundError, ValueError) as error:
        raise CliError(one_line(error)) from None
    registry = app.state.registry
    names = ", ".join(registry.served) or "no model yet"
    try:
        sock = listen(args.host, args.port)
    except OSError as error:
        raise CliError(f"cannot listen on {args.host}:{args.port}: {error.strerror or error}") from None
    host, port = sock.getsockname()[:2]
    grpc = "" if settings.grpc_port is None else f" and grpc://{host}:{settings.grpc_port}"
    # proxy_headers off: nothing here reads the client's address, and the
    # middleware costs every request.
    common = dict(
        log_config=_uvicorn_logging(), log_level=None, access_log=args.access_log,
        lifespan="on", timeout_graceful_shutdown=None, proxy_headers=False,
        http=ReadTimeoutProtocol, timeout_keep_alive=args.timeout_keep_alive,
    )
    # uvicorn re-raises SIGTERM/SIGINT once it has shut down gracefully; these
    # handlers take it then, so the process ends with status 0.
    stopped = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda number, frame: stopped.setdefault("signal", signal.Signals(number).name))
    def announce() -> None:
        log.info(
            "serving %s on http://%s:%d%s (max batch %d, max delay %g ms, %d worker%s)",
            names, host, port, grpc, settings.max_batch, settings.max_delay_ms, args.workers, "" if args.workers == 1 else "s",
        )

    started = time.monotonic()
    if args.workers == 1:
        config = uvicorn.Config(app, **common)
        config.read_timeout = args.timeout_read  # ReadTimeoutProtocol reads it here
        _announcing_server(config, announce).run(sockets=[sock])
    else:  # announced at once: each worker starts its own models and gRPC server after this line
        announce()
        from uvicorn.supervisors import Multiprocess

        for versions in registry.served.values():  # each worker loads its own
            for model in versions.values():
                model.close()
        os.environ[_ENVIRONMENT] = json.dumps(settings.__dict__)
        config = uvicorn.Config("export.serve:app_from_environment", factory=True, workers=args.workers, **common)
        config.read_timeout = args.timeout_read
        Multiprocess(config, sockets=[sock]).run()
    sock.close()
    if grpc_reservation is not None:
        grpc_reservation.close()
    log.info("stopped serving %s after %.0f s", names, time.monotonic() - started)
    return 0


def console() -> int:
    """The `keras-attn-serve` console script: `main` with one-line errors."""
    return run(main)


if __name__ == "__main__":
    sys.exit(console())
