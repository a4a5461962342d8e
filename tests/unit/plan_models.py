"""ModelInfo objects built by hand for unit tests (no GGUF file needed)."""

from __future__ import annotations

from kvwall.monitors.gguf import ModelInfo, TensorInfo


def make_model(
    architecture: str = "llama",
    *,
    n_layer: int = 32,
    n_layer_nextn: int = 0,
    n_ctx_train: int = 131072,
    n_embd: int = 4096,
    n_vocab: int = 128256,
    n_head: int | tuple[int, ...] = 32,
    n_head_kv: int | tuple[int, ...] = 8,
    head_k: int = 128,
    head_v: int = 128,
    head_k_swa: int | None = None,
    head_v_swa: int | None = None,
    is_mla: bool = False,
    head_k_mla: int = 0,
    head_v_mla: int = 0,
    kv_lora_rank: int = 0,
    n_swa: int = 0,
    swa_layers: tuple[bool, ...] | None = None,
    n_layer_kv_from_start: int = -1,
    recurrent_layers: tuple[bool, ...] | None = None,
    ssm_d_conv: int = 0,
    ssm_d_inner: int = 0,
    ssm_d_state: int = 0,
    ssm_dt_rank: int = 0,
    ssm_n_group: int = 0,
    wkv_head_size: int = 0,
    token_shift_count: int = 0,
    shortconv_l_cache: int = 0,
    n_expert: int = 0,
    n_expert_used: int = 0,
    n_ff: int = 14336,
    tensors: tuple[TensorInfo, ...] = (),
) -> ModelInfo:
    n_all = n_layer
    per = lambda v: tuple(v) if isinstance(v, tuple) else (v,) * n_all  # noqa: E731
    if not tensors:
        tensors = (
            TensorInfo("token_embd.weight", "f16", 1, (n_embd, n_vocab), n_embd * n_vocab * 2),
            *(
                TensorInfo(f"blk.{il}.attn_q.weight", "f16", 1, (n_embd, n_embd), n_embd * n_embd * 2)
                for il in range(n_all)
            ),
            TensorInfo("output_norm.weight", "f32", 0, (n_embd,), n_embd * 4),
            TensorInfo("output.weight", "f16", 1, (n_embd, n_vocab), n_embd * n_vocab * 2),
        )
    return ModelInfo(
        path="/models/m.gguf",
        paths=("/models/m.gguf",),
        architecture=architecture,
        name="m",
        file_type=None,
        n_layer_all=n_all,
        n_layer_nextn=n_layer_nextn,
        n_ctx_train=n_ctx_train,
        n_embd=n_embd,
        n_vocab=n_vocab,
        n_head=per(n_head),
        n_head_kv=per(n_head_kv),
        head_k=head_k,
        head_v=head_v,
        head_k_swa=head_k if head_k_swa is None else head_k_swa,
        head_v_swa=head_v if head_v_swa is None else head_v_swa,
        is_mla=is_mla,
        head_k_mla=head_k_mla,
        head_v_mla=head_v_mla,
        kv_lora_rank=kv_lora_rank,
        n_swa=n_swa,
        swa_layers=swa_layers if swa_layers is not None else (False,) * n_all,
        n_layer_kv_from_start=n_layer_kv_from_start,
        recurrent_layers=recurrent_layers if recurrent_layers is not None else (False,) * n_all,
        ssm_d_conv=ssm_d_conv,
        ssm_d_inner=ssm_d_inner,
        ssm_d_state=ssm_d_state,
        ssm_dt_rank=ssm_dt_rank,
        ssm_n_group=ssm_n_group,
        wkv_head_size=wkv_head_size,
        token_shift_count=token_shift_count,
        shortconv_l_cache=shortconv_l_cache,
        n_expert=n_expert,
        n_expert_used=n_expert_used,
        n_ff=per(n_ff),
        n_rot=head_k,
        tensors=tensors,
        metadata={},
    )
