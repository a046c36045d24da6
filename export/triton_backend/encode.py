"""Triton Python-backend model: texts in, the id rows of the model's text encoder out.

Written by ``python -m export.to_triton MODEL.onnx -o REPO --text`` as
``REPO/<name>_encode/1/model.py``, beside ``text.py`` (a byte copy of
keras-attn's ``export/text.py``, the one definition of the encoder, on numpy
and the standard library only) and ``encoder.json`` (the vocabulary and rule
the model was trained with).
"""

import json
import sys
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

sys.path.insert(0, str(Path(__file__).parent))
from text import TextEncoder  # noqa: E402 - text.py sits beside this file


class TritonPythonModel:
    def initialize(self, args):
        here = Path(__file__).parent
        self.encoder = TextEncoder.from_json((here / "encoder.json").read_text(encoding="utf-8"))
        # The id model's input type (INT32 or INT64), as this model's config says.
        config = pb_utils.get_output_config_by_name(json.loads(args["model_config"]), "ids")
        self.dtype = pb_utils.triton_string_to_numpy(config["data_type"])

    def execute(self, requests):
        responses = []
        for request in requests:
            texts = pb_utils.get_input_tensor_by_name(request, "text").as_numpy().reshape(-1)
            try:
                decoded = [t.decode("utf-8") if isinstance(t, bytes) else str(t) for t in texts]
            except UnicodeDecodeError as error:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"input 'text' is not UTF-8 text: {error}")))
                continue
            ids = self.encoder.encode(decoded).astype(self.dtype)
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("ids", ids)]))
        return responses
