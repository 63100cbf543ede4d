"""verify: reopen a freshly written output and check it against its plan before it is moved into place."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from surgery.errors import CheckpointError, VerifyError
from surgery.plan import TrimPlan
from surgery.safetensors_io import read_header, read_rows
from surgery.tokenizer_files import SP_MODEL_NAMES, TOKENIZER_JSON, TokenizerFiles

SAMPLE_ROWS = 64


def verify(plan: TrimPlan, out: Path, tokenizer: TokenizerFiles) -> list[str]:
    """Raise VerifyError on the first disagreement; return the list of checks that passed.

    `tokenizer` is the source checkpoint's tokenizer, as the plan was made from it.
    """
    checks = [_check_shards(plan, out), _check_config(plan, out)]
    checks += _check_tokenizer(plan, out, tokenizer)
    return checks


def _check_shards(plan: TrimPlan, out: Path) -> str:
    import safetensors

    rng = np.random.default_rng(0)
    n_new = plan.new_rows
    sample = np.unique(np.concatenate([[0, n_new - 1], rng.integers(0, n_new, SAMPLE_ROWS)]))
    sampled = 0
    for shard in plan.shards:
        try:
            header = read_header(out / shard.name)
        except CheckpointError as e:
            raise VerifyError(f"output {e}") from e
        written = {e.name: e for e in header.entries}
        with safetensors.safe_open(out / shard.name, framework="numpy") as reopened:
            if set(reopened.keys()) != set(written):
                raise VerifyError(f"output {shard.name}: safetensors lists other tensors than our reader")
        src = {e.name: e for e in read_header(plan.src / shard.name).entries}
        for action in shard.actions:
            entry = written.get(action.name)
            if entry is None or entry.shape != action.new_shape or entry.dtype != action.dtype:
                raise VerifyError(f"output {shard.name}: tensor '{action.name}' is missing or has the wrong shape")
            if action.action == "gather":
                old = _rows_along(src[action.name], action.axis)
                new = _rows_along(entry, action.axis)
                if not np.array_equal(old[:, plan.row_source[sample]], new[:, sample]):
                    raise VerifyError(f"output {shard.name}: rows of '{action.name}' differ from their source rows")
                sampled += len(sample)
            elif entry.nbytes and not np.array_equal(_edges(src[action.name]), _edges(entry)):
                raise VerifyError(f"output {shard.name}: copied tensor '{action.name}' differs from its source")
    return f"shards reopened by safetensors; {sampled} sampled vocab rows equal their source rows"


def _rows_along(entry, axis: int) -> np.ndarray:
    """(outer, rows, row_nbytes) view of a tensor along its vocab axis."""
    flat = read_rows(entry).reshape(-1)
    outer = int(np.prod(entry.shape[:axis]))
    return flat.reshape(outer, entry.shape[axis], -1)


def _edges(entry) -> np.ndarray:
    flat = read_rows(entry).reshape(-1)
    return np.concatenate([flat[:4096], flat[-4096:]])


def _check_config(plan: TrimPlan, out: Path) -> str:
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    if config.get("vocab_size", plan.new_rows) != plan.new_rows and (config.get("text_config") or {}).get(
        "vocab_size", plan.new_rows
    ) != plan.new_rows:
        raise VerifyError(f"output config.json: vocab_size is not the {plan.new_rows} rows written")
    return f"config.json vocab_size = {plan.new_rows}"


def _check_tokenizer(plan: TrimPlan, out: Path, tokenizer: TokenizerFiles) -> list[str]:
    """The rewritten tokenizer loads in the real libraries and each new id names its old token."""
    checks = []
    old_tokens = tokenizer.id_to_token()
    expected = {new_id: old_tokens[int(old_id)] for new_id, old_id in enumerate(plan.kept_ids) if int(old_id) in old_tokens}
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
