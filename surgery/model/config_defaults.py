"""The sizes a config may leave to its class's defaults, and where the config class reads them.

A released config need not spell every size: Gemma-3 4B/12B/27B have no `vocab_size` in their `text_config`
(Gemma3TextConfig's default, 262,208, applies), and LLaVA-1.5's `text_config` names neither the layers nor the
heads (LlamaConfig's defaults). A verb that changes such a size must write it explicitly where the config class
reads it, and a verb that reads one must read the default, never guess. One table, from transformers 5.24.0
`src/transformers/models/<family>/configuration_<family>.py` (the `__init__` defaults of each config class;
tests/model/test_config_defaults.py checks every entry against the installed transformers). `None` means the
class derives the value (num_key_value_heads = num_attention_heads, head_dim = hidden_size // heads).
"""

from __future__ import annotations

from surgery.errors import CheckpointError

SIZE_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
             "num_key_value_heads", "head_dim")

_LLAMA = dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
              num_attention_heads=32, num_key_value_heads=None, head_dim=None)
_MISTRAL = dict(vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                num_attention_heads=32, num_key_value_heads=8, head_dim=None)
_QWEN2 = dict(vocab_size=151936, hidden_size=4096, intermediate_size=22016, num_hidden_layers=32,
              num_attention_heads=32, num_key_value_heads=32)

# model_type -> {key: default}; the config class in the comment
TEXT_DEFAULTS: dict[str, dict[str, object]] = {
    "llama": _LLAMA,  # LlamaConfig
    "mistral": _MISTRAL,  # MistralConfig
    "mixtral": dict(_MISTRAL),  # MixtralConfig
    "qwen2": _QWEN2,  # Qwen2Config
    "qwen3": dict(vocab_size=151936, hidden_size=4096, intermediate_size=22016, num_hidden_layers=32,
                  num_attention_heads=32, num_key_value_heads=32, head_dim=128),  # Qwen3Config
    "gemma": dict(vocab_size=256000, hidden_size=3072, intermediate_size=24576, num_hidden_layers=28,
                  num_attention_heads=16, num_key_value_heads=16, head_dim=256),  # GemmaConfig
    "gemma2": dict(vocab_size=256000, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
                   num_attention_heads=8, num_key_value_heads=4, head_dim=256),  # Gemma2Config
    # Gemma3TextConfig; layer i is full attention when (i + 1) % sliding_window_pattern == 0 (default 6)
    "gemma3_text": dict(vocab_size=262208, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
                        num_attention_heads=8, num_key_value_heads=4, head_dim=256, sliding_window_pattern=6),
    "qwen2_moe": dict(vocab_size=151936, hidden_size=2048, intermediate_size=5632, num_hidden_layers=24,
                      num_attention_heads=16, num_key_value_heads=16),  # Qwen2MoeConfig
    "qwen3_moe": dict(vocab_size=151936, hidden_size=2048, intermediate_size=6144, num_hidden_layers=24,
                      num_attention_heads=32, num_key_value_heads=4),  # Qwen3MoeConfig
    "phi3": dict(vocab_size=32064, hidden_size=3072, intermediate_size=8192, num_hidden_layers=32,
                 num_attention_heads=32, num_key_value_heads=None),  # Phi3Config
}

# composite (multimodal) model_type -> (the key of its text config, the text model_type when it names none)
COMPOSITE_TEXT: dict[str, tuple[str, str]] = {
    "gemma3": ("text_config", "gemma3_text"),  # Gemma3Config
    "llava": ("text_config", "llama"),  # LlavaConfig
    "llava_next": ("text_config", "llama"),  # LlavaNextConfig
    "mistral3": ("text_config", "mistral"),  # Mistral3Config
}
TEXT_CONFIG_KEYS = ("text_config", "language_config", "llm_config")


def text_path(config: dict) -> tuple[str, ...]:
    """Where a model's text sizes live: the text config of a composite config (named by its model_type, or
    the nested dict that holds the layers), else the top level."""
    composite = COMPOSITE_TEXT.get(config.get("model_type", ""))
    if composite is not None:
        return (composite[0],)
    if "num_hidden_layers" in config:
        return ()
    for key in TEXT_CONFIG_KEYS:
        if isinstance(config.get(key), dict):
            return (key,)
    return ()


def text_family(config: dict, path: tuple[str, ...]) -> str:
    """The model_type whose defaults apply to the text config at `path`."""
    node = config
    for key in path:
        node = node.get(key) or {}
    if node.get("model_type"):
        return str(node["model_type"])
    composite = COMPOSITE_TEXT.get(config.get("model_type", ""))
    return composite[1] if composite and path else str(config.get("model_type", ""))


def text_view(config: dict) -> tuple[tuple[str, ...], dict]:
    """(path, the text config with every size it leaves out filled in from its family's defaults). Keys the
    family table does not know stay absent; `size()` refuses to guess them."""
    path = text_path(config)
    node = config
    for key in path:
        node = node.get(key) or {}
    defaults = TEXT_DEFAULTS.get(text_family(config, path), {})
    view = {key: value for key, value in defaults.items() if value is not None and key not in node}
    return path, {**view, **node}


def size(view: dict, key: str, file: str = "config.json", prefix: str = "") -> int:
    """A size the loader will read: the config's value or its family's default; refused when neither settles it."""
    value = view.get(key)
    if key == "num_key_value_heads" and value is None:
        value = size(view, "num_attention_heads", file, prefix)
    if key == "head_dim" and value is None:
        value = size(view, "hidden_size", file, prefix) // size(view, "num_attention_heads", file, prefix)
    if type(value) is not int:
        raise CheckpointError(f"{file}: {prefix}{key} is not set and surgery does not know the default of model_type "
                              f"'{view.get('model_type', '?')}'", hint=f"write {prefix}{key} into {file}")
    return value


def ensure_node(config: dict, path: tuple[str, ...]) -> dict:
    """The dict at `path` inside `config`, created (with its model_type) when the composite config omits it."""
    node = config
    for key in path:
        if not isinstance(node.get(key), dict):
            node[key] = {"model_type": text_family(config, path)}
        node = node[key]
    return node


def unset_vocab_size(config: dict, n_rows: int, file: str = "config.json") -> str:
    """For a config with no vocab_size at all: the dotted key its class reads, when the class default equals the
    embedding rows (so a trim writes the new size there); refused otherwise, naming the key."""
    path = text_path(config)
    key = "".join(f"{k}." for k in path) + "vocab_size"
    family = text_family(config, path)
    default = TEXT_DEFAULTS.get(family, {}).get("vocab_size")
    if default is None:
        raise CheckpointError(f"{file}: {key} is not set and surgery does not know the default of model_type "
                              f"'{family}'", hint=f"write {key} ({n_rows}, the embedding rows) into {file}")
    if default != n_rows:
        raise CheckpointError(f"{file}: {key} is not set, so transformers takes the {family} default {default}, but "
                              f"the embedding has {n_rows} rows", hint="the config does not describe these weights")
    return key
