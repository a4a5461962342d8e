"""Parsers and the per-server client, on answers recorded from the real llama-server."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from kvwall.monitors.llama_http import (
    HttpResponse,
    LlamaClient,
    ResponseError,
    TransportError,
    error_message,
    model_meta,
    parse_health,
    parse_metrics,
    parse_models,
    parse_props,
    parse_slots,
    props_n_ctx_slot,
)
from kvwall.monitors.snapshot import (
    HEALTH_ERROR,
    HEALTH_LOADING,
    HEALTH_OK,
    HEALTH_ROUTER,
    HEALTH_SLEEPING,
    HEALTH_TIMEOUT,
    HEALTH_UNAUTHORIZED,
    HEALTH_UNREACHABLE,
    ServerProcess,
)

FIXTURES = Path(__file__).parents[1] / "fixtures" / "http"
URL = "http://127.0.0.1:9123"


def rec(name: str) -> HttpResponse:
    data = json.loads((FIXTURES / f"{name}.json").read_text())
    return HttpResponse(data["status"], data["body"].encode(),
                        {"content-type": data["content_type"]})


def body(name: str) -> bytes:
    return rec(name).body


class Replay:
    """A transport answering from recorded responses; logs every request it gets."""

    def __init__(self, answers: dict[str, HttpResponse | Exception]):
        self.answers = answers
        self.log: list[tuple[str, dict]] = []

    def __call__(self, url, headers, connect_timeout, read_timeout):
        self.log.append((url, dict(headers)))
        path = url[len(URL):] if url.startswith(URL) else url
        answer = self.answers.get(path)
        if answer is None:
            raise AssertionError(f"unexpected request {url}")
        if isinstance(answer, Exception):
            raise answer
        return answer

    def paths(self):
        return [u[len(URL):] for u, _ in self.log]


def single_model_answers(**over):
    answers = {
        "/health": rec("health_ok"),
        "/props": rec("props"),
        "/slots": rec("slots_processing"),
        "/metrics": rec("metrics_after"),
        "/v1/models": rec("v1_models"),
    }
    answers.update(over)
    return answers


def client(transport, key=None, ticks=None):
    ticks = ticks if ticks is not None else iter(range(100, 1000))
    return LlamaClient(ServerProcess(url=URL, pid=42, api_key=key), transport=transport,
                       clock=lambda: float(next(ticks)))


# ---------------------------------------------------------------------------- parsers


def test_parse_props_recorded():
    props = parse_props(body("props"))
    assert props["total_slots"] == 2
    assert props_n_ctx_slot(props) == 512
    assert props["endpoint_metrics"] is True and props["is_sleeping"] is False
    assert props["model_path"].endswith("tiny-llama.gguf")


def test_parse_slots_idle_and_processing():
    idle = parse_slots(body("slots_idle"))
    assert [(s.id, s.n_ctx, s.n_tokens, s.is_processing, s.id_task) for s in idle] == [
        (0, 512, None, False, None), (1, 512, None, False, None)]
    busy = parse_slots(body("slots_processing"))
    assert busy[1].is_processing and busy[1].n_tokens == 242 and busy[1].id_task == 3
    assert busy[1].n_decoded == 1
    assert not busy[0].is_processing and busy[0].n_tokens is None
    after = parse_slots(body("slots_after"))
    assert after[1].n_tokens == 511 and not after[1].is_processing


def test_parse_metrics_recorded():
    m = parse_metrics(body("metrics_after"))
    assert m["prompt_tokens_total"] == 242
    assert m["tokens_predicted_total"] == 270
    assert m["n_tokens_max"] == 511
    assert m["requests_processing"] == 0
    assert all(not k.startswith("llamacpp:") for k in m)


def test_parse_metrics_labels_and_special_values():
    m = parse_metrics('# HELP x\nllamacpp:a{position="0"} 3\nllamacpp:b NaN\nc +Inf 1700000\n')
    assert m['a{position="0"}'] == 3
    assert m["b"] != m["b"]  # NaN
    assert m["c"] == float("inf")


def test_parse_models_and_meta():
    items = parse_models(body("v1_models"))
    meta = model_meta(items)
    assert meta["n_ctx_train"] == 4096 and meta["n_vocab"] == 384 and meta["size"] == 247040
    router = parse_models(body("router_models_loaded"))
    assert router[0]["id"] == "tiny-qwen3" and router[0]["status"]["value"] == "loaded"
    assert "--port" in router[0]["status"]["args"]


def test_parse_health():
    assert parse_health(body("health_ok")) == "ok"


@pytest.mark.parametrize("parser", [parse_props, parse_slots, parse_models, parse_health])
@pytest.mark.parametrize("garbage", [b"<html>oops</html>", b"", b"\xff\xfe\x00", b"{\"a\": "])
def test_parsers_reject_garbage_clearly(parser, garbage):
    with pytest.raises(ResponseError) as e:
        parser(garbage)
    assert "/" in str(e.value)  # names the endpoint


@pytest.mark.parametrize("parser, wrong", [
    (parse_props, b"[1, 2]"), (parse_slots, b"{\"id\": 0}"), (parse_slots, b"[{\"n_ctx\": 5}]"),
    (parse_slots, b"[3]"), (parse_models, b"{\"data\": 3}"), (parse_models, b"[]"),
])
def test_parsers_reject_wrong_shapes(parser, wrong):
    with pytest.raises(ResponseError):
        parser(wrong)


def test_parse_metrics_rejects_garbage():
    with pytest.raises(ResponseError, match="line 1"):
        parse_metrics("<html>not metrics</html>")
    with pytest.raises(ResponseError):
        parse_metrics("")


def test_parsers_tolerate_missing_keys():
    s = parse_slots(b'[{"id": 3}]')[0]
    assert (s.id, s.n_ctx, s.n_tokens, s.is_processing) == (3, 0, None, False)
    assert props_n_ctx_slot(parse_props(b"{}")) is None
    assert model_meta(parse_models(b"{}")) is None


def test_error_message_of_recorded_errors():
    assert error_message(body("apikey_props_401")) == "Invalid API Key"
    assert "slots" in error_message(body("slots_501"))
    assert error_message(b"garbage") is None


# ---------------------------------------------------------------------------- client


def test_healthy_server_full_state():
    t = Replay(single_model_answers())
    st = client(t).poll()
    assert st.health == HEALTH_OK, st.errors
    assert st.errors == ()
    assert st.props["total_slots"] == 2
    assert [s.n_tokens for s in st.slots] == [None, 242]
    assert st.metrics["tokens_predicted_total"] == 270
    assert st.model_meta["n_ctx_train"] == 4096
    assert st.timestamp == 100.0 and st.process.pid == 42


def test_model_meta_read_once_per_model():
    t = Replay(single_model_answers())
    c = client(t)
    c.poll()
    c.poll()
    assert t.paths().count("/v1/models") == 1
    assert t.paths().count("/slots") == 2


def test_metrics_not_requested_when_disabled():
    t = Replay(single_model_answers(**{"/props": rec("noslots_props"),
                                       "/slots": rec("slots_501")}))
    st = client(t).poll()
    assert st.health == HEALTH_OK
    assert "/metrics" not in t.paths()
    assert "/slots" not in t.paths()  # props says endpoint_slots false
    assert st.slots is None and st.metrics is None


def test_disabled_slots_endpoint_is_a_note_not_an_error():
    props = json.loads(body("props"))
    props.pop("endpoint_slots")
    t = Replay(single_model_answers(**{"/props": HttpResponse(200, json.dumps(props).encode()),
                                       "/slots": rec("slots_501")}))
    st = client(t).poll()
    assert st.health == HEALTH_OK
    assert st.slots is None
    assert any("/slots is disabled" in e for e in st.errors)


def test_sleeping_server_is_not_woken_by_slots():
    t = Replay(single_model_answers(**{"/props": rec("props_sleeping")}))
    st = client(t).poll()
    assert st.health == HEALTH_SLEEPING
    assert "/slots" not in t.paths()
    assert st.slots is None


def test_loading_server():
    # While loading, every route answers what /health answers (recorded at startup).
    t = Replay({"/props": rec("health_503_loading"), "/health": rec("health_503_loading")})
    c = client(t)
    st = c.poll()
    assert st.health == HEALTH_LOADING
    assert t.paths() == ["/props"]
    assert c.check_health() == HEALTH_LOADING


def test_health_probe_needs_no_key():
    t = Replay({"/health": rec("apikey_health")})
    assert client(t).check_health() == HEALTH_OK
    t = Replay({"/health": TransportError("refused", "connection refused")})
    assert client(t).check_health() == HEALTH_UNREACHABLE
    t = Replay({"/health": HttpResponse(200, b"<html>")})
    assert client(t).check_health() == HEALTH_ERROR


def test_missing_api_key_is_unauthorized():
    t = Replay({"/health": rec("apikey_health"), "/props": rec("apikey_props_401")})
    st = client(t).poll()
    assert st.health == HEALTH_UNAUTHORIZED
    assert any("needs an API key" in e for e in st.errors)
    assert all("Authorization" not in h for _, h in t.log)


def test_key_is_sent_as_bearer_to_its_own_server_only():
    t = Replay(single_model_answers())
    client(t, key="k-123").poll()
    assert t.log
    for url, headers in t.log:
        assert url.startswith(URL + "/")
        assert headers["Authorization"] == "Bearer k-123"


def test_router_reports_its_models_and_skips_slots():
    t = Replay({"/health": rec("router_health"), "/props": rec("router_props"),
                "/models": rec("router_models_loaded")})
    st = client(t).poll()
    assert st.health == HEALTH_ROUTER
    assert st.router_models[0]["id"] == "tiny-qwen3"
    assert "/slots" not in t.paths() and "/metrics" not in t.paths()


@pytest.mark.parametrize("kind, health", [
    ("refused", HEALTH_UNREACHABLE), ("timeout", HEALTH_TIMEOUT), ("closed", HEALTH_UNREACHABLE),
    ("garbage", HEALTH_ERROR),
])
def test_transport_failures_are_states(kind, health):
    t = Replay({"/props": TransportError(kind, f"{kind} happened")})
    st = client(t).poll()
    assert st.health == health
    assert any(f"{kind} happened" in e for e in st.errors)


def test_garbage_props_is_an_error_with_the_reason():
    t = Replay(single_model_answers(**{"/props": HttpResponse(200, b"<html>proxy</html>")}))
    st = client(t).poll()
    assert st.health == HEALTH_ERROR
    assert any("not JSON" in e and "proxy" in e for e in st.errors)


def test_garbage_slots_keeps_the_rest():
    t = Replay(single_model_answers(**{"/slots": HttpResponse(200, b"[{]")}))
    st = client(t).poll()
    assert st.health == HEALTH_OK
    assert st.slots is None and st.metrics is not None
    assert any("/slots" in e for e in st.errors)


def test_slow_slots_keeps_the_rest():
    t = Replay(single_model_answers(**{"/slots": TransportError("timeout", "no answer within 1.5 s")}))
    st = client(t).poll()
    assert st.health == HEALTH_OK and st.slots is None
    assert any("/slots" in e and "1.5 s" in e for e in st.errors)


def test_server_dying_between_requests_is_unreachable():
    t = Replay(single_model_answers(**{"/slots": TransportError("refused", "connection refused")}))
    st = client(t).poll()
    assert st.health == HEALTH_UNREACHABLE


def test_one_request_in_flight_per_server():
    entered = threading.Event()
    release = threading.Event()
    answers = single_model_answers()

    def blocking(url, headers, ct, rt):
        entered.set()
        assert release.wait(10), "test did not release the request"
        return answers[url[len(URL):]]

    c = client(blocking)
    results = []
    th = threading.Thread(target=lambda: results.append(c.poll()))
    th.start()
    try:
        assert entered.wait(10)
        assert c.busy
        second = c.poll()  # answers at once, no second request
        assert second.health == HEALTH_TIMEOUT
        assert any("previous request still running" in e for e in second.errors)
    finally:
        release.set()
        th.join(10)
    assert results[0].health == HEALTH_OK
    assert not c.busy


def test_key_never_in_client_repr_or_errors():
    t = Replay({"/health": rec("apikey_health"), "/props": rec("apikey_props_401")})
    c = client(t, key="super-secret")
    st = c.poll()
    assert st.health == HEALTH_UNAUTHORIZED
    assert "super-secret" not in repr(c) + repr(st) + " ".join(st.errors)


# ------------------------------------------------------------ servers that sleep when idle


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def sleepy_client(transport, clock, cpu, *argv):
    proc = ServerProcess(url=URL, pid=42, argv=("llama-server", "-m", "m.gguf", *argv))
    return LlamaClient(proc, transport=transport, clock=clock, cpu_seconds=lambda pid: cpu[0])


def no_metrics_props():
    props = json.loads(body("props"))
    props["endpoint_metrics"] = False
    return HttpResponse(200, json.dumps(props).encode())


def test_idle_server_that_may_sleep_is_not_kept_awake_by_slots():
    # Every GET /slots restarts llama-server's --sleep-idle-seconds timer: while the slots
    # are idle and the server does nothing, the last answer stands.
    t = Replay(single_model_answers(**{"/props": no_metrics_props(),
                                       "/slots": rec("slots_idle")}))
    clock, cpu = Clock(), [1.0]
    c = sleepy_client(t, clock, cpu, "--sleep-idle-seconds", "60")
    first = c.poll()
    for _ in range(5):
        clock.t += 1
        cpu[0] += 0.00001  # answering /props
        st = c.poll()
        assert st.slots == first.slots and st.timestamp == clock.t
    assert t.paths().count("/slots") == 1
    cpu[0] += 0.3  # a request ran
    clock.t += 1
    c.poll()
    assert t.paths().count("/slots") == 2
    clock.t += 70  # at the latest after the sleep delay (plus a margin): read again
    c.poll()
    assert t.paths().count("/slots") == 3


def test_metrics_counters_show_a_sleepy_servers_activity():
    t = Replay(single_model_answers(**{"/slots": rec("slots_idle"),
                                       "/metrics": rec("metrics_idle")}))
    clock, cpu = Clock(), [1.0]
    c = sleepy_client(t, clock, cpu, "--sleep-idle-seconds=300")
    c.poll()
    clock.t += 1
    c.poll()
    assert t.paths().count("/slots") == 1
    t.answers["/metrics"] = rec("metrics_after")  # tokens were processed
    clock.t += 1
    c.poll()
    assert t.paths().count("/slots") == 2


def test_servers_that_never_sleep_or_are_busy_read_slots_every_poll():
    for argv, slots in (((), "slots_idle"), (("--sleep-idle-seconds", "60"), "slots_processing")):
        t = Replay(single_model_answers(**{"/props": no_metrics_props(), "/slots": rec(slots)}))
        clock, cpu = Clock(), [1.0]
        c = sleepy_client(t, clock, cpu, *argv)
        for _ in range(3):
            c.poll()
            clock.t += 1
        assert t.paths().count("/slots") == 3, argv
