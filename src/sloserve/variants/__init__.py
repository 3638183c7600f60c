"""Variant recipes: ONNX graph transforms that make faster or smaller versions of a model."""
