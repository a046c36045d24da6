from export.cli import quiet_tensorflow

quiet_tensorflow()  # before any test module imports TensorFlow
