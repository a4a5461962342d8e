"""GGUF header reader: model metadata and the tensor table, never tensor data.

``read_model(path)`` parses the GGUF header of a model (every shard of a split model) and
resolves the hyper-parameters the way llama.cpp does. The modules, by job:

- :mod:`.reader`: the format's limits, kvwall's caps and the bounded ``pread`` parser;
- :mod:`.arch`: per-architecture rules and the table of architecture families;
- :mod:`.split`: split models' shards;
- :mod:`.resolve`: header -> :class:`ModelInfo` (and :func:`read_model`);
- :mod:`.model`: the public types; :mod:`.keys`: gguf-py's key names.
"""

from kvwall.monitors.gguf.model import GGUFError, ModelInfo, SwaType, TensorInfo
from kvwall.monitors.gguf.resolve import read_model

__all__ = ["GGUFError", "ModelInfo", "SwaType", "TensorInfo", "read_model"]
