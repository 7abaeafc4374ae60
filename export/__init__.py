"""uopsl.export: torch -> ONNX, quantization, TensorRT engine builds, bundles, parity validation.

Layer 3: imports calibration and runtime. Takes torch modules from its caller
(the train layer), so it never imports uopsl.train.
"""
