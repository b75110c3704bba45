"""Peer for ``bench/minilm.py``: sentence-transformers' own int8 ONNX export of all-MiniLM-L6-v2.

Runs in a separate virtual environment holding sentence-transformers + optimum (they pin other versions
of transformers than slimtorch's), started by ``bench/minilm.py`` as a subprocess::

    /work/venv-st/bin/python bench/minilm_st_peer.py MODEL_FOLDER OUT_DIR CONFIG

``SentenceTransformer(folder, backend="onnx")`` exports the fp32 ONNX model (optimum), then
``export_dynamic_quantized_onnx_model(model, CONFIG, OUT_DIR)`` writes
``OUT_DIR/onnx/model_qint8_<CONFIG>.onnx`` or ``model_quint8_<CONFIG>.onnx`` (ONNX Runtime dynamic
quantization with optimum's per-CPU settings: ``avx512_vnni``, ``avx512``, ``avx2``, ``arm64``).
Prints the written file's path on the last line.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path


def main() -> None:
    src, out_dir, config = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer, export_dynamic_quantized_onnx_model

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "model"
        shutil.copytree(src, folder)  # the onnx backend writes its export beside the weights
        model = SentenceTransformer(str(folder), backend="onnx", device="cpu")
        out_dir.mkdir(parents=True, exist_ok=True)
        export_dynamic_quantized_onnx_model(model, config, str(out_dir))
    files = sorted((out_dir / "onnx").glob(f"model_*{config}*.onnx"))
    if not files:
        raise SystemExit(f"no quantized file written under {out_dir / 'onnx'}")
    print(files[0])


if __name__ == "__main__":
    main()
