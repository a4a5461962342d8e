"""Attribution: measured memory split by the memory model, disagreements shown."""

from __future__ import annotations

from kvwall.budget.attribution import RSS_NOTE, attribute, device_ids, split_measured
from kvwall.budget.memory import DeviceBudget, MemoryPlan
from kvwall.monitors.snapshot import DeviceMemory, ProcessMemory, ServerProcess, ServerState

MIB = 1024**2
GIB = 1024**3


def row(name, weights, kv, compute, output=0, recurrent=0):
    return DeviceBudget(
        name=name,
        is_host=name == "Host",
        weights_bytes=weights,
        kv_bytes=kv,
        recurrent_bytes=recurrent,
        compute_bytes=compute,
        output_bytes=output,
        total_bytes=weights + kv + compute + output + recurrent,
    )


def plan(*rows):
    total = sum(r.total_bytes for r in rows)
    return MemoryPlan(
        n_ctx=8192, n_ctx_seq=8192, n_ctx_slot=8192, n_seq=1, n_stream=1, kv_unified=False,
        cache_type_k="f16", cache_type_v="f16", flash_attn="auto", n_ubatch=512,
        weights_bytes=sum(r.weights_bytes for r in rows), kv_bytes=sum(r.kv_bytes for r in rows),
        kv_k_bytes=0, kv_v_bytes=0, kv_swa_bytes=0,
        recurrent_bytes=sum(r.recurrent_bytes for r in rows),
        compute_bytes=sum(r.compute_bytes for r in rows),
        output_bytes=sum(r.output_bytes for r in rows), cache_ram_bytes=0, total_bytes=total,
        kv_bytes_per_cell=0.0, devices=tuple(rows), assumptions=(), errors=(),
    )


def server(pid=100, rss=None, url="http://127.0.0.1:8080"):
    return ServerState(ServerProcess(url=url, pid=pid, rss_bytes=rss), 0.0, "ok")


def host(total=64 * GIB, free=32 * GIB):
    return DeviceMemory("host", "host", "Host RAM", True, total, total - free, free)


def nvidia(index, processes=(), name="NVIDIA H100"):
    return DeviceMemory(
        f"nvidia:{index}", "nvidia", name, False, 80 * GIB, 10 * GIB, 70 * GIB,
        processes=tuple(processes), llama_device=f"CUDA{index}",
    )


def total_parts(a):
    return (a.weights_bytes + a.kv_bytes + a.recurrent_bytes + a.compute_bytes
            + a.overhead_bytes + a.unattributed_bytes)


def test_gpu_process_split_with_cuda_overhead():
    p = plan(row("CUDA0", 4 * GIB, 1 * GIB, 512 * MIB), row("Host", 300 * MIB, 0, 20 * MIB, 2 * MIB))
    measured = 4 * GIB + 1 * GIB + 512 * MIB + 450 * MIB  # + a CUDA context
    devices = (host(), nvidia(0, [ProcessMemory(100, measured), ProcessMemory(7, 5 * GIB)]))
    gpu, cpu = attribute(server(rss=900 * MIB), p, devices)
    assert gpu.device_id == "nvidia:0"
    assert (gpu.weights_bytes, gpu.kv_bytes, gpu.compute_bytes) == (4 * GIB, 1 * GIB, 512 * MIB)
    assert gpu.overhead_bytes == 450 * MIB
    assert gpu.unattributed_bytes == 0 and gpu.note is None
    assert cpu.device_id == "host"
    assert cpu.measured_bytes == 900 * MIB
    assert cpu.compute_bytes == 22 * MIB  # the output buffer counts as compute
    assert total_parts(cpu) == 900 * MIB
    assert RSS_NOTE in cpu.note


def test_far_more_than_modeled_is_unattributed_not_overhead():
    p = plan(row("CUDA0", 4 * GIB, 1 * GIB, 512 * MIB))
    measured = 9 * GIB
    devices = (host(), nvidia(0, [ProcessMemory(100, measured)]))
    gpu = attribute(server(), p, devices)[0]
    assert gpu.overhead_bytes == 0
    assert gpu.unattributed_bytes == measured - (5 * GIB + 512 * MIB)
    assert "more than the model explains" in gpu.note
    assert total_parts(gpu) == measured


def test_far_less_than_modeled_says_so():
    p = plan(row("CUDA0", 8 * GIB, 2 * GIB, 1 * GIB))
    devices = (host(), nvidia(0, [ProcessMemory(100, 3 * GIB)]))
    gpu = attribute(server(), p, devices)[0]
    assert gpu.unattributed_bytes == 3 * GIB - 11 * GIB
    assert "less than modeled" in gpu.note
    assert total_parts(gpu) == 3 * GIB


def test_host_shortfall_blames_mmap():
    p = plan(row("Host", 6 * GIB, 1 * GIB, 100 * MIB))
    cpu = attribute(server(rss=2 * GIB), p, (host(),))[0]
    assert "memory-mapped weights are not all resident" in cpu.note
    assert total_parts(cpu) == 2 * GIB


def test_small_models_overhead_up_to_a_gib_is_plausible():
    p = plan(row("Host", 2 * MIB, 1 * MIB, 1 * MIB))
    cpu = attribute(server(rss=60 * MIB), p, (host(),))[0]
    assert cpu.overhead_bytes == 56 * MIB
    assert cpu.unattributed_bytes == 0


def test_two_gpus_matched_by_llama_device_name():
    p = plan(row("CUDA0", 3 * GIB, GIB, 256 * MIB), row("CUDA1", 2 * GIB, GIB, 128 * MIB),
             row("Host", 500 * MIB, 0, 10 * MIB))
    devices = (host(), nvidia(1, [ProcessMemory(100, 3 * GIB + 300 * MIB)]),
               nvidia(0, [ProcessMemory(100, 4 * GIB + 600 * MIB)]))
    by_id = {a.device_id: a for a in attribute(server(rss=GIB), p, devices)}
    assert by_id["nvidia:0"].weights_bytes == 3 * GIB
    assert by_id["nvidia:0"].overhead_bytes == 344 * MIB
    assert by_id["nvidia:1"].weights_bytes == 2 * GIB
    assert by_id["nvidia:1"].overhead_bytes == 172 * MIB
    assert set(by_id) == {"nvidia:0", "nvidia:1", "host"}


def test_device_ids_follow_the_pools_that_list_the_process():
    devices = (host(), nvidia(0, [ProcessMemory(5, GIB)]), nvidia(1, [ProcessMemory(100, GIB)]))
    assert device_ids(server(), devices) == ("CUDA1",)
    # A GPU that lists other processes but not this one: a CPU build of llama-server.
    assert device_ids(server(pid=42), devices) == ()
    idle_gpu = (host(), nvidia(0, []))
    assert device_ids(server(), idle_gpu) == ()


def test_apple_unified_pool_sets_the_whole_plan_against_rss():
    apple = DeviceMemory("apple", "apple", "Apple M3 Max", True, 64 * GIB, 20 * GIB, 44 * GIB,
                         llama_device="MTL0")
    assert device_ids(server(), (host(), apple)) == ("MTL0",)
    p = plan(row("MTL0", 4 * GIB, GIB, 300 * MIB), row("Host", 200 * MIB, 0, 10 * MIB))
    (only,) = attribute(server(rss=6 * GIB), p, (host(), apple))
    assert only.device_id == "apple"
    assert only.weights_bytes == 4 * GIB + 200 * MIB
    assert total_parts(only) == 6 * GIB


def test_remote_server_has_modeled_figures_only():
    p = plan(row("Host", GIB, GIB, 0))
    (a,) = attribute(server(pid=None, url="http://10.0.0.5:8080"), p, (host(),))
    assert a.measured_bytes is None
    assert a.overhead_bytes == 0
    assert "not reported" in a.note
    assert attribute(server(pid=None), None, (host(),)) == ()


def test_unknown_model_uses_the_size_hint():
    (a,) = attribute(server(rss=900 * MIB), None, (host(),), weights_hint_bytes=700 * MIB)
    assert a.weights_bytes == 700 * MIB
    assert a.kv_bytes == 0
    assert total_parts(a) == 900 * MIB


def test_gpu_row_without_a_reporting_pool_is_modeled_only():
    p = plan(row("CUDA0", GIB, GIB, GIB), row("Host", 0, 0, 0))
    devices = (host(), nvidia(0, [ProcessMemory(100, 3 * GIB + 100 * MIB)]))
    # The plan thinks of two GPUs (stale -dev list); only one reports the process.
    p2 = plan(row("CUDA0", GIB, GIB, GIB), row("CUDA1", GIB, 0, 0), row("Host", 0, 0, 0))
    attrs = attribute(server(rss=GIB), p2, devices)
    missing = next(a for a in attrs if a.weights_bytes == GIB and a.measured_bytes is None)
    assert "not reported" in missing.note
    assert len(attribute(server(rss=GIB), p, devices)) == 2


def test_split_measured_unknown_measurement():
    a = split_measured("nvidia:0", None, (row("CUDA0", 10, 20, 30),))
    assert (a.weights_bytes, a.kv_bytes, a.compute_bytes, a.overhead_bytes) == (10, 20, 30, 0)
