"""llama.cpp's memory model: what a llama-server allocates, where, to the byte.

The steps, one module each: :mod:`.layout` (which layers own KV and recurrent state),
:mod:`.resolve` (what the flags resolve to), :mod:`.refusals` (what llama.cpp refuses),
:mod:`.alloc` (weights, KV, recurrent state per device), :mod:`.compute` (compute
buffers), :mod:`.fit` (the context ``--fit`` picks) and :mod:`.plan` (the whole plan).
What-ifs built on it live in :mod:`kvwall.budget.whatif`.
"""

from kvwall.budget.cachetypes import QUANTIZED, TYPE_SIZES, row_bytes
from kvwall.budget.memory.fit import MiB
from kvwall.budget.memory.layout import KV_PAD, LLAMA_MAX_SEQ, pad
from kvwall.budget.memory.plan import budget_total, largest_fitting, max_context, plan_memory
from kvwall.budget.memory.refusals import LaunchError, check_command_line, check_model_file
from kvwall.budget.memory.results import DeviceBudget, MemoryPlan

__all__ = [
    "KV_PAD",
    "LLAMA_MAX_SEQ",
    "QUANTIZED",
    "TYPE_SIZES",
    "DeviceBudget",
    "LaunchError",
    "MemoryPlan",
    "MiB",
    "budget_total",
    "check_command_line",
    "check_model_file",
    "largest_fitting",
    "max_context",
    "pad",
    "plan_memory",
    "row_bytes",
]
