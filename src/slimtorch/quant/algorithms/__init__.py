"""Quantization algorithms: how integer weights are chosen (GPTQ, AdaRound) and the float pre-passes that
make a model easier to quantize (BatchNorm folding, cross-layer equalization, bias correction).
"""
