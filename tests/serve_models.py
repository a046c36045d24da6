"""Models for the serving tests: the bundled text model and a tiny two-input float model, exported once.

Each is exported into one folder of the pytest session's base temp dir, so
test files that import these functions share one conversion per session.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from export.text import TextEncoder


def _exported(tmp_path_factory, name: str, build) -> Path:
    folder = tmp_path_factory.getbasetemp() / "serve-models"
    folder.mkdir(exist_ok=True)
    path = folder / f"{name}.onnx"
    if not path.exists():
        from export.to_onnx import convert

        convert(build(), path)
    return path


def sentiment_onnx(tmp_path_factory) -> Path:
    """The bundled pretrained model (labels negative/positive, with its encoder) as ``sentiment.onnx``."""

    def build():
        import keras_attn

        return keras_attn.load_pretrained()

    return _exported(tmp_path_factory, "sentiment", build)


def pair_model(seed: int = 0):
    """A Keras model of two float inputs, ``a`` (n, 3) and ``b`` (n, 2), and two outputs; weights from ``seed``."""
    import keras

    keras.utils.set_random_seed(seed)
    a = keras.Input((3,), name="a")
    b = keras.Input((2,), name="b")
    joined = keras.layers.Concatenate()([a, b])
    score = keras.layers.Dense(2, name="score", kernel_initializer="glorot_uniform")(joined)
    gate = keras.layers.Dense(1, activation="sigmoid", name="gate")(joined)
    return keras.Model([a, b], {"score": score, "gate": gate}, name="pair")


def pair_onnx(tmp_path_factory, seed: int = 0) -> Path:
    """`pair_model` exported as ``pair.onnx`` (``pair_seed1.onnx`` for seed 1, ...)."""
    return _exported(tmp_path_factory, "pair" if seed == 0 else f"pair_seed{seed}", lambda: pair_model(seed))


def pair_feeds(rows: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "a": rng.normal(size=(rows, 3)).astype(np.float32),
        "b": rng.normal(size=(rows, 2)).astype(np.float32),
    }


class Reference:
    """A plain onnxruntime session on a file: what a lone call of a request gives."""

    def __init__(self, path: Path):
        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        meta = self.session.get_modelmeta().custom_metadata_map
        self.encoder = TextEncoder.from_json(meta["text_encoder"]) if "text_encoder" in meta else None

    def run(self, feeds: dict) -> dict:
        names = [o.name for o in self.session.get_outputs()]
        return dict(zip(names, self.session.run(names, feeds)))

    def texts(self, texts: list[str]) -> dict:
        ids = self.encoder.encode(texts)
        outputs = self.run({"tokens": ids})
        p = outputs["probability"][:, 0]
        outputs["label"] = np.where(p >= 0.5, "positive", "negative")
        return outputs


def start_server(args, env=None):
    """``python -m export.serve ARGS`` (gRPC on a free port unless ARGS say otherwise): process, HTTP address.

    The gRPC address is ``process.grpc_address``.
    """
    if "--no-grpc" not in args and "--grpc-port" not in args:
        args = [*args, "--grpc-port", "0"]
    process = subprocess.Popen(
        [sys.executable, "-m", "export.serve", *args],
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parent.parent,
        env={**os.environ, **(env or {})},
    )
    line = process.stderr.readline()
    while line.startswith("not serving "):  # a repository's model this server cannot run
        line = process.stderr.readline()
    assert line.startswith("serving "), line + process.stderr.read()
    process.grpc_address = line.split("grpc://")[1].split()[0] if "grpc://" in line else None
    return process, line.split("http://")[1].split()[0]


@contextlib.contextmanager
def running_server(app):
    """An ASGI app (`export.serve.create_app`) on uvicorn with export.serve's protocol, in a thread, on a free
    loopback port; yields "127.0.0.1:PORT"."""
    import uvicorn

    from export.http_protocol import ReadTimeoutProtocol
    from export.serve import listen

    sock = listen("127.0.0.1", 0)
    # The protocol export.serve runs: infer requests take its direct path.
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on", http=ReadTimeoutProtocol)
    config.read_timeout = 30.0
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield "127.0.0.1:%d" % sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


@pytest.fixture(scope="module")
def sentiment(tmp_path_factory):
    """The bundled sentiment model, exported once per test session."""
    return sentiment_onnx(tmp_path_factory)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """The two-float-input model, exported once per test session."""
    return pair_onnx(tmp_path_factory)
