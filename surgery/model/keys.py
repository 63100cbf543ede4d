"""Every GGUF metadata key surgery reads or writes, in one namespace (gguf-py's `constants.Keys`).

Per-architecture keys are templates: `LLM.BLOCK_COUNT.format(arch="qwen3")` -> "qwen3.block_count". The record
keys are ours: the decisions of a surgery run, stored in its output so `surgery verify` can replay them. This
module imports nothing, so the container parser (formats/gguf.py) can read its own keys from here too.
"""

from __future__ import annotations


class General:
    ARCHITECTURE = "general.architecture"
    ALIGNMENT = "general.alignment"


class Split:  # a model split over several files (gguf-split): each part numbers itself
    NO = "split.no"
    COUNT = "split.count"
    TENSORS = "split.tensors.count"


class LLM:
    VOCAB_SIZE = "{arch}.vocab_size"
    BLOCK_COUNT = "{arch}.block_count"
    NEXTN_PREDICT_LAYERS = "{arch}.nextn_predict_layers"  # multi-token-prediction blocks, stored after the others
    LEADING_DENSE_BLOCK_COUNT = "{arch}.leading_dense_block_count"
    EMBEDDING_LENGTH = "{arch}.embedding_length"
    FEED_FORWARD_LENGTH = "{arch}.feed_forward_length"
    EXPERT_COUNT = "{arch}.expert_count"
    EXPERT_USED_COUNT = "{arch}.expert_used_count"
    PREFIX = "{arch}."  # every per-architecture key starts so (per-block arrays among them)


class Attention:
    HEAD_COUNT = "{arch}.attention.head_count"
    HEAD_COUNT_KV = "{arch}.attention.head_count_kv"
    KEY_LENGTH = "{arch}.attention.key_length"
    VALUE_LENGTH = "{arch}.attention.value_length"


class Tokenizer:
    MODEL = "tokenizer.ggml.model"
    PRE = "tokenizer.ggml.pre"
    TOKENS = "tokenizer.ggml.tokens"
    SCORES = "tokenizer.ggml.scores"
    TOKEN_TYPE = "tokenizer.ggml.token_type"
    MERGES = "tokenizer.ggml.merges"
    SUPPRESS_TOKENS = "tokenizer.ggml.suppress_tokens"
    UNK_ID = "tokenizer.ggml.unknown_token_id"  # the padding rows' fallback source
    PAD_ID = "tokenizer.ggml.padding_token_id"
    ID_PREFIX, ID_SUFFIX = "tokenizer.ggml.", "_token_id"  # every special-token id key (bos, eos ...) is named so
    DECODER_START_ID_SUFFIX = ".decoder_start_token_id"
    CHAT_TEMPLATE = "tokenizer.chat_template"  # and tokenizer.chat_template.<name> for named templates
    HF_JSON = "tokenizer.huggingface.json"


class Record:  # surgery's own: the decisions of a run, replayed by `surgery verify`
    TRIM = "surgery.trim_record"
    DROP_LAYERS = "surgery.drop_layers_record"
    PRUNE = "surgery.prune_record"


def arch_key(template: str, arch: str) -> str:
    return template.format(arch=arch)
