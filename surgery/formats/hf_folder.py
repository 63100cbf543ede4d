"""A checkpoint directory: its config, its shards and which shard holds which tensor."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from surgery.errors import CheckpointError
from surgery.formats.paths import open_regular
from surgery.formats.pretty_json import dumps_indented
from surgery.formats.safetensors import ShardHeader, TensorEntry, read_header

SINGLE_SHARD = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
CONFIG = "config.json"
# Mistral's native layout (vLLM --load-format mistral, mistral-inference), often beside the Hugging Face one
NATIVE_SINGLE_SHARD = "consolidated.safetensors"
NATIVE_INDEX_FILE = "consolidated.safetensors.index.json"
NATIVE_SHARD_GLOB = "consolidated*.safetensors"
NATIVE_CONFIG = "params.json"
CONFIG_FILES = (CONFIG, NATIVE_CONFIG)
GENERATION_CONFIG = "generation_config.json"  # each names the vocabulary size (and maybe token ids) of its layout
# Weight formats we never open (pickle can run code) and never copy into a trimmed output (they would
# still hold the full vocabulary).
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
OTHER_WEIGHT_SUFFIXES = (*PICKLE_SUFFIXES, ".h5", ".msgpack", ".gguf", ".onnx", ".pb")
PICKLE_HINT = (
    "convert it to safetensors first, e.g. in Python: "
    "AutoModel.from_pretrained(dir).save_pretrained(dir2, safe_serialization=True) on a trusted machine"
)


@dataclass(frozen=True, slots=True)
class ShardIndex:
    """An index file and the shards it lists (model.safetensors.index.json, consolidated.safetensors.index.json)."""

    name: str
    metadata: dict | None
    shards: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Checkpoint:
    root: Path
    configs: dict  # config file name -> its JSON object: config.json and/or params.json
    shards: tuple[ShardHeader, ...]  # every layout's shards
    indexes: tuple[ShardIndex, ...] = ()

    @property
    def config(self) -> dict:
        """The main config: config.json, or params.json in a folder with only Mistral's native layout."""
        return self.configs.get(CONFIG) or self.configs[NATIVE_CONFIG]

    @classmethod
    def open(cls, root: Path) -> Checkpoint:
        """Read the configs and every shard header of each layout; raise CheckpointError on any inconsistency."""
        if not root.is_dir():
            raise CheckpointError(f"{root}: not a directory")
        native_paths = sorted(root.glob(NATIVE_SHARD_GLOB))
        configs = {}
        for name in CONFIG_FILES:
            if (root / name).exists() or (name == CONFIG and not native_paths):
                configs[name] = load_json(root / name, missing_hint="a Hugging Face checkpoint folder has config.json")
                if not isinstance(configs[name], dict):
                    raise CheckpointError(f"{root / name}: not a JSON object")
        if not configs:
            raise CheckpointError(f"{root}: {', '.join(p.name for p in native_paths)} but no {NATIVE_CONFIG} "
                                  f"or {CONFIG}")
        shards: list[ShardHeader] = []
        indexes: list[ShardIndex] = []
        native = {p.name for p in native_paths}
        if native_paths:
            _open_layout(root, NATIVE_INDEX_FILE, None, native_paths, shards, indexes, set())
        hf_paths = sorted(p for p in root.glob("*.safetensors") if p.name not in native)
        if hf_paths or (root / INDEX_FILE).exists() or not native_paths:
            _open_layout(root, INDEX_FILE, SINGLE_SHARD, hf_paths, shards, indexes, native)
        _check_unique_names(shards)
        return cls(root, configs, tuple(shards), tuple(indexes))

    def tensors(self) -> dict[str, TensorEntry]:
        return {entry.name: entry for shard in self.shards for entry in shard.entries}

    def tensor_files(self) -> list[tuple[Path, list[TensorEntry]]]:
        """The container protocol (formats/base.py): each shard and its tensors."""
        return [(shard.path, list(shard.entries)) for shard in self.shards]


def _open_layout(root: Path, index_file: str, single: str | None, paths: list[Path], shards: list, indexes: list,
                 other_layout: set[str]) -> None:
    """One layout's shards: its index when there is one, else its single shard."""
    if (root / index_file).exists():
        index = _open_index(root, index_file, other_layout)
        shards += [read_header(root / n) for n in index.shards]
        _check_index_matches(index_file, load_json(root / index_file)["weight_map"], shards[-len(index.shards):])
        indexes.append(index)
        return
    if single is not None and (root / single).exists():
        shards.append(read_header(root / single))
        return
    if len(paths) == 1:
        shards.append(read_header(paths[0]))
        return
    pickles = sorted(p.name for p in root.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles and not paths:
        raise CheckpointError(
            f"{root}: only pickle weights ({', '.join(pickles)}); surgery never unpickles files",
            hint=PICKLE_HINT,
        )
    if paths:
        raise CheckpointError(
            f"{root}: {len(paths)} .safetensors files but no {index_file} to say how they fit together"
        )
    raise CheckpointError(f"{root}: no {single} or {index_file}")


def _open_index(root: Path, index_file: str, other_layout: set[str]) -> ShardIndex:
    index = load_json(root / index_file)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise CheckpointError(f"{index_file}: no 'weight_map' object of tensor name -> shard file")
    shard_names = sorted(set(weight_map.values()))
    for shard_name in shard_names:
        if "/" in shard_name or "\\" in shard_name or shard_name in ("", ".", ".."):
            raise CheckpointError(f"{index_file}: shard path '{shard_name}' leaves the checkpoint folder")
    missing_files = [n for n in shard_names if not (root / n).is_file()]
    if missing_files:
        raise CheckpointError(f"{index_file}: names missing shard file(s): {', '.join(missing_files)}")
    own = set(shard_names) | other_layout
    pattern = NATIVE_SHARD_GLOB if index_file == NATIVE_INDEX_FILE else "*.safetensors"
    unlisted = sorted(p.name for p in root.glob(pattern) if p.name not in own)
    if unlisted:
        raise CheckpointError(f"{index_file}: shard file(s) not in the index: {', '.join(unlisted)}")
    metadata = index.get("metadata") if isinstance(index.get("metadata"), dict) else None
    return ShardIndex(index_file, metadata, tuple(shard_names))


def _check_unique_names(shards: list[ShardHeader]) -> None:
    """Tensor names identify tensors across every layout of the folder."""
    seen: dict[str, str] = {}
    for shard in shards:
        for entry in shard.entries:
            if entry.name in seen and seen[entry.name] != shard.path.name:
                raise CheckpointError(
                    f"{shard.path.name}: tensor '{entry.name}' is also in {seen[entry.name]}"
                )
            seen[entry.name] = shard.path.name


def _check_index_matches(index_file: str, weight_map: dict[str, str], shards: list[ShardHeader]) -> None:
    """Every tensor is in exactly one shard, and that shard is the one the index names."""
    seen: dict[str, str] = {}
    for shard in shards:
        for entry in shard.entries:
            if entry.name in seen:
                raise CheckpointError(
                    f"{index_file}: tensor '{entry.name}' is in two shards: {seen[entry.name]} and {shard.path.name}"
                )
            seen[entry.name] = shard.path.name
    missing = sorted(name for name in weight_map if name not in seen)
    if missing:
        raise CheckpointError(
            f"{index_file}: {len(missing)} tensor(s) listed but in no shard, e.g. '{missing[0]}' "
            f"(index says {weight_map[missing[0]]})"
        )
    unlisted = sorted(name for name in seen if name not in weight_map)
    if unlisted:
        raise CheckpointError(
            f"{index_file}: {len(unlisted)} tensor(s) in shards but not in the index, e.g. '{unlisted[0]}' "
            f"(in {seen[unlisted[0]]})"
        )
    wrong = sorted(name for name in seen if weight_map[name] != seen[name])
    if wrong:
        raise CheckpointError(
            f"{index_file}: tensor '{wrong[0]}' is in {seen[wrong[0]]} but the index says {weight_map[wrong[0]]}"
        )


def load_json(path: Path, *, missing_hint: str | None = None):
    """Parse a JSON file, raising CheckpointError (never a traceback) for a missing or malformed one."""
    if not path.exists():
        raise CheckpointError(f"{path}: file not found", hint=missing_hint)
    try:
        with open_regular(path) as f:
            text = f.read().decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: cannot read: {e}") from e
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path.name}: not valid JSON (line {e.lineno}: {e.msg})") from e


def dump_json(data: object) -> bytes:
    """JSON as Hugging Face writes its config files: indented, UTF-8, trailing newline."""
    return (dumps_indented(data) + "\n").encode("utf-8")
