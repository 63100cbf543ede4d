"""Find and patch the vocab sizes and token ids in config.json and generation_config.json.

Pure functions over dicts: nothing here reads or writes files.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass

import numpy as np

from surgery.errors import CheckpointError

VOCAB_SIZE_KEYS = ("vocab_size", "padded_vocab_size")
# bos/eos/pad/unk/sep/cls/mask/decoder_start/forced_bos/image/video/audio/boi/eoi/no_timestamps ... ids
TOKEN_ID_KEY = re.compile(r".*_token_(?:id|ids|index)$")
# generation_config lists where a removed id is simply dropped (it can no longer be produced anyway).
DROPPABLE_ID_LISTS = ("suppress_tokens", "begin_suppress_tokens")
DROPPABLE_SEQUENCES = ("bad_words_ids", "force_words_ids")  # lists of id sequences (force_words: nested)
DROPPABLE_ID_MAPS = ("lang_to_id", "task_to_id")  # whisper: {"<|en|>": 50259}
NOT_IDS = ("alignment_heads", "max_initial_timestamp_index")


@dataclass(frozen=True, slots=True)
class ConfigPatch:
    file: str
    key: str  # dotted path, e.g. "text_config.eos_token_id"
    old: object
    new: object


def walk_dicts(node: dict, prefix: str = ""):
    """Yield (dotted_prefix, dict) for the config and every nested config dict."""
    yield prefix, node
    for key, value in node.items():
        if isinstance(value, dict):
            yield from walk_dicts(value, f"{prefix}{key}.")


def named_token_ids(config: dict, n_rows: int) -> dict[str, list[int]]:
    """Ids that a config names as tokens (`*_token_id`, forced_decoder_ids): trim keeps them all."""
    found: dict[str, list[int]] = {}
    for prefix, node in walk_dicts(config):
        for key, value in node.items():
            ids: list[int] = []
            if TOKEN_ID_KEY.fullmatch(key):
                ids = [v for v in (value if isinstance(value, list) else [value]) if _is_id(v, n_rows)]
            elif key == "forced_decoder_ids" and isinstance(value, list):
                ids = [pair[1] for pair in value if isinstance(pair, list) and len(pair) == 2 and _is_id(pair[1], n_rows)]
            if ids:
                found[prefix + key] = ids
    return found


def changed_token_ids(old_config: dict, new_config: dict, old_tokens: dict[int, str], new_tokens: dict[int, str],
                      n_rows: int, new_rows: int) -> list[str]:
    """Id fields whose tokens differ between a config and its trimmed copy: each as "key: was [...], now [...]"."""
    new_ids = named_token_ids(new_config, new_rows)
    problems = []
    for key, ids in named_token_ids(old_config, n_rows).items():
        was = [old_tokens.get(i) for i in ids]
        now = [new_tokens.get(i) for i in new_ids.get(key, [])]
        if was != now:
            problems.append(f"{key}: was {was}, now {now}")
    return problems


def _is_id(value: object, n_rows: int) -> bool:
    return type(value) is int and 0 <= value < n_rows


def vocab_size_keys(config: dict, n_rows: int, file: str = "config.json") -> list[str]:
    """Dotted keys holding the vocab size; raise if the config disagrees with the tensors."""
    keys, other = [], []
    for prefix, node in walk_dicts(config):
        for key in VOCAB_SIZE_KEYS:
            if type(node.get(key)) is int:
                (keys if node[key] == n_rows else other).append(prefix + key)
    if not keys and other:
        first = other[0]
        raise CheckpointError(
            f"{file}: {first} is {get_dotted(config, first)} but the embedding has {n_rows} rows",
            hint=f"the config does not describe these weights; fix {file} or name the tensors with --vocab-tensor",
        )
    return keys


def get_dotted(config: dict, dotted: str):
    """The value at a dotted key such as "text_config.vocab_size"."""
    node = config
    for part in dotted.split("."):
        node = node[part]
    return node


def patch_config(file: str, config: dict, old_to_new: np.ndarray,
                 sizes: dict[str, tuple[int, int]]) -> tuple[dict, list[ConfigPatch]]:
    """Return a patched deep copy and the list of changes. Ids past the vocab or negative stay as they are.

    `sizes` maps a size key (vocab_size, ...) to its (old, new) value: a key holding the old value is patched.
    """
    new_config = copy.deepcopy(config)
    patches: list[ConfigPatch] = []
    for prefix, node in walk_dicts(new_config):
        for key in list(node):
            value = node[key]
            if key in sizes and type(value) is int and value == sizes[key][0]:
                new = sizes[key][1]
            elif key in NOT_IDS:
                continue
            elif TOKEN_ID_KEY.fullmatch(key):
                new = _map_nested(value, old_to_new)
            elif key == "forced_decoder_ids" and isinstance(value, list):
                new = [[pair[0], _map_id(pair[1], old_to_new)] for pair in value]
            elif key in DROPPABLE_ID_LISTS and isinstance(value, list):
                new = [_map_id(v, old_to_new) for v in value if not _dropped(v, old_to_new)]
            elif key in DROPPABLE_SEQUENCES and isinstance(value, list):
                new = _map_sequences(value, old_to_new)
            elif key in DROPPABLE_ID_MAPS and isinstance(value, dict):
                new = {k: _map_id(v, old_to_new) for k, v in value.items() if not _dropped(v, old_to_new)}
            elif key == "sequence_bias" and isinstance(value, list):
                new = [[_map_nested(ids, old_to_new), bias] for ids, bias in value
                       if not any(_dropped(v, old_to_new) for v in ids)]
            else:
                continue
            if new != value:
                node[key] = new
                patches.append(ConfigPatch(file, prefix + key, value, new))
    return new_config, patches


def _dropped(value: object, old_to_new: np.ndarray) -> bool:
    return type(value) is int and 0 <= value < len(old_to_new) and old_to_new[value] < 0


def _map_id(value: object, old_to_new: np.ndarray):
    if type(value) is not int or not 0 <= value < len(old_to_new):
        return value
    new_id = int(old_to_new[value])
    if new_id < 0:
        # plan_trim keeps every named id, so reaching this is a bug, not a user error
        raise AssertionError(f"config names id {value}, which the plan dropped")
    return new_id


def _map_nested(value, old_to_new: np.ndarray):
    if isinstance(value, list):
        return [_map_nested(v, old_to_new) for v in value]
    return _map_id(value, old_to_new)


def _map_sequences(value: list, old_to_new: np.ndarray) -> list:
    """Drop every innermost id sequence that contains a removed id; map the rest."""
    kept = []
    for item in value:
        if isinstance(item, list) and item and all(type(v) is int for v in item):
            if not any(_dropped(v, old_to_new) for v in item):
                kept.append([_map_id(v, old_to_new) for v in item])
        elif isinstance(item, list):
            inner = _map_sequences(item, old_to_new)
            if inner:
                kept.append(inner)
    return kept
