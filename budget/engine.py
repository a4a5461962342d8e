"""The analysis engine: one Snapshot in, one StatusReport out (attribution, forecasts, advice).

Stateful across polls: GGUF headers are read once per file version, slot histories feed
the forecasts, and the expensive what-ifs are recomputed only when their inputs move.
Never raises: whatever goes wrong for one server becomes that server's ``errors``.
"""

from __future__ import annotations

import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from kvwall.budget.advice import (
    POOL_GPU,
    POOL_TOTAL,
    AdviceOptions,
    MemoryPoolKind,
    ServerView,
    advice_in_view,
    advice_options,
    largest_context,
    pool_bytes,
    problems_in_view,
)
from kvwall.budget.attribution import attribute, device_ids, server_devices
from kvwall.budget.cachetypes import CacheType, cache_type_changes
from kvwall.budget.cmdline.parse import parse_command_line
from kvwall.budget.config import ConfigError, ServerConfig
from kvwall.budget.events import GrabDetector
from kvwall.budget.forecast import ContextTracker, PoolTracker
from kvwall.budget.memory import MemoryPlan, plan_memory
from kvwall.budget.ollama_advice import managed_advice
from kvwall.budget.report import (
    KV_POOL_SLOT_ID,
    Advice,
    Attribution,
    Forecast,
    MemoryEvent,
    PoolForecast,
    RefusedRequests,
    ServerReport,
    SlotReport,
    StatusReport,
)
from kvwall.budget.units import sanitize
from kvwall.monitors.discovery import CLI_NAMES, SERVER_NAMES, UNIFIED_NAMES, server_key
from kvwall.monitors.gguf import ModelInfo
from kvwall.monitors.llama_devices import (
    FAILURE_RETRY_S,
    LIVE_BACKENDS,
    LlamaDevices,
    device_environment,
    list_devices,
    runnable,
    server_build_number,
    with_live_free,
)
from kvwall.monitors.snapshot import (
    HEALTH_LOADING,
    HEALTH_SLEEPING,
    DeviceMemory,
    ServerProcess,
    ServerState,
    SlotState,
    Snapshot,
)

log = logging.getLogger(__name__)

# Cache types whose largest context is reported for a restart.
RESTART_CACHE_TYPES: tuple[CacheType, ...] = ("f16", "q8_0", "q4_0")
# What-ifs are recomputed when the memory budget moves by more than this fraction.
BUDGET_TOLERANCE = 0.02
MODEL_CACHE_SIZE = 32

ReadModel = Callable[[str], ModelInfo]
UNTRUSTED_MODEL_PATH_NOTE = "model path from the server not opened (not on its command line)"


def _default_read_model(path: str) -> ModelInfo:
    from kvwall.monitors.gguf import read_model

    return read_model(path)


def _props_slot_ctx(props: Mapping[str, object] | None) -> int | None:
    if not props:
        return None
    dgs = props.get("default_generation_settings")
    if isinstance(dgs, Mapping):
        n = dgs.get("n_ctx")
        if isinstance(n, int) and not isinstance(n, bool) and n > 0:
            return n
    return None


def _props_int(props: Mapping[str, object] | None, name: str) -> int | None:
    if not props:
        return None
    n = props.get(name)
    return n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else None


def _unified_guess(config: ServerConfig) -> bool:
    if config.kv_unified is not None:
        return config.kv_unified
    return config.n_parallel == -1


class Engine:
    """Turns snapshots into reports; keep one alive across polls so forecasts build up.

    Args:
        read_model: reads a GGUF header (default :func:`kvwall.monitors.gguf.read_model`).
        clock: wall-clock seconds since the epoch, for ``StatusReport.wall_time``.
        tracker: the slot-history tracker (default a fresh :class:`ContextTracker`).
        proc_root: where ``/proc`` is, to resolve a relative ``-m`` against the server's
            working directory.
        plan_fn: the memory model (default :func:`kvwall.budget.memory.plan_memory`).
        pool_tracker: the memory-pool trend tracker (default a fresh :class:`PoolTracker`).
        grab_detector: finds other processes that suddenly take a memory pool's memory (default a
            fresh :class:`~kvwall.budget.events.GrabDetector`).
        trusted_model_paths: model files the user named (settings): a server reporting one
            of them in ``/props`` has it read; any other reported path is never opened.
        list_devices_fn: asks a server's executable for its devices
            (default :func:`kvwall.monitors.llama_devices.list_devices`, cached on disk).
    """

    def __init__(
        self,
        *,
        read_model: ReadModel | None = None,
        clock: Callable[[], float] = time.time,
        tracker: ContextTracker | None = None,
        proc_root: str = "/proc",
        plan_fn: Callable[..., MemoryPlan] = plan_memory,
        pool_tracker: PoolTracker | None = None,
        grab_detector: GrabDetector | None = None,
        trusted_model_paths: Collection[str] = (),
        list_devices_fn: Callable[..., LlamaDevices] = list_devices,
    ) -> None:
        self._read_model = read_model or _default_read_model
        self._clock = clock
        self.tracker = tracker or ContextTracker()
        self.pool_tracker = pool_tracker if pool_tracker is not None else PoolTracker()
        self.grab_detector = grab_detector if grab_detector is not None else GrabDetector()
        self._proc_root = proc_root
        self._trusted_model_paths = frozenset(
            os.path.normpath(os.path.expanduser(p)) for p in trusted_model_paths)
        self._plan_fn = plan_fn
        self._wall = 0.0  # the epoch time of the poll being analysed
        self._models: OrderedDict[str, tuple[tuple[int, int], ModelInfo | None, str | None]] = (
            OrderedDict())
        self._plans: dict[str, tuple[tuple[object, ...], MemoryPlan | None, ServerConfig,
                                     tuple[str, ...]]] = {}
        self._cached: dict[str, _Cached] = {}
        self._configs: OrderedDict[tuple[object, ...],
                                   tuple[ServerConfig | None, str | None]] = OrderedDict()
        self._list_devices = list_devices_fn
        # (exe, subcommand, device environment) -> its devices: asked once per process
        # lifetime of kvwall (the disk cache makes later starts a file read)
        self._binaries: OrderedDict[tuple[object, ...], tuple[LlamaDevices, float]] = (
            OrderedDict())

    # ------------------------------------------------------------------ public

    def analyse(self, snapshot: Snapshot) -> StatusReport:
        """Analyse one poll.

        Args:
            snapshot: what the poller saw.

        Returns:
            The report; never raises (a failure for one server becomes its ``errors``,
            a failure of the whole analysis the report's ``errors``).
        """
        try:
            wall = self._clock()
        except Exception:  # a forecast must not break the report  # noqa: BLE001 - a broken clock must not stop the report
            wall = 0.0
        try:
            devices = tuple(snapshot.memory.devices)
            errors = tuple(snapshot.errors) + tuple(
                e for e in snapshot.memory.errors if e not in snapshot.errors
            )
        except Exception as e:  # noqa: BLE001
            return StatusReport(snapshot_ts(snapshot), wall, (), (),
                                (f"kvwall could not read this poll: {type(e).__name__}: {e}",))
        # Memory trends first: a pool forecast to run out is a problem advice solves.
        forecasts, events = self._memory_trends(snapshot, devices)
        self._wall = wall
        reports: list[ServerReport] = []
        for state in snapshot.servers:
            try:
                reports.append(self._analyse_server(state, devices, forecasts))
            except Exception as e:  # one server never breaks the report
                log.exception("analysis failed for %s", state.process.url)
                reports.append(_failed_report(state, e))
        self._retain({r.key for r in reports})
        return StatusReport(snapshot.timestamp, wall, devices, tuple(reports), _shown(errors),
                            pool_forecasts=forecasts, memory_events=events)

    def forget_history(self) -> None:
        """Drop every history (slots, shared KV pools, memory pools, processes): after a sleep/resume, growth
        measured across the gap is not growth."""
        self.tracker.clear()
        self.pool_tracker.forget()
        self.grab_detector.forget()

    # ------------------------------------------------------------------ parts

    def _memory_trends(self, snapshot: Snapshot, devices: tuple[DeviceMemory, ...]
                       ) -> tuple[tuple[PoolForecast, ...], tuple[MemoryEvent, ...]]:
        """Memory pool forecasts and sudden grabs by other processes; never raises."""
        try:
            ts = float(snapshot.memory.timestamp)
        except Exception:  # noqa: BLE001
            ts = snapshot_ts(snapshot)
        forecasts: tuple[PoolForecast, ...] = ()
        events: tuple[MemoryEvent, ...] = ()
        try:
            self.pool_tracker.observe(devices, ts)
            forecasts = self.pool_tracker.forecasts(devices)
        except Exception:
            log.exception("pool forecast failed")
        try:
            pids: set[int] = set()
            for state in snapshot.servers:
                for pid in (state.process.pid, state.process.parent_pid):
                    if pid is not None:
                        pids.add(pid)
            events = self.grab_detector.observe(devices, ts, pids)
        except Exception:
            log.exception("process grab detection failed")
        return forecasts, events

    def _retain(self, keys: set[str]) -> None:
        for cache in (self._plans, self._cached):
            for key in [k for k in cache if k not in keys]:
                del cache[key]

    def model(self, path: str) -> tuple[ModelInfo | None, str | None]:
        """The GGUF header at ``path`` (read once per file version), or an error sentence."""
        try:
            st = os.stat(path)
        except OSError as e:
            return None, f"model file {path} cannot be read: {e.strerror or e}"
        version = (st.st_mtime_ns, st.st_size)
        hit = self._models.get(path)
        if hit is not None and hit[0] == version:
            self._models.move_to_end(path)
            return hit[1], hit[2]
        try:
            model, error = self._read_model(path), None
        except Exception as e:  # noqa: BLE001 - GGUFError and anything else a file throws
            model, error = None, f"model file {path} cannot be read: {e}"
        self._models[path] = (version, model, error)
        while len(self._models) > MODEL_CACHE_SIZE:
            self._models.popitem(last=False)
        return model, error

    def _parse(self, argv: tuple[str, ...], env: Mapping[str, str]
               ) -> tuple[ServerConfig | None, str | None]:
        """parse_command_line, once per distinct command line (it never changes for a pid)."""
        key = (argv, tuple(sorted(env.items())))
        hit = self._configs.get(key)
        if hit is None:
            try:
                hit = (parse_command_line(argv, dict(env)), None)
            except ConfigError as e:
                hit = (None, f"command line: {e}")
            self._configs[key] = hit
            while len(self._configs) > 4 * MODEL_CACHE_SIZE:
                self._configs.popitem(last=False)
        return hit

    def _model_path(self, state: ServerState, config: ServerConfig | None
                    ) -> tuple[str | None, str | None]:
        """The model file to open, and a note when the server named one kvwall will not open.

        The file comes from the process's own command line (``-m``/``--model``/
        ``LLAMA_ARG_MODEL``, relative to its working directory). A path the server reports
        in ``/props`` is only a claim: it is opened only when the user listed it
        (``trusted_model_paths``), so a server cannot make kvwall open a FIFO or a crafted
        file of its choosing.
        """
        if config is not None and config.model_path:
            return self._resolved(state, config.model_path), None
        claimed = state.props.get("model_path") if state.props else None
        if not isinstance(claimed, str) or not claimed or claimed == "none":
            return None, None
        path = self._resolved(state, claimed)
        if os.path.normpath(path) in self._trusted_model_paths:
            return path, None
        return None, UNTRUSTED_MODEL_PATH_NOTE

    def _resolved(self, state: ServerState, path: str) -> str:
        """``path`` with ``~`` expanded, relative to the server's working directory."""
        path = os.path.expanduser(path)
        pid = state.process.pid
        if not os.path.isabs(path) and pid is not None:
            try:
                cwd = os.readlink(os.path.join(self._proc_root, str(pid), "cwd"))
                path = os.path.join(cwd, path)
            except OSError:
                pass
        return path

    def _plan(
        self,
        key: str,
        state: ServerState,
        model: ModelInfo,
        model_version: tuple[object, ...],
        config: ServerConfig,
        gpus: tuple[str, ...],
        start_free: Mapping[str, int] | None = None,
    ) -> tuple[MemoryPlan | None, ServerConfig, tuple[str, ...]]:
        """The plan with the server's real context: /slots corrects what --fit chose.

        ``start_free`` is the free memory each GPU had when the server started (what its
        ``--fit`` and its split by free memory saw); with it, where --fit put the layers is
        replayed; without it the command's own placement is planned."""
        extra = {"device_free": dict(start_free)} if start_free else {}
        slots = state.slots or ()
        slot_ctx = slots[0].n_ctx if slots else _props_slot_ctx(state.props)
        n_slots = _props_int(state.props, "total_slots") or (len(slots) or None)
        inputs = (model_version, config.argv, tuple(sorted(config.env.items())), gpus,
                  slot_ctx, n_slots, tuple(sorted((start_free or {}).items())))
        hit = self._plans.get(key)
        if hit is not None and hit[0] == inputs:
            return hit[1], hit[2], hit[3]
        notes: list[str] = []
        plan = self._plan_fn(model, config, gpu_names=gpus, **extra)
        if plan.ok and (slot_ctx or n_slots):
            seq = n_slots or plan.n_seq
            ctx = slot_ctx or plan.n_ctx_slot
            if (ctx, seq) != (plan.n_ctx_slot, plan.n_seq):
                capped = slot_ctx is not None and slot_ctx >= model.n_ctx_train
                if capped and seq == plan.n_seq:
                    pass  # the slot context is capped to n_ctx_train: the total cells are unknown
                else:
                    n_ctx = ctx if plan.kv_unified else ctx * seq
                    fixed = config.replace(n_ctx=n_ctx, n_parallel=seq,
                                           kv_unified=plan.kv_unified)
                    replan = self._plan_fn(model, fixed, gpu_names=gpus, **extra)
                    if replan.ok:
                        why = ("--fit chose it" if config.n_ctx is None
                               else "the server differs from its command line")
                        notes.append(
                            f"context read from the server: {seq} slot(s) of {ctx} cells "
                            f"(the command line gives {plan.n_seq} of {plan.n_ctx_slot}; {why})"
                        )
                        plan, config = replan, fixed
        if plan.ok and slot_ctx and plan.n_ctx_slot != slot_ctx:
            notes.append(f"kvwall's model gives {plan.n_ctx_slot} cells per slot, "
                         f"the server reports {slot_ctx}")
        self._plans[key] = (inputs, plan, config, tuple(notes))
        return plan, config, tuple(notes)

    def _analyse_server(self, state: ServerState, devices: tuple[DeviceMemory, ...],
                        pool_forecasts: tuple[PoolForecast, ...] = ()) -> ServerReport:
        """One server's report: configuration, model, plan, attribution, slots, fit."""
        key = server_key(state.process)
        found = self._find_config(state)
        read = self._find_model(state, found.config)
        gpus = self._server_devices(state, devices)
        ids = gpus.names
        planned = self._planned(key, state, read, found.config, ids, gpus.start_free)
        memory, memory_notes = _attribute(state, planned.plan, devices)
        unified = planned.plan.kv_unified if planned.plan is not None else (
            _unified_guess(planned.config) if planned.config is not None else False)
        followed = self._follow_slots(key, state, planned.plan, unified)
        fit = self._fit(key, state, devices, read, planned, memory, ids, gpus.start_free)
        errors = state.errors + found.errors + read.errors + planned.errors
        notes = (found.notes + read.notes + planned.notes + memory_notes + followed.notes)
        proc = state.process
        name = _display_name(state, planned.config, read.path)
        refused = self._refused(key, state)
        advice = _advice_in_view(state, devices, pool_forecasts, planned, followed, fit,
                                 refused)
        managed = managed_advice(proc.managed_by, advice, planned.config, proc.managed_model)
        if managed is not None:  # Ollama / llama-swap: its name, its settings (issue 11)
            name, advice = proc.managed_model or name, managed.advice
            notes += managed.notes
        return ServerReport(
            key=key, pid=proc.pid, url=proc.url, name=sanitize(name, 200), model_path=read.path,
            health=state.health, plan=planned.plan, memory=memory, slots=followed.slots,
            pool=followed.kv_pool, max_ctx=fit.max_ctx, more_servers_fit=fit.more_servers,
            advice=advice, errors=_shown(errors), config=planned.config,
            notes=_shown(notes), more_slots_fit=fit.more_slots,
            restart_budget_bytes=fit.restart_budget_bytes, device_ids=ids,
            device_room=gpus.start_free,
            managed_by=proc.managed_by,
            label=sanitize(_display_label(state, planned.config, name), 200),
            refused_requests=refused,
        )

    def _server_devices(self, state: ServerState, devices: tuple[DeviceMemory, ...]
                        ) -> _ServerDevices:
        """The devices the server offloads to: its own executable's ``--list-devices``
        (with its environment) when kvwall may run it, else the pools that list its pid.

        ``free_bytes`` is each device's free memory *now*, with this server's own buffers
        already allocated; the ``--fit`` and split decisions the server made at its start
        saw that plus what it holds there. ``start_free`` replays that: the binary's own
        figure where it is what llama.cpp reads (Vulkan, Metal), else the live free memory
        plus what the driver measures for this process on the device. A device the driver
        does not measure per process leaves ``start_free`` empty (the command's own
        placement is planned).
        """
        found = self._binary_devices(state)
        if found is None or found.error is not None:
            build = server_build_number(_build_info(state), state.process.exe, found)
            return _ServerDevices(device_ids(state, devices), {}, build)
        live = with_live_free(found, devices, state.process.device_env)
        return _ServerDevices(live.names, live.free_bytes(),
                              server_build_number(_build_info(state), None, found),
                              _start_free(live, devices, state.process.pid))

    def _binary_devices(self, state: ServerState) -> LlamaDevices | None:
        """``--list-devices`` of the server's executable (a dictionary lookup after the
        first time); None when there is none kvwall may run."""
        proc = state.process
        exe = proc.exe
        if not exe or os.path.basename(exe).removesuffix(".exe") not in _LLAMA_PROGRAMS:
            return None
        sub: tuple[str, ...] = ()
        if proc.argv and os.path.basename(proc.argv[0]) in UNIFIED_NAMES and len(proc.argv) > 1:
            sub = (proc.argv[1],)
        memo = (exe, sub, tuple(sorted(proc.device_env.items())))
        hit = self._binaries.get(memo)
        now = time.monotonic()
        if hit is not None and (hit[0].error is None or now - hit[1] < FAILURE_RETRY_S):
            return hit[0]
        if not runnable(exe):
            return None
        env = {k: v for k, v in os.environ.items() if k not in device_environment(os.environ)}
        env.update(proc.device_env)
        try:
            found = self._list_devices(exe, env, subcommand=sub)
        except Exception as e:  # noqa: BLE001 - a device query must not cost the report
            log.debug("--list-devices of %s failed: %s", exe, e)
            return None
        self._binaries[memo] = (found, now)
        while len(self._binaries) > MODEL_CACHE_SIZE:
            self._binaries.popitem(last=False)
        return found

    def _refused(self, key: str, state: ServerState) -> RefusedRequests | None:
        """Requests the server refused (context exceeded), None without ``/slots``."""
        if state.slots is None:
            return None
        seen = self.tracker.refused(key)
        last = None
        if seen.last_timestamp is not None:  # monotonic -> epoch, through this poll's pair
            last = self._wall - (state.timestamp - seen.last_timestamp)
        return RefusedRequests(seen.count, last)

    def _find_config(self, state: ServerState) -> _Found:
        """The server's configuration from its command line (defaults for a URL)."""
        proc = state.process
        if proc.argv:
            config, error = self._parse(tuple(proc.argv), proc.env)
            return _Found(config, (error,) if error else ())
        notes: tuple[str, ...] = ()
        if state.props:
            notes = ("no command line (a server given by URL): llama-server's "
                     "defaults assumed for what /props and /slots do not tell (cache "
                     "type, flash attention, batch sizes)",)
        return _Found(ServerConfig(), (), notes)

    def _find_model(self, state: ServerState, config: ServerConfig | None) -> _ModelRead:
        """The model file the server runs and its header; router notes when it has none."""
        proc = state.process
        path, untrusted = self._model_path(state, config)
        notes: list[str] = [untrusted] if untrusted else []
        if path is not None:
            model, error = self.model(path)
            if error:
                return _ModelRead(path, None, (), (error,), _child_notes(proc))
            return _ModelRead(path, model, (path, *self._models[path][0]), (),
                              _child_notes(proc))
        if proc.pid is not None and (config is None or config.model_path is None) and (
            (state.props and state.props.get("role") == "router")
            or state.router_models is not None
        ):
            notes.append("router: each model runs in its own child llama-server")
            listed = _router_models_text(state.router_models)
            if listed:
                notes.append(f"router models: {listed}")
        return _ModelRead(None, None, (), (), (*notes, *_child_notes(proc)))

    def _planned(self, key: str, state: ServerState, read: _ModelRead,
                 config: ServerConfig | None, ids: tuple[str, ...],
                 start_free: Mapping[str, int] | None = None) -> _Planned:
        """The memory plan (None when the model is unknown or llama.cpp would refuse)."""
        if read.model is None or config is None:
            notes: tuple[str, ...] = ()
            if read.model is None and state.model_meta:
                notes = ("the model file is not readable here: weights from /v1/models; KV "
                         "cache and compute buffers unknown",)
            return _Planned(None, config, (), notes)
        plan, config, plan_notes = self._plan(key, state, read.model, read.version, config, ids,
                                              start_free)
        if plan is not None and plan.errors:
            return _Planned(None, config, tuple(
                f"llama.cpp would refuse this configuration: {e}" for e in plan.errors),
                plan_notes)
        assumptions = plan.assumptions if plan is not None else ()
        return _Planned(plan, config, (), plan_notes + tuple(assumptions))

    def _follow_slots(self, key: str, state: ServerState, plan: MemoryPlan | None,
                      unified: bool) -> _Followed:
        """Slot reports with their forecasts, and the shared KV pool of a unified server."""
        notes: tuple[str, ...] = ()
        if state.props and state.props.get("endpoint_slots") is False:
            notes = ("slot monitoring is off on this server (--no-slots): each "
                     "conversation's context cannot be followed; start it with --slots "
                     "(the default) to see the slots and their forecasts",)
        slots = state.slots
        if slots is None:
            return _Followed((), None, notes)
        self.tracker.observe(key, slots, state.timestamp, unified=unified)
        reports = tuple(
            SlotReport(s.id, s.n_ctx, _slot_tokens(s), s.is_processing,
                       self.tracker.slot_forecast(key, s), id_task=s.id_task)
            for s in slots
        )
        kv_pool: SlotReport | None = None
        if unified and slots:
            cells = plan.n_ctx if plan is not None else max(s.n_ctx for s in slots)
            fc = self.tracker.kv_pool_forecast(key, cells) or Forecast()
            kv_pool = SlotReport(KV_POOL_SLOT_ID, cells, self.tracker.kv_pool_tokens(key),
                                 any(s.is_processing for s in slots), fc)
        return _Followed(reports, kv_pool, notes)

    def _fit(self, key: str, state: ServerState, devices: tuple[DeviceMemory, ...],
             read: _ModelRead, planned: _Planned, memory: tuple[Attribution, ...],
             ids: tuple[str, ...], start_free: Mapping[str, int] | None = None) -> _Fit:
        """What fits in the free memory of the server's memory pool: contexts, advice, more."""
        plan, config, model = planned.plan, planned.config, read.model
        if plan is None or model is None or config is None:
            return _Fit()
        where = pool_of(state, devices)
        modeled = pool_bytes(plan, where.kind)
        if where.free_bytes is None:
            return _Fit()
        budget = where.free_bytes + modeled
        # a restart finds each GPU as the server found it at its start (its own bytes freed)
        cached = self._budgeted(key, _Budgeting(
            model, read.version, config, plan, ids, where, budget, state.slots, start_free))
        used = _measured_on_pool(memory, state, devices, where.kind)
        per_server = used if used else modeled
        more_servers = max(0, where.free_bytes // per_server) if per_server > 0 else None
        per_slot = plan.kv_bytes * plan.n_ctx_slot / max(1, plan.n_ctx) + (
            plan.recurrent_bytes / max(1, plan.n_seq))
        more_slots = max(0, int(where.free_bytes // per_slot)) if per_slot > 0 else None
        return _Fit(cached.max_ctx, cached.advice, more_servers, more_slots, budget, modeled)

    def _budgeted(self, key: str, b: _Budgeting) -> _Cached:
        """max_ctx per cache type and advice, recomputed only when their inputs move."""
        config = b.config
        active = None
        if b.slots is not None:
            active = sum(1 for s in b.slots if s.is_processing or (s.n_tokens or 0) > 0)
        host_total, host_free = b.where.host_total_bytes, b.where.host_free_bytes
        ram_short = host_free is not None and config.cache_ram_mib != 0 and (
            host_free < (config.cache_ram_mib * 1024**2 if config.cache_ram_mib > 0
                         else (host_total or 0)))
        inputs = (b.model_version, config.argv, tuple(sorted(config.env.items())),
                  config.n_ctx, config.n_parallel, b.device_ids, b.where.kind, active,
                  ram_short, tuple(sorted((b.device_free or {}).items())))
        hit = self._cached.get(key)
        if hit is not None and hit.inputs == inputs and (
            abs(hit.budget - b.budget) <= BUDGET_TOLERANCE * max(hit.budget, 1)
        ):
            return hit
        max_ctx = self._restart_contexts(b)
        plan_fn = self._plan_fn
        advice = _LazyOptions(lambda: advice_options(
            b.model, config, b.plan, budget_bytes=b.budget, gpu_names=b.device_ids,
            pool=b.where.kind, slots=b.slots, host_total_bytes=host_total,
            host_free_bytes=host_free, plan_fn=plan_fn, device_free=b.device_free))
        cached = _Cached(inputs, b.budget, max_ctx, advice)
        self._cached[key] = cached
        return cached

    def _restart_contexts(self, b: _Budgeting) -> dict[str, int]:
        """The largest context of each of :data:`RESTART_CACHE_TYPES` that llama.cpp takes."""
        max_ctx: dict[str, int] = {}
        for ctype in RESTART_CACHE_TYPES:
            changes = cache_type_changes(ctype, b.config.flash_attn)
            try:
                variant = b.config.replace(**changes)
                if self._plan_fn(b.model, variant.replace(n_ctx=256),
                                 gpu_names=b.device_ids).errors:
                    continue  # llama.cpp would refuse this cache type for this model
                max_ctx[ctype] = largest_context(b.model, variant, b.budget,
                                                 gpu_names=b.device_ids, pool=b.where.kind,
                                                 plan_fn=self._plan_fn)
            except Exception:  # one odd what-if must not hide the rest
                log.exception("max_ctx failed for %s", ctype)
        return max_ctx


_LLAMA_PROGRAMS = SERVER_NAMES | CLI_NAMES | UNIFIED_NAMES


def _build_info(state: ServerState) -> object:
    return state.props.get("build_info") if state.props else None


@dataclass(frozen=True)
class _ServerDevices:
    """The devices step: what the plan offloads to, their free memory, the build."""

    names: tuple[str, ...]  # llama.cpp device names, in its order
    free_bytes: Mapping[str, int]  # free now, as llama.cpp reads it
    build_number: int | None  # llama.cpp's build, None when unknown
    start_free: Mapping[str, int] | None = None  # free when the server started (replayed)


_FREE_ROUNDING = 64 * 1024 * 1024  # free memory moves a little each poll: replan on real change


def _start_free(live: LlamaDevices, devices: Sequence[DeviceMemory], pid: int | None
                ) -> Mapping[str, int] | None:
    """Each GPU's free memory as the server saw it at its start (see ``_server_devices``)."""
    out: dict[str, int] = {}
    pools = {d.llama_device: d for d in devices if d.llama_device}
    for dev in live.devices:
        if dev.free_bytes is None:
            return None
        pool = pools.get(dev.name)
        if pool is None or not dev.name.startswith(LIVE_BACKENDS):
            out[dev.name] = dev.free_bytes  # the binary's figure is what --fit reads
            continue
        held = [p.used_bytes for p in pool.processes if p.pid == pid]
        if not held:
            return None
        free = dev.free_bytes + held[0]
        out[dev.name] = free - free % _FREE_ROUNDING
    return out or None


@dataclass(frozen=True)
class _Found:
    """The configuration step: the parsed command line (None: unreadable)."""

    config: ServerConfig | None
    errors: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class _ModelRead:
    """The model step: the file, its header and its version (path, mtime, size)."""

    path: str | None
    model: ModelInfo | None
    version: tuple[object, ...]
    errors: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Planned:
    """The plan step: the plan and the configuration it used (corrected from /slots)."""

    plan: MemoryPlan | None
    config: ServerConfig | None
    errors: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Followed:
    """The slot step: each slot's report, and the shared KV pool's (unified servers)."""

    slots: tuple[SlotReport, ...]
    kv_pool: SlotReport | None
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Fit:
    """The fit step: what the free memory of the server's memory pool still holds."""

    max_ctx: dict[str, int] = field(default_factory=dict)
    # Every fix, simulated on first use: only a server with a problem in view pays for it.
    advice: Callable[[], AdviceOptions] = AdviceOptions
    more_servers: int | None = None
    more_slots: int | None = None
    restart_budget_bytes: int | None = None
    plan_bytes: int = 0  # what the plan allocates on the server's memory pool


@dataclass(frozen=True)
class _Budgeting:
    """Inputs of the budget-dependent what-ifs (restart contexts and advice)."""

    model: ModelInfo
    model_version: tuple[object, ...]
    config: ServerConfig
    plan: MemoryPlan
    device_ids: tuple[str, ...]
    where: PoolPlacement
    budget: int
    slots: tuple[SlotState, ...] | None
    device_free: Mapping[str, int] | None = None  # each GPU's room on a restart


@dataclass(frozen=True)
class _Cached:
    """Budget-dependent results of one server (max_ctx, advice), with their inputs."""

    inputs: tuple[object, ...]
    budget: int
    max_ctx: dict[str, int]
    advice: _LazyOptions


class _LazyOptions:
    """A server's :class:`AdviceOptions`, simulated the first time they are asked for.

    Simulating every fix costs tens of milliseconds a server; most polls have no problem
    in view and need none of them (``benchmarks/bench_status_cpu.py``)."""

    def __init__(self, compute: Callable[[], AdviceOptions]) -> None:
        self._compute: Callable[[], AdviceOptions] | None = compute
        self._options: AdviceOptions | None = None

    def __call__(self) -> AdviceOptions:
        if self._options is None:
            compute, self._compute = self._compute, None
            self._options = compute() if compute is not None else AdviceOptions()
        return self._options


def _advice_in_view(state: ServerState, devices: tuple[DeviceMemory, ...],
                    pool_forecasts: tuple[PoolForecast, ...], planned: _Planned,
                    followed: _Followed, fit: _Fit,
                    refused: RefusedRequests | None = None) -> tuple[Advice, ...]:
    """The fixes for the problems in view on this server (``()`` when none is)."""
    if planned.plan is None:
        return ()
    host = next((d for d in devices if d.kind == "host"), None)
    on = tuple(d for d in server_devices(state, devices) if d.kind != "host") or (
        (host,) if host is not None else ())
    view = ServerView(
        followed.slots, followed.kv_pool, refused=refused, plan_bytes=fit.plan_bytes,
        budget_bytes=fit.restart_budget_bytes, pools=on, pool_forecasts=pool_forecasts,
        host=host, cache_ram_on=planned.config is not None and planned.config.cache_ram_mib != 0)
    problems = problems_in_view(view)
    if not problems:
        return ()
    return advice_in_view(fit.advice(), problems, followed.slots, followed.kv_pool)



def _attribute(state: ServerState, plan: MemoryPlan | None, devices: tuple[DeviceMemory, ...]
               ) -> tuple[tuple[Attribution, ...], tuple[str, ...]]:
    """The attribution, set against the plan unless the buffers are not allocated."""
    if state.health in (HEALTH_SLEEPING, HEALTH_LOADING) and plan is not None:
        # The buffers are not (or not yet) allocated: comparing with the plan would
        # only say "less than modeled". Show what is measured; the plan stays for
        # what it takes once awake/loaded.
        note = ("sleeping: the model, KV cache and compute buffers are freed until the next "
                "request; the plan shows what it takes again" if state.health == HEALTH_SLEEPING
                else "loading: memory is still being allocated")
        return attribute(state, None, devices), (note,)
    return attribute(state, plan, devices, weights_hint_bytes=_meta_size(state)), ()


def _meta_size(state: ServerState) -> int | None:
    """The model size ``/v1/models`` reports (bytes), None when it does not."""
    size = state.model_meta.get("size") if state.model_meta else None
    return size if isinstance(size, int) and size > 0 else None


def _child_notes(proc: ServerProcess) -> tuple[str, ...]:
    """Where the advised flags go for a server a router started."""
    if proc.source != "router-child":
        return ()
    if proc.parent_pid is not None:
        return (f"started by the router (pid {proc.parent_pid}): put the advised flags in "
                "the router's command line or its model preset, not in this child's line",)
    return ("started by a router: put the advised flags in the router's command line or "
            "its model preset",)


def _display_name(state: ServerState, config: ServerConfig | None, path: str | None) -> str:
    """The name people know the server by: its alias, the model file's stem, its URL."""
    proc = state.process
    name = ""
    if state.props:
        alias = state.props.get("model_alias")
        if isinstance(alias, str) and alias and alias != "llama-server":
            # llama-server's default alias is the -m path: show the file's stem.
            name = alias
            if "/" in alias or "\\" in alias or alias.endswith(".gguf"):
                name = os.path.basename(alias.replace("\\", "/")).removesuffix(".gguf")
    if not name and config is not None and config.alias:
        name = config.alias
    if not name and path:
        name = os.path.basename(path).removesuffix(".gguf")
    return name or proc.name or proc.url


def _display_label(state: ServerState, config: ServerConfig | None, name: str) -> str:
    """A label unique among servers: the alias the user gave, else ``name:port``."""
    alias = config.alias if config is not None else None
    if not alias and state.props:
        given = state.props.get("model_alias")
        if isinstance(given, str) and given and given != "llama-server" and not (
                "/" in given or "\\" in given or given.endswith(".gguf")):
            alias = given  # not llama-server's default (the -m path)
    if alias:
        return alias
    try:
        port = urlsplit(state.process.url).port
    except ValueError:
        port = None
    return f"{name}:{port}" if port is not None else name


def _router_models_text(items: Sequence[Mapping[str, object]] | None) -> str:
    """``llama (loaded), qwen3 (unloaded)`` from a router's ``/models`` items."""
    parts = []
    for item in items or ():
        ident = item.get("id") if isinstance(item, Mapping) else None
        if not isinstance(ident, str) or not ident:
            continue
        status = item.get("status")
        value = status.get("value") if isinstance(status, Mapping) else status
        parts.append(f"{ident} ({value})" if isinstance(value, str) and value else ident)
    return ", ".join(parts)


def _slot_tokens(slot: SlotState) -> int | None:
    """KV cells a slot holds: a slot that never ran a task holds none (the server omits
    ``n_prompt_tokens`` then)."""
    if slot.n_tokens is None and slot.id_task is None and not slot.is_processing:
        return 0
    return slot.n_tokens


def _shown(texts: Iterable[str]) -> tuple[str, ...]:
    """Errors and notes as every front end may show them: once each, sanitised (a server's
    words can hold escape sequences and run to megabytes)."""
    return tuple(dict.fromkeys(sanitize(str(t)) for t in texts))


def snapshot_ts(snapshot: Snapshot) -> float:
    """The snapshot's monotonic timestamp, 0.0 when a broken snapshot has none."""
    try:
        return float(snapshot.timestamp)
    except Exception:  # noqa: BLE001
        return 0.0


def _failed_report(state: ServerState, error: Exception) -> ServerReport:
    proc = state.process
    return ServerReport(
        key=server_key(proc), pid=proc.pid, url=proc.url, name=proc.name or proc.url,
        model_path=None, health=state.health, plan=None, memory=(), slots=(), pool=None,
        max_ctx={}, more_servers_fit=None, advice=(),
        errors=_shown((*state.errors,
                       f"kvwall could not analyse this server ({type(error).__name__}: {error})")),
    )


@dataclass(frozen=True)
class PoolPlacement:
    """Where a server lives and what is free there.

    Attributes:
        kind: ``POOL_GPU`` for discrete accelerators, else ``POOL_TOTAL``.
        free_bytes: free bytes on that memory pool (None if unknown).
        host_total_bytes, host_free_bytes: host RAM (None if unknown).
    """

    kind: MemoryPoolKind
    free_bytes: int | None
    host_total_bytes: int | None
    host_free_bytes: int | None


def pool_of(state: ServerState, devices: Sequence[DeviceMemory]) -> PoolPlacement:
    """Where a server lives and what is free there (see :class:`PoolPlacement`)."""
    host = next((d for d in devices if d.kind == "host"), None)
    host_total = host.total_bytes if host else None
    host_free = host.free_bytes if host else None
    on = server_devices(state, devices)
    discrete = [d for d in on if not d.unified]
    if discrete:
        frees = [d.free_bytes for d in discrete]
        free = None if None in frees else sum(f for f in frees if f is not None)
        return PoolPlacement(POOL_GPU, free, host_total, host_free)
    if on:
        return PoolPlacement(POOL_TOTAL, on[0].free_bytes, host_total, host_free)
    return PoolPlacement(POOL_TOTAL, host_free, host_total, host_free)


def _measured_on_pool(
    memory: Sequence[Attribution], state: ServerState, devices: Sequence[DeviceMemory],
    pool: MemoryPoolKind,
) -> int:
    ids = {d.id for d in server_devices(state, devices) if not d.unified} if pool == POOL_GPU \
        else None
    total = 0
    for a in memory:
        if a.measured_bytes is None:
            continue
        if ids is None or a.device_id in ids:
            total += a.measured_bytes
    return total


__all__ = ["KV_POOL_SLOT_ID", "RESTART_CACHE_TYPES", "Engine", "PoolPlacement", "pool_of"]
