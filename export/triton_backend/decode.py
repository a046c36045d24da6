"""Triton Python-backend model: the model's ``probability`` in, each row's ``label`` out.

Written by ``python -m export.to_triton MODEL.onnx -o REPO --text`` as
``REPO/<name>_decode/1/model.py``, beside ``text.py`` (a byte copy of
keras-attn's ``export/text.py``, whose ``label_indices`` is the one rule from
probabilities to a label) and ``encoder.json`` (the labels, in order).
"""

import sys
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

sys.path.insert(0, str(Path(__file__).parent))
from text import TextEncoder, label_indices  # noqa: E402 - text.py sits beside this file


class TritonPythonModel:
    def initialize(self, args):
        here = Path(__file__).parent
        labels = TextEncoder.from_json((here / "encoder.json").read_text(encoding="utf-8")).labels
        self.labels = np.array([label.encode("utf-8") for label in labels], dtype=object)  # TYPE_STRING is bytes

    def execute(self, requests):
        responses = []
        for request in requests:
            probability = pb_utils.get_input_tensor_by_name(request, "probability").as_numpy()
            labels = self.labels[label_indices(probability)].reshape(-1, 1)
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("label", labels)]))
        return responses
