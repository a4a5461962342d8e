"""Fuzz the HTTP parsers (/props, /slots, /metrics, /health, /models, error bodies):
whatever a server sends, they answer data within llama.cpp's limits or a ResponseError,
and the whole run keeps to a fixed time budget."""

from __future__ import annotations

import json
import math
import os
import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kvwall.monitors.llama_http import (
    INT32_MAX,
    INT64_MAX,
    LLAMA_MAX_SEQ,
    ResponseError,
    error_message,
    model_meta,
    parse_health,
    parse_metrics,
    parse_models,
    parse_props,
    parse_slots,
)

# The whole fuzz run of each test: examples stop being tried once it is spent, so a slow
# CI machine makes the run shorter, never longer (KVWALL_FUZZ_SECONDS to explore more).
BUDGET_S = float(os.environ.get("KVWALL_FUZZ_SECONDS", "3"))
EXAMPLES = int(os.environ.get("KVWALL_FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

_KEYS = ("id", "n_ctx", "n_prompt_tokens", "is_processing", "id_task", "next_token",
         "n_decoded", "total_slots", "default_generation_settings", "is_sleeping",
         "model_alias", "model_path", "endpoint_slots", "endpoint_metrics", "role",
         "build_info", "status", "data", "meta", "size", "n_ctx_train", "n_vocab",
         "n_params", "error", "message")
_numbers = st.one_of(
    st.integers(), st.integers(-(2**70), 2**70), st.sampled_from([1e308, -1e308, 2**31, 2**63]),
    st.floats(allow_nan=True, allow_infinity=True),
)
_scalars = st.one_of(st.none(), st.booleans(), _numbers,
                     st.text(max_size=30), st.sampled_from(["no", "yes", "true", "\x1b[2J"]))
_json_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=6),
        st.dictionaries(st.one_of(st.sampled_from(_KEYS), st.text(max_size=8)), inner,
                        max_size=8),
    ),
    max_leaves=12,
)


def _bodies(values: st.SearchStrategy[object]) -> st.SearchStrategy[bytes]:
    """JSON as a server might send it (NaN and Infinity included), or bytes of anything."""
    as_json = values.map(lambda v: json.dumps(v).encode())
    return st.one_of(as_json, as_json.map(lambda b: b[: len(b) // 2]), st.binary(max_size=200))


class Budget:
    """Counts down the time one fuzz test may take, from its first example."""

    def __init__(self) -> None:
        self.ends: float | None = None

    def spent(self) -> bool:
        now = time.monotonic()
        if self.ends is None:
            self.ends = now + BUDGET_S
        return now > self.ends


def _count_ok(value: object, limit: int = INT32_MAX) -> bool:
    return value is None or (isinstance(value, int) and not isinstance(value, bool)
                             and 0 <= value <= limit)


_props_budget = Budget()


@FUZZ
@given(body=_bodies(_json_values))
def test_props_are_checked_or_refused(body):
    if _props_budget.spent():
        return
    try:
        props = parse_props(body, notes := [])
    except ResponseError:
        return
    assert _count_ok(props.get("total_slots"), LLAMA_MAX_SEQ)
    dgs = props.get("default_generation_settings")
    if isinstance(dgs, dict):
        assert _count_ok(dgs.get("n_ctx"))
    for key in ("is_sleeping", "endpoint_slots", "endpoint_metrics"):
        assert key not in props or isinstance(props[key], bool)
    for key in ("model_alias", "model_path", "build_info", "role"):
        assert key not in props or isinstance(props[key], str)
    assert all(isinstance(n, str) for n in notes)


_slots_budget = Budget()
_slot_items = st.lists(
    st.fixed_dictionaries(
        {"id": _numbers},
        optional={"n_ctx": _scalars, "n_prompt_tokens": _scalars,
                  "is_processing": _scalars, "id_task": _scalars,
                  "next_token": st.one_of(_scalars, st.lists(st.dictionaries(
                      st.just("n_decoded"), _scalars), max_size=2))},
    ),
    max_size=8,
)


@FUZZ
@given(body=st.one_of(_bodies(_json_values), _bodies(_slot_items)))
def test_slots_are_checked_or_refused(body):
    if _slots_budget.spent():
        return
    try:
        slots = parse_slots(body, [])
    except ResponseError:
        return
    assert len(slots) <= LLAMA_MAX_SEQ
    for s in slots:
        assert _count_ok(s.id) and _count_ok(s.n_ctx) and _count_ok(s.n_tokens)
        assert _count_ok(s.id_task) and _count_ok(s.n_decoded)
        assert isinstance(s.is_processing, bool)


_metrics_budget = Budget()
_metric_lines = st.lists(
    st.one_of(
        st.tuples(st.sampled_from(["llamacpp:requests_processing", "x", "# HELP x", ""]),
                  st.sampled_from(["", '{a="}"}', "{"]),
                  st.one_of(_numbers.map(str), st.sampled_from(["NaN", "+Inf", "-Inf", "x"])))
        .map(" ".join),
        st.text(max_size=40),
    ),
    max_size=10,
).map("\n".join)


@FUZZ
@given(text=st.one_of(_metric_lines, _metric_lines.map(str.encode), st.binary(max_size=200)))
def test_metrics_are_numbers_or_refused(text):
    if _metrics_budget.spent():
        return
    try:
        metrics = parse_metrics(text)
    except ResponseError:
        return
    assert all(isinstance(k, str) and isinstance(v, float) for k, v in metrics.items())


_rest_budget = Budget()


@FUZZ
@given(body=_bodies(_json_values))
def test_health_models_and_errors_never_raise_anything_else(body):
    if _rest_budget.spent():
        return
    try:
        assert isinstance(parse_health(body), str)
    except ResponseError:
        pass
    message = error_message(body)
    assert message is None or isinstance(message, str)
    try:
        items = parse_models(body)
    except ResponseError:
        return
    meta = model_meta(items, [])
    if meta is not None:
        for key in ("size", "n_ctx_train", "n_vocab", "n_params", "n_embd"):
            assert _count_ok(meta.get(key), INT64_MAX)
            assert not isinstance(meta.get(key), float) or math.isfinite(meta[key])
