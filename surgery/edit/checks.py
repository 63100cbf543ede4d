"""In-run checks of a vocabulary trim: reopen the output and check it against its plan before it is moved into place.

The byte comparisons are those of `surgery verify` (edit/compare.py), on a sample of rows.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from surgery.edit.compare import first_bad_row, same_bytes
from surgery.errors import CheckpointError, VerifyError
from surgery.formats.hf_folder import CONFIG_FILES, GENERATION_CONFIG
from surgery.formats.safetensors import read_header
from surgery.model.config_keys import changed_token_ids, vocab_size_keys
from surgery.tokenizer import SP_MODEL_NAMES, TOKENIZER_JSON, TokenizerFiles

SAMPLE_ROWS = 64


def verify(plan, out: Path, tokenizer: TokenizerFiles) -> list[str]:
    """Raise VerifyError on the first disagreement; return the list of checks that passed.

    `tokenizer` is the source checkpoint's tokenizer, as the plan was made from it.
    """
    checks = [_check_shards(plan, out), _check_config(plan, out)]
    checks += _check_tokenizer(plan, out, tokenizer)
    checks.append(_check_config_ids(plan, out, tokenizer))
    return checks


def _check_config_ids(plan, out: Path, tokenizer: TokenizerFiles) -> str:
    """config.json, params.json and generation_config.json ids name the same tokens as in the source."""
    old_tokens = tokenizer.id_to_token()
    new_tokens = {new_id: old_tokens[int(old_id)] for new_id, old_id in enumerate(plan.token_old_ids)
                  if int(old_id) in old_tokens}
    for name in (*CONFIG_FILES, GENERATION_CONFIG):
        if not (plan.src / name).exists():
            continue
        old_config = json.loads((plan.src / name).read_text(encoding="utf-8"))
        new_config = json.loads((out / name).read_text(encoding="utf-8"))
        problems = changed_token_ids(old_config, new_config, old_tokens, new_tokens,
                                     max(plan.n_rows, plan.n_tokens), len(plan.token_old_ids))
        if problems:
            raise VerifyError(f"output {name}: {problems[0]}")
    return "config token ids name the same tokens"


def reopen_shard(path: Path) -> dict:
    """A written shard read back by our reader and by safetensors, which must list the same tensors; its entries."""
    import safetensors

    try:
        written = {e.name: e for e in read_header(path).entries}
    except CheckpointError as e:
        raise VerifyError(f"output {e}") from e
    with safetensors.safe_open(path, framework="numpy") as reopened:
        if set(reopened.keys()) != set(written):
            raise VerifyError(f"output {path.name}: safetensors lists other tensors than our reader")
    return written


def _check_shards(plan, out: Path) -> str:
    rng = np.random.default_rng(0)
    sampled = 0
    for shard in plan.shards:
        written = reopen_shard(out / shard.name)
        for action in shard.actions:
            entry = written.get(action.name)
            if entry is None or entry.shape != action.new_shape or entry.dtype != action.dtype:
                raise VerifyError(f"output {shard.name}: tensor '{action.name}' is missing or has the wrong shape")
            if action.action == "gather":
                rows = plan.rows_for(action)
                if not len(rows):
                    continue
                sample = np.unique(np.concatenate([[0, len(rows) - 1], rng.integers(0, len(rows), SAMPLE_ROWS)]))
                if first_bad_row(action.entry, entry, action.axis, rows, sample) is not None:
                    raise VerifyError(f"output {shard.name}: rows of '{action.name}' differ from their source rows")
                sampled += len(sample)
            elif not same_bytes(action.entry, entry, full=False):
                raise VerifyError(f"output {shard.name}: copied tensor '{action.name}' differs from its source")
    return f"shards reopened by safetensors; {sampled} sampled vocab rows equal their source rows"


def _check_config(plan, out: Path) -> str:
    """Every config's vocab size keys are the rows written."""
    for name in CONFIG_FILES:
        if not (plan.src / name).exists():
            continue
        config = json.loads((out / name).read_text(encoding="utf-8"))
        old_keys = vocab_size_keys(json.loads((plan.src / name).read_text(encoding="utf-8")), plan.n_rows, name)
        try:
            new_keys = vocab_size_keys(config, plan.new_rows, name)
        except CheckpointError as e:
            raise VerifyError(f"output {e}") from e
        if name == "config.json" and not new_keys:
            raise VerifyError(f"output {name}: no vocab_size equals the {plan.new_rows} rows written")
        if old_keys and new_keys != old_keys:
            raise VerifyError(f"output {name}: {', '.join(old_keys)} must all be the {plan.new_rows} rows written")
    return f"config vocab_size = {plan.new_rows}"


def _check_tokenizer(plan, out: Path, tokenizer: TokenizerFiles) -> list[str]:
    """The rewritten tokenizer loads in the real libraries and each new id names its old token."""
    checks = []
    old_tokens = tokenizer.id_to_token()
    expected = {new_id: old_tokens[int(old_id)] for new_id, old_id in enumerate(plan.token_old_ids)
                if int(old_id) in old_tokens}
    if (out / TOKENIZER_JSON).exists():
        import tokenizers

        try:
            loaded = tokenizers.Tokenizer.from_file(str(out / TOKENIZER_JSON))
        except Exception as e:  # tokenizers raises a bare Exception with its own text
            raise VerifyError(f"output {TOKENIZER_JSON}: the tokenizers library cannot load it: {e}") from e
        size = loaded.get_vocab_size(with_added_tokens=True)
        if size != len(expected):
            raise VerifyError(f"output {TOKENIZER_JSON}: {size} tokens, expected {len(expected)}")
        wrong = [new_id for new_id, token in expected.items() if loaded.id_to_token(new_id) != token]
        if wrong:
            raise VerifyError(
                f"output {TOKENIZER_JSON}: new id {wrong[0]} is {loaded.id_to_token(wrong[0])!r}, "
                f"expected {expected[wrong[0]]!r} ({len(wrong)} ids wrong)"
            )
        checks.append(f"{TOKENIZER_JSON} loads; {size} ids, each names its old token")
    for name in SP_MODEL_NAMES:
        if (out / name).exists() and name in plan.files:
            import sentencepiece

            processor = sentencepiece.SentencePieceProcessor(model_file=str(out / name))
            checks.append(f"{name} loads; {processor.get_piece_size()} pieces")
    return checks
