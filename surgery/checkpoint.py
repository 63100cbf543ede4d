"""A checkpoint directory: its config, its shards and which shard holds which tensor."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from surgery.errors import CheckpointError
from surgery.safetensors_io import ShardHeader, TensorEntry, read_header

SINGLE_SHARD = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
# Weight formats we never open (pickle can run code) and never copy into a trimmed output (they would
# still hold the full vocabulary).
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
OTHER_WEIGHT_SUFFIXES = (*PICKLE_SUFFIXES, ".h5", ".msgpack", ".gguf", ".onnx", ".pb")
PICKLE_HINT = (
    "convert it to safetensors first, e.g. in Python: "
    "AutoModel.from_pretrained(dir).save_pretrained(dir2, safe_serialization=True) on a trusted machine"
)


@dataclass(frozen=True, slots=True)
class Checkpoint:
    root: Path
    config: dict
    shards: tuple[ShardHeader, ...]
    index_name: str | None  # the index file name when sharded, else None
    index_metadata: dict | None

    @classmethod
    def open(cls, root: Path) -> Checkpoint:
        """Read config.json and every shard header; raise CheckpointError on any inconsistency."""
        if not root.is_dir():
            raise CheckpointError(f"{root}: not a directory")
        config = load_json(root / "config.json", missing_hint="a Hugging Face checkpoint folder has config.json")
        if not isinstance(config, dict):
            raise CheckpointError(f"{root / 'config.json'}: not a JSON object")
        if (root / INDEX_FILE).exists():
            return cls._open_sharded(root, config)
        if (root / SINGLE_SHARD).exists():
            return cls(root, config, (read_header(root / SINGLE_SHARD),), None, None)
        shard_paths = sorted(root.glob("*.safetensors"))
        if len(shard_paths) == 1:
            return cls(root, config, (read_header(shard_paths[0]),), None, None)
        pickles = sorted(p.name for p in root.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickles:
            raise CheckpointError(
                f"{root}: only pickle weights ({', '.join(pickles)}); surgery never unpickles files",
                hint=PICKLE_HINT,
            )
        if shard_paths:
            raise CheckpointError(
                f"{root}: {len(shard_paths)} .safetensors files but no {INDEX_FILE} to say how they fit together"
            )
        raise CheckpointError(f"{root}: no {SINGLE_SHARD} or {INDEX_FILE}")

    @classmethod
    def _open_sharded(cls, root: Path, config: dict) -> Checkpoint:
        index_path = root / INDEX_FILE
        index = load_json(index_path)
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise CheckpointError(f"{INDEX_FILE}: no 'weight_map' object of tensor name -> shard file")
        shard_names = sorted(set(weight_map.values()))
        for shard_name in shard_names:
            if "/" in shard_name or "\\" in shard_name or shard_name in ("", ".", ".."):
                raise CheckpointError(f"{INDEX_FILE}: shard path '{shard_name}' leaves the checkpoint folder")
        missing_files = [n for n in shard_names if not (root / n).is_file()]
        if missing_files:
            raise CheckpointError(f"{INDEX_FILE}: names missing shard file(s): {', '.join(missing_files)}")
        unlisted = sorted(p.name for p in root.glob("*.safetensors") if p.name not in set(shard_names))
        if unlisted:
            raise CheckpointError(f"{INDEX_FILE}: shard file(s) not in the index: {', '.join(unlisted)}")
        shards = tuple(read_header(root / n) for n in shard_names)
        _check_index_matches(weight_map, shards)
        metadata = index.get("metadata") if isinstance(index.get("metadata"), dict) else None
        return cls(root, config, shards, INDEX_FILE, metadata)

    def tensors(self) -> dict[str, TensorEntry]:
        return {entry.name: entry for shard in self.shards for entry in shard.entries}


def _check_index_matches(weight_map: dict[str, str], shards: tuple[ShardHeader, ...]) -> None:
    """Every tensor is in exactly one shard, and that shard is the one the index names."""
    seen: dict[str, str] = {}
    for shard in shards:
        for entry in shard.entries:
            if entry.name in seen:
                raise CheckpointError(
                    f"{INDEX_FILE}: tensor '{entry.name}' is in two shards: {seen[entry.name]} and {shard.path.name}"
                )
            seen[entry.name] = shard.path.name
    missing = sorted(name for name in weight_map if name not in seen)
    if missing:
        raise CheckpointError(
            f"{INDEX_FILE}: {len(missing)} tensor(s) listed but in no shard, e.g. '{missing[0]}' "
            f"(index says {weight_map[missing[0]]})"
        )
    unlisted = sorted(name for name in seen if name not in weight_map)
    if unlisted:
        raise CheckpointError(
            f"{INDEX_FILE}: {len(unlisted)} tensor(s) in shards but not in the index, e.g. '{unlisted[0]}' "
            f"(in {seen[unlisted[0]]})"
        )
    wrong = sorted(name for name in seen if weight_map[name] != seen[name])
    if wrong:
        raise CheckpointError(
            f"{INDEX_FILE}: tensor '{wrong[0]}' is in {seen[wrong[0]]} but the index says {weight_map[wrong[0]]}"
        )


def load_json(path: Path, *, missing_hint: str | None = None):
    """Parse a JSON file, raising CheckpointError (never a traceback) for a missing or malformed one."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise CheckpointError(f"{path}: file not found", hint=missing_hint) from e
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: cannot read: {e}") from e
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path.name}: not valid JSON (line {e.lineno}: {e.msg})") from e


def dump_json(data: object) -> bytes:
    """JSON as Hugging Face writes its config files: indented, UTF-8, trailing newline."""
    return (json.dumps(data, ensure_ascii=False, indent=2) + "\n").encode("utf-8")
