"""Serving side of keras-attn: ONNX export and onnxruntime inference, free of TF/Keras."""
