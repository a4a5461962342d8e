"""A scripted coding agent: each request re-sends the system prompt, the tools and the whole
history plus one new message, so a slot's context grows turn by turn until it hits the wall.

Deterministic: ``temperature 0``, a fixed ``seed``, ``ignore_eos`` with a fixed ``n_predict``,
and ``cache_prompt`` (the server reuses the cached prefix, as with a real agent). Speaks
``/completion`` or ``/v1/chat/completions``. Bounded: at most ``max_turns`` requests, each
with a timeout.

The tiny test models have random weights: their replies are noise whose re-tokenized length
jumps from turn to turn (a run of newlines, then ``x383`` pieces of five tokens each). By
default the history therefore records a fixed-size stand-in for each reply (what the agent
"understood"), so the conversation grows steadily; ``verbatim=True`` re-sends the raw reply.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass, field

SYSTEM_PROMPT = (
    "You are a careful coding agent. Read the task, plan, call a tool, read its result, "
    "and answer briefly. Never invent file names."
)
TOOLS = (
    "tools: read_file(path) returns text; write_file(path, text); run(cmd) returns output; "
    "search(pattern) returns matching lines."
)
WORDS = ("read", "the", "file", "then", "fix", "test", "run", "check", "diff", "patch",
         "log", "error", "line", "func", "call", "value")


@dataclass
class Turn:
    """One request and what became of it.

    Attributes:
        index: 1-based turn number.
        ok: the request completed normally (not cut by the context limit, no error).
        hit_wall: the context was full: the server refused the prompt (400 exceed context
            size / "Context size has been exceeded") or cut the reply (``truncated``).
        prompt_tokens: tokens of the prompt as the server counted them.
        predicted: tokens generated.
        status: HTTP status.
        error: the server's error message, if any.
    """

    index: int
    ok: bool
    hit_wall: bool
    prompt_tokens: int | None = None
    predicted: int | None = None
    status: int = 200
    error: str | None = None


@dataclass
class ScriptedAgent:
    """An agent conversation against one llama-server.

    Args:
        url: the server's base URL.
        api_key: sent as a Bearer token (only to ``url``).
        chat: use ``/v1/chat/completions`` instead of ``/completion``.
        n_predict: tokens generated per turn.
        message_words: words in each new user message.
        seed: sampling seed (with temperature 0 the reply is the same anyway).
        id_slot: pin the conversation to one slot (None: the server picks).
        timeout_s: per-request timeout.
        verbatim: re-send the model's raw reply in the history (default: a stand-in of
            the same number of words for every turn).
    """

    url: str
    api_key: str | None = None
    chat: bool = False
    n_predict: int = 12
    message_words: int = 6
    seed: int = 42
    id_slot: int | None = None
    timeout_s: float = 60.0
    verbatim: bool = False
    history: list[tuple[str, str]] = field(default_factory=list)
    turns: list[Turn] = field(default_factory=list)

    def _message(self, i: int) -> str:
        words = [WORDS[(i * 7 + k * 3 + self.seed) % len(WORDS)] for k in range(self.message_words)]
        return f"step {i}: " + " ".join(words)

    def _post(self, path: str, body: dict) -> tuple[int, dict]:
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        if self.api_key:
            req.add_header("Authorization", f"Bearer {self.api_key}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as e:
            try:
                payload = json.loads(e.read() or b"{}")
            except ValueError:
                payload = {}
            return e.code, payload

    def _request(self, message: str) -> tuple[int, dict]:
        common = {"n_predict": self.n_predict, "seed": self.seed, "temperature": 0.0,
                  "cache_prompt": True, "ignore_eos": True}
        if self.id_slot is not None:
            common["id_slot"] = self.id_slot
        if self.chat:
            messages = [{"role": "system", "content": SYSTEM_PROMPT + "\n" + TOOLS}]
            for user, reply in self.history:
                messages += [{"role": "user", "content": user},
                             {"role": "assistant", "content": reply}]
            messages.append({"role": "user", "content": message})
            return self._post("/v1/chat/completions",
                              {"messages": messages, "max_tokens": self.n_predict, **common})
        parts = [SYSTEM_PROMPT, TOOLS]
        for user, reply in self.history:
            parts += [f"USER: {user}", f"AGENT: {reply}"]
        parts += [f"USER: {message}", "AGENT:"]
        return self._post("/completion", {"prompt": "\n".join(parts), **common})

    def turn(self) -> Turn:
        """Send the next request (history + one new message) and record the result."""
        index = len(self.turns) + 1
        message = self._message(index)
        status, body = self._request(message)
        if status != 200:
            err = body.get("error", {}) if isinstance(body, dict) else {}
            text = err.get("message", "") if isinstance(err, dict) else str(err)
            wall = (err.get("type") == "exceed_context_size_error" if isinstance(err, dict)
                    else False) or "context size" in text.lower()
            t = Turn(index, ok=False, hit_wall=wall, status=status, error=text or str(body))
            self.turns.append(t)
            return t
        if self.chat:
            choice = body["choices"][0]
            reply = choice["message"].get("content") or ""
            usage = body.get("usage", {})
            truncated = choice.get("finish_reason") == "length" and \
                usage.get("completion_tokens", self.n_predict) < self.n_predict
            t = Turn(index, ok=not truncated, hit_wall=truncated,
                     prompt_tokens=usage.get("prompt_tokens"),
                     predicted=usage.get("completion_tokens"))
        else:
            reply = body.get("content", "")
            truncated = bool(body.get("truncated"))
            t = Turn(index, ok=not truncated, hit_wall=truncated,
                     prompt_tokens=body.get("tokens_evaluated"),
                     predicted=body.get("tokens_predicted"))
        if t.ok:
            if not self.verbatim:
                reply = "ok, " + " ".join(WORDS[(index + k) % len(WORDS)] for k in range(4))
            self.history.append((message, reply))
        self.turns.append(t)
        return t

    def run_until_wall(self, max_turns: int = 60) -> list[Turn]:
        """Run turns until one hits the wall (or ``max_turns``); returns the new turns.

        Raises:
            RuntimeError: a request failed for another reason than a full context.
        """
        done = []
        for _ in range(max_turns):
            t = self.turn()
            done.append(t)
            if t.hit_wall:
                return done
            if not t.ok:
                raise RuntimeError(f"turn {t.index} failed: HTTP {t.status} {t.error}")
        return done
