"""Measurements: accuracy / loss / perplexity, parameters, nonzeros, bytes on disk, MACs, latency, and the CPU.

>>> from slimtorch import metrics
>>> metrics.profile(model, torch.zeros(1, 1, 28, 28), runtimes=("torch", "onnxruntime"))
>>> metrics.compare_latency(dense, pruned, torch.zeros(64, 3, 32, 32))["speedup"]
"""

from slimtorch.metrics.accuracy import (
    accuracy,
    evaluate,
    flatten_logits,
    perplexity,
    topk_accuracy,
    topk_correct,
)
from slimtorch.metrics.counting import (
    count_nonzero,
    count_params,
    effective_parameters,
    file_size,
    model_size_bytes,
    permanent_copy,
    sparsity,
)
from slimtorch.metrics.cpu import CpuInfo, cpu_info
from slimtorch.metrics.latency import (
    RUNTIMES,
    compare_latency,
    measure_latencies,
    measure_latency,
    time_calls,
    torch_threads,
)
from slimtorch.metrics.macs import (
    MAC_RULES,
    attention_matmul_macs,
    conv_macs,
    count_macs,
    linear_macs,
    register_mac_rule,
    register_mac_rule_kind,
)
from slimtorch.metrics.ort import export_onnx_fp32, onnx_session, session_feed
from slimtorch.metrics.ort_int8 import quantize_qdq_int8  # also registers the onnxruntime-int8 runtime
from slimtorch.metrics.profile import compare, compare_models, profile
from slimtorch.metrics.shapes import check_input_shape, example_inputs_for
from slimtorch.metrics.table import format_value, human_bytes, human_count, human_macs, render_table

__all__ = [
    "MAC_RULES",
    "RUNTIMES",
    "CpuInfo",
    "accuracy",
    "attention_matmul_macs",
    "check_input_shape",
    "compare",
    "compare_latency",
    "compare_models",
    "conv_macs",
    "count_macs",
    "count_nonzero",
    "count_params",
    "cpu_info",
    "effective_parameters",
    "evaluate",
    "example_inputs_for",
    "export_onnx_fp32",
    "file_size",
    "flatten_logits",
    "format_value",
    "human_bytes",
    "human_count",
    "human_macs",
    "linear_macs",
    "measure_latencies",
    "measure_latency",
    "model_size_bytes",
    "onnx_session",
    "permanent_copy",
    "perplexity",
    "profile",
    "quantize_qdq_int8",
    "register_mac_rule",
    "register_mac_rule_kind",
    "render_table",
    "session_feed",
    "sparsity",
    "time_calls",
    "topk_accuracy",
    "topk_correct",
    "torch_threads",
]
