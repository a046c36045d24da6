"""An ONNX model on Seldon MLServer: the custom runtime `benchmarks.serve_load` serves the peer with.

MLServer has no ONNX runtime of its own; its documentation's way to serve a
model it has no runtime for is an `mlserver.MLModel` subclass, which this is.
It runs inside MLServer's own virtual environment (MLServer pins fastapi
below what the project's server uses), so it imports only mlserver, numpy
and onnxruntime: nothing of this repository. `benchmarks.mlserver_peer`
copies this file beside the model-settings.json that names it.

Tuned as a careful user would: ONE `onnxruntime.InferenceSession`, opened in
`load()` on the ``.onnx`` file that ``parameters.uri`` names, with one
intra-op thread and no spinning (``session.intra_op.allow_spinning`` = 0: a
default session's spinning thread took about half of the server's CPU); each
request's first input decoded by MLServer's `NumpyCodec` and passed to
`session.run` as it is; only the outputs the request names are fetched.
"""

from __future__ import annotations

import numpy as np
import onnxruntime
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class OnnxModel(MLModel):
    """One onnxruntime session on ``parameters.uri``, one intra-op thread, no spinning."""

    async def load(self) -> bool:
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = onnxruntime.InferenceSession(
            self.settings.parameters.uri, options, providers=["CPUExecutionProvider"]
        )
        self.input_names = [spec.name for spec in self.session.get_inputs()]
        self.output_names = [spec.name for spec in self.session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feeds = {}
        for request_input in payload.inputs:
            if request_input.name not in self.input_names:
                raise ValueError(f"unknown input '{request_input.name}': the model takes {', '.join(self.input_names)}")
            feeds[request_input.name] = np.ascontiguousarray(NumpyCodec.decode_input(request_input))
        names = [output.name for output in payload.outputs] if payload.outputs else self.output_names
        values = self.session.run(names, feeds)
        return InferenceResponse(
            model_name=self.name,
            id=payload.id,
            outputs=[NumpyCodec.encode_output(name, value) for name, value in zip(names, values)],
        )
