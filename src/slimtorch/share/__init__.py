"""Weight sharing, entropy coding and the ``.slim`` compressed file (Deep Compression, Han et al. 2016).

>>> from slimtorch import share
>>> share.cluster_(model, bits={"conv": 8, "fc": 5})      # k-means per layer, centroids trainable
>>> fit(model, train_data, epochs=2)                        # shared-weight fine-tuning (any loop)
>>> share.save(model, "model.slim")                         # codebooks + Huffman-coded indices/positions
>>> model = share.load("model.slim")                        # bit-identical outputs
>>> print(share.format_report(share.compression_report("model.slim")))
"""

from slimtorch.share.cluster import (
    CLUSTERABLE,
    LAYER_KINDS,
    SharedWeight,
    WeightSharing,
    bake_,
    cluster_,
    cluster_weight,
    shared_layers,
    shared_lookup,
    sharing_summary,
)
from slimtorch.share.format import SUFFIX, SlimFormatError, is_slim_file, load, loads, read_header, save
from slimtorch.share.kmeans import KMEANS_INITS, kmeans_1d
from slimtorch.share.report import compression_report, format_report

__all__ = [
    "CLUSTERABLE",
    "KMEANS_INITS",
    "LAYER_KINDS",
    "SUFFIX",
    "SharedWeight",
    "SlimFormatError",
    "WeightSharing",
    "bake_",
    "cluster_",
    "cluster_weight",
    "compression_report",
    "format_report",
    "is_slim_file",
    "kmeans_1d",
    "load",
    "loads",
    "read_header",
    "save",
    "shared_layers",
    "shared_lookup",
    "sharing_summary",
]
