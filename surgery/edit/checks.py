"""In-run checks: reopen an output and check it against its plan before it is moved into place.

One checker for every tensor a plan writes (`Planned`: its source, the kept rows and columns, its layout):
`slice_problem` samples rows in-run and reads every row in `surgery verify`, for folders and GGUF files alike.
The trim's own checks (its tokenizer and config ids) follow. The byte comparisons are edit/compare.py's.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from surgery.edit.compare import edge_bytes, first_bad_row, first_different_row, same_bytes
from surgery.errors import CheckpointError, VerifyError
from surgery.formats.hf_folder import CONFIG_FILES, GENERATION_CONFIG
from surgery.formats.safetensors import read_header
from surgery.model.config_keys import changed_token_ids, vocab_size_keys
from surgery.tokenizer import SP_MODEL_NAMES, TOKENIZER_JSON, TokenizerFiles

SAMPLE_ROWS = 64


def sample_rows(rng: random.Random, n_rows: int) -> np.ndarray:
    """The rows an in-run check reads of a cut tensor: the first, the last and SAMPLE_ROWS drawn by `rng`, sorted."""
    return np.unique(np.array([0, n_rows - 1, *(rng.randrange(n_rows) for _ in range(SAMPLE_ROWS))], np.int64))


@dataclass(frozen=True)
class Planned:
    """One output tensor of a plan: its source, the kept rows and columns, its dtype and shape (numpy order)."""

    name: str
    source: object  # a safetensors entry or a GGUF tensor
    rows: np.ndarray | None
    cols: np.ndarray | None
    layout: tuple  # (dtype, shape)
    renamed: bool


def slice_problem(planned: list[Planned], written: dict, *, sample: bool) -> str | None:
    """What is wrong with the written tensors, or None: a tensor missing or extra, a dtype or shape other than
    planned, the first tensor (and output row) whose bytes differ from its source slice. `sample` (in-run): the
    first, last and SAMPLE_ROWS random rows of each cut tensor, the first and last 4 KiB of each copy; else every
    row of every tensor (`surgery verify`)."""
    names = {p.name for p in planned}
    extra, missing = sorted(set(written) - names), sorted(names - set(written))
    if extra or missing:
        return "output tensors differ from the plan: " + (f"unexpected {extra[0]}" if extra else f"missing {missing[0]}")
    rng = random.Random(0)  # not numpy.random: its import costs a first run 15 to 50 ms of disk reads
    for p in planned:
        got = written[p.name]
        layout = (got.dtype, tuple(got.shape))
        if layout != p.layout:
            return f"'{p.name}' is {layout}, the plan makes {p.layout}"
        for axis, kept in ((0, p.rows), (1, p.cols)):
            if kept is not None and len(kept) and not (0 <= int(np.min(kept)) and int(np.max(kept)) < p.source.shape[axis]):
                return (f"'{p.name}': the plan keeps {'rows' if axis == 0 else 'columns'} outside its source "
                        f"'{p.source.name}' ({p.source.shape[axis]} on that axis)")
        n_rows = got.shape[0] if got.shape else 0
        if sample and p.rows is None and p.cols is None:  # a copy: its first and last 4 KiB, as ever
            if edge_bytes(p.source) != edge_bytes(got):
                return f"'{p.name}' differs from its source '{p.source.name}' (its first or last 4 KiB)"
            continue
        positions = None
        if sample and n_rows:
            positions = sample_rows(rng, n_rows)
        bad = first_different_row(p.source, got, p.rows, p.cols, positions)
        if bad is not None:
            return f"'{p.name}' differs from its source '{p.source.name}' (output row {bad})"
    return None


def check_folder_slices(plan, out: Path) -> None:
    """Reopen every written shard (our reader and safetensors) and check its tensors, sampled."""
    written = {name: entry for shard in plan.shards for name, entry in reopen_shard(out / shard.name).items()}
    problem = slice_problem(plan.slices(), written, sample=True)
    if problem is not None:
        raise VerifyError(f"output: {problem}")


def check_gguf_slices(plan, targets: list[Path]) -> None:
    """Reopen every written part and check its tensors, sampled."""
    from surgery.formats.gguf import read_gguf

    try:
        written = {t.name: t for target in targets for t in read_gguf(target).tensors}
    except CheckpointError as e:
        raise VerifyError(f"output {e}") from e
    problem = slice_problem(plan.slices(), written, sample=True)
    if problem is not None:
        raise VerifyError(f"output: {problem}")


def verify_files(plan, out: Path, tokenizer: TokenizerFiles) -> list[str]:
    """A trim's checks of the files beside the shards (configs and tokenizer): raise VerifyError on the first
    disagreement; return the checks that passed. `tokenizer` is the source's, as the plan was made from it."""
    return [_check_config(plan, out), *_check_tokenizer(plan, out, tokenizer), _check_config_ids(plan, out, tokenizer)]


def verify_shards(plan, out: Path) -> list[str]:
    """A trim's checks of the written shards (reopened, shapes, sampled rows and copies)."""
    return [_check_shards(plan, out)]


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
    rng = random.Random(0)  # not numpy.random: its import costs a first run 15 to 50 ms of disk reads
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
                sample = sample_rows(rng, len(rows))
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
