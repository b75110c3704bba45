"""Opt-in export rewrites that are off by default (``export_onnx(functions=True)``); their output may need
readers newer than ONNX Runtime's (IR-9 model-local functions)."""
