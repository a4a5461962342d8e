"""Nothing a server says is trusted: numbers are checked against llama.cpp's limits,
types as llama.cpp produces them, and its words reach a terminal escaped and cut short."""

from __future__ import annotations

import functools
import io
import json

import pytest
from kvwall.app.headless.status import main
from kvwall.monitors.llama_http import (
    LLAMA_MAX_SEQ,
    HttpResponse,
    LlamaClient,
    model_meta,
    parse_models,
    parse_props,
    parse_slots,
)
from kvwall.monitors.poller import ClientPool, Poller
from kvwall.monitors.snapshot import HEALTH_ERROR, HEALTH_OK, ServerProcess

URL = "http://127.0.0.1:9124"
ESCAPES = "\x1b]0;pwned\x07\x1b[2J\x1b[1A\rFORGED LINE\n"


def _answer(obj: object, status: int = 200) -> HttpResponse:
    return HttpResponse(status, json.dumps(obj).encode(), {"content-type": "application/json"})


class Hostile:
    """A transport answering every path from a table (what a hostile server sends)."""

    def __init__(self, answers: dict[str, HttpResponse]) -> None:
        self.answers = answers

    def __call__(self, url, headers, connect_timeout, read_timeout):
        return self.answers[url[len(URL):]]


def _poller(answers: dict[str, HttpResponse]) -> Poller:
    transport = Hostile(answers)
    return Poller(discover_fn=lambda **kw: [ServerProcess(url=URL, source="url")],
                  clients=ClientPool(lambda p: LlamaClient(p, transport=transport)),
                  deadline_s=5.0)


@functools.cache
def _hostile_answers() -> dict[str, HttpResponse]:
    slot = {"id": 0, "n_ctx": 1e308, "n_prompt_tokens": -5, "is_processing": "no",
            "id_task": 3, "next_token": [{"n_decoded": -1}]}
    return {
        "/props": _answer({"total_slots": 100_000, "is_sleeping": "no",
                           "default_generation_settings": {"n_ctx": 1e308},
                           "model_alias": "evil" + ESCAPES, "endpoint_slots": True,
                           "endpoint_metrics": False}),
        "/slots": _answer([dict(slot, id=i) for i in range(100_000)]),
        "/v1/models": _answer({"data": [{"id": "m", "meta": {"size": 1e308,
                                                              "n_ctx_train": -1}}]}),
    }


def _numbers(obj: object):
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _numbers(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _numbers(v)
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        yield obj


# ---------------------------------------------------------------------------- parsers


def test_slots_are_cut_to_llama_cpps_limit_with_a_note():
    notes: list[str] = []
    body = json.dumps([{"id": i, "n_ctx": 512} for i in range(100_000)])
    slots = parse_slots(body, notes)
    assert len(slots) == LLAMA_MAX_SEQ == 256
    assert any("100000 slots" in n and "256" in n for n in notes)
    props = parse_props(json.dumps({"total_slots": 100_000}), notes)
    assert props["total_slots"] == 256
    assert any("claims 100000 slots" in n for n in notes)


@pytest.mark.parametrize("bad", [1e308, -1, -4096, 2**31, 1.5, "4096", True, None, [1]])
def test_bad_contexts_are_unknown_and_reported(bad):
    notes: list[str] = []
    props = parse_props(json.dumps({"default_generation_settings": {"n_ctx": bad}}), notes)
    assert "n_ctx" not in props["default_generation_settings"]
    if bad is not None:
        assert any("the server sent an invalid n_ctx" in n for n in notes)
    slot = parse_slots(json.dumps([{"id": 0, "n_ctx": bad, "n_prompt_tokens": bad}]), notes)[0]
    assert slot.n_ctx == 0 and slot.n_tokens is None


def test_types_are_checked_as_llama_cpp_produces_them():
    notes: list[str] = []
    props = parse_props(json.dumps({"is_sleeping": "no", "model_alias": ["a"],
                                    "endpoint_slots": "false", "total_slots": 4}), notes)
    assert "is_sleeping" not in props and "model_alias" not in props
    assert "endpoint_slots" not in props and props["total_slots"] == 4
    assert any("invalid is_sleeping" in n and "boolean" in n for n in notes)
    slot = parse_slots(json.dumps([{"id": 0, "n_ctx": 8, "is_processing": "no"}]), notes)[0]
    assert slot.is_processing is False
    assert any("slot 0 is_processing" in n for n in notes)


def test_model_meta_sizes_must_be_non_negative_int64():
    notes: list[str] = []
    items = parse_models(json.dumps({"data": [{"meta": {"size": 1e308, "n_vocab": -3,
                                                        "n_params": 7_000_000_000}}]}))
    meta = model_meta(items, notes)
    assert meta == {"n_params": 7_000_000_000}
    assert len(notes) == 2


def test_a_string_no_is_not_sleeping():
    transport = Hostile({"/props": _answer({"is_sleeping": "no", "endpoint_slots": False}),
                         "/v1/models": _answer({"data": []})})
    state = LlamaClient(ServerProcess(url=URL), transport=transport).poll()
    assert state.health == HEALTH_OK
    assert any("invalid is_sleeping" in e for e in state.errors)


# ---------------------------------------------------------------------------- end to end


def test_a_hostile_server_is_reported_never_trusted():
    out = io.StringIO()
    assert main(["--json"], poller=_poller(_hostile_answers()), out=out) == 0
    obj = json.loads(out.getvalue())
    server = obj["servers"][0]
    assert len(server["slots"]) <= 256
    if server.get("pool"):
        server["pool"].pop("id")  # the shared pool's id is kvwall's own -1 marker
    assert all(0 <= n < 2**63 for n in _numbers(obj))
    assert server["health"] != "sleeping"
    assert "\x1b" not in out.getvalue() and "\\u001b" not in out.getvalue()
    text = io.StringIO()
    assert main([], poller=_poller(_hostile_answers()), out=text) == 0
    screen = text.getvalue()
    assert "\x1b" not in screen and "\x07" not in screen and "\r" not in screen
    assert "FORGED LINE" not in {line.strip() for line in screen.splitlines()}
    assert "the server sent an invalid n_ctx" in screen
    assert "Traceback" not in screen


def test_a_huge_error_message_with_escapes_is_escaped_and_cut():
    message = ESCAPES + "A" * 100_000
    answers = {"/props": _answer({"error": {"message": message, "code": 500}}, status=500)}
    text = io.StringIO()
    assert main([], poller=_poller(answers), out=text) == 0
    screen = text.getvalue()
    assert "\x1b" not in screen and "FORGED LINE\n" not in screen
    assert max(len(line) for line in screen.splitlines()) < 1000
    assert "more characters)" in screen
    out = io.StringIO()
    main(["--json"], poller=_poller(answers), out=out)
    assert json.loads(out.getvalue())["servers"][0]["health"] == HEALTH_ERROR


def test_a_discovery_error_quoting_a_hostile_command_line_is_escaped_with_no_server():
    # Another local user's process chose its --host: its text reaches our error list.
    from kvwall.monitors.discovery import Discovery

    hostile = Discovery(errors=(f"llama.cpp server 7 listens on {ESCAPES}:8080",))
    for fmt in ([], ["--json"]):
        poller = Poller(discover_fn=lambda **kw: hostile, deadline_s=5.0)
        out = io.StringIO()
        assert main(fmt, poller=poller, out=out) == 0
        text = out.getvalue()
        assert "\x1b" not in text and "\x07" not in text and "\rFORGED" not in text
        assert "listens on" in text
