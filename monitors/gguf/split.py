"""Split models: find every shard of ``name-0000i-of-0000N.gguf`` and join their tensor tables."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from kvwall.monitors.gguf.keys import K_SPLIT_COUNT, K_SPLIT_NO, K_SPLIT_TENSORS
from kvwall.monitors.gguf.model import TensorInfo, gguf_error
from kvwall.monitors.gguf.reader import INT_TYPES, RawGGUF, parse_file, type_info

_SPLIT_RE = re.compile(r"^(?P<prefix>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")
_MAX_SHARDS = 99999  # llama.cpp names shards with 5 digits


@dataclass(frozen=True)
class Shards:
    """A model's files read: the first shard's header, every path, the joined tensors."""

    first: RawGGUF
    paths: tuple[str, ...]
    tensors: tuple[TensorInfo, ...]


def split_stem(path: str) -> str:
    """The model's file name without ``.gguf`` and without a split suffix."""
    name = Path(path).name
    m = _SPLIT_RE.match(name)
    if m:
        return m.group("prefix")
    return Path(path).stem


def tensor_table(raw: RawGGUF, shard: int) -> list[TensorInfo]:
    """The tensors of one parsed file, as held by shard number ``shard``."""
    out = []
    for t in raw.tensors:
        info = type_info(t.ggml_type)
        assert info is not None  # checked while parsing
        out.append(TensorInfo(t.name, info[0], t.ggml_type, t.shape, t.n_bytes, shard, t.offset))
    return out


def _int_key(raw: RawGGUF, key: str) -> int | None:
    if key not in raw.kv:
        return None
    value = raw.kv[key]
    if raw.kv_types[key] not in INT_TYPES or not isinstance(value, int):
        raise gguf_error(raw.path, f"'{key}' must be an integer")
    return int(value)


def split_keys(raw: RawGGUF) -> tuple[int, int]:
    """(split.no, split.count) of a file; (0, 1) for a single-file model."""
    count = _int_key(raw, K_SPLIT_COUNT)
    if count is None or count <= 1:
        return 0, 1
    if count > _MAX_SHARDS:
        raise gguf_error(raw.path, f"absurd '{K_SPLIT_COUNT}' {count}")
    no = _int_key(raw, K_SPLIT_NO)
    if no is None:
        raise gguf_error(raw.path, f"split model without '{K_SPLIT_NO}'")
    if not 0 <= no < count:
        raise gguf_error(raw.path, f"'{K_SPLIT_NO}' is {no}, but '{K_SPLIT_COUNT}' is {count}")
    return no, count


def read_shards(given: str) -> Shards:
    """Parse ``given`` and, for a split model, every other shard beside it.

    Raises:
        GGUFError: a file is unreadable, a shard is missing, misnamed or mismatched, or a
            tensor appears in two shards.
    """
    raw = parse_file(given)
    no, count = split_keys(raw)
    if count == 1:
        return Shards(raw, (given,), tuple(tensor_table(raw, 0)))
    paths = _shard_paths(given, no, count)
    raws = [
        _checked_shard(raw, p, i, count) if i == no else _read_shard(p, i, count, given)
        for i, p in enumerate(paths)
    ]
    tensors = _joined_tensors(raws)
    return Shards(raws[0], paths, tuple(tensors))


def _shard_paths(given: str, no: int, count: int) -> tuple[str, ...]:
    """Every shard's path, from shard ``no``'s path (which must follow llama.cpp's naming)."""
    postfix = f"-{no + 1:05d}-of-{count:05d}.gguf"
    if not given.endswith(postfix) or len(given) <= len(postfix):
        raise gguf_error(
            given,
            f"shard {no + 1} of a {count}-file split model must be named '*{postfix}' "
            "so that the other shards can be found",
        )
    prefix = given[: -len(postfix)]
    return tuple(f"{prefix}-{i + 1:05d}-of-{count:05d}.gguf" for i in range(count))


def _read_shard(shard_path: str, i: int, count: int, given: str) -> RawGGUF:
    """Shard ``i`` (0-based) of ``count``, checked to say so in its own metadata."""
    if not os.path.exists(shard_path):
        raise gguf_error(shard_path, f"missing shard {i + 1} of {count} (needed by {given})")
    return _checked_shard(parse_file(shard_path), shard_path, i, count)


def _checked_shard(shard: RawGGUF, shard_path: str, i: int, count: int) -> RawGGUF:
    s_no, s_count = split_keys(shard)
    if (s_no, s_count) != (i, count):
        raise gguf_error(
            shard_path,
            f"is shard {s_no + 1} of {s_count} by its metadata, expected {i + 1} of {count}",
        )
    return shard


def _joined_tensors(raws: list[RawGGUF]) -> list[TensorInfo]:
    """The shards' tensor tables in order; the count checked against ``split.tensors.count``."""
    tensors: list[TensorInfo] = []
    seen: set[str] = set()
    for i, shard in enumerate(raws):
        for t in tensor_table(shard, i):
            if t.name in seen:
                raise gguf_error(shard.path, f"tensor '{t.name}' is duplicated across shards")
            seen.add(t.name)
            tensors.append(t)
    first = raws[0]
    expected = first.kv.get(K_SPLIT_TENSORS)
    if (first.kv_types.get(K_SPLIT_TENSORS) in INT_TYPES and isinstance(expected, int)
            and expected != len(tensors)):
        raise gguf_error(
            first.path,
            f"corrupted split model: {expected} tensors expected but {len(tensors)} found",
        )
    return tensors
