"""Quantization algorithms: how integer weights are chosen and the float pre-passes that make a model
easier to quantize (BatchNorm folding, cross-layer equalization, bias correction).

Weight rounding algorithms are sub-configs of the weight-only workflows
(``WeightOnly(rounding=GPTQ(act_order=True))``), registered with
:func:`slimtorch.quant.algorithms.rounding.register_rounding`: RTN (:mod:`.rounding`), MSE-clipped RTN
(:mod:`.mse_clip`), GPTQ (:mod:`.gptq`), AdaRound (:mod:`.adaround`).
"""
