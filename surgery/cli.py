"""The command line: parses options, runs inspect -> plan -> execute -> verify, and speaks to the user.

Library code raises SurgeryError; only this module prints, and it maps errors to exit codes (errors.py).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import secrets
import shutil
import sys
import threading
import time
from pathlib import Path

import click

from surgery import __version__
from surgery.checkpoint import Checkpoint
from surgery.comparison import compare_checkpoints, findings_json
from surgery.corpus import CorpusSpec
from surgery.errors import CheckpointError, InputError, SurgeryError, VerifyError
from surgery.execute import apply_plan
from surgery.gguf_trim import (
    check_gguf_output_path,
    check_keep_range,
    default_output,
    open_gguf,
    plan_gguf_trim,
    write_gguf_verified,
)
from surgery.gguf_reports import compare_gguf, inspect_gguf
from surgery.gguf_layers import gguf_block_count, plan_gguf_drop_layers
from surgery.inspection import inspect_checkpoint, render
from surgery.layers import check_layers_output, choose_kept_layers, count_layers, plan_drop_layers
from surgery.keep import KeepList
from surgery.keep_mining import mine_keep_list
from surgery.plan import plan_trim
from surgery.tokenizer_files import TokenizerFiles
from surgery.staging import partial_path, remove_stale_partials
from surgery.verify import verify
from surgery.vocab_tensors import find_vocab_tensors

LOG = logging.getLogger("surgery")


class UserFacingError(click.ClickException):
    """A SurgeryError as click shows it: `Error: ...` and an optional `Hint: ...` on stderr."""

    def __init__(self, message: str, hint: str | None, exit_code: int) -> None:
        super().__init__(message)
        self.hint = hint
        self.exit_code = exit_code

    def show(self, file=None) -> None:
        file = file or sys.stderr
        click.echo(f"Error: {self.format_message()}", file=file)
        if self.hint:
            click.echo(f"Hint: {self.hint}", file=file)


def speaks_errors(command):
    """Turn library errors into one clear line (no traceback unless --debug)."""

    @functools.wraps(command)
    def wrapper(*args, debug: bool = False, quiet: bool = False, **kwargs):
        logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(message)s",
                            stream=sys.stderr, force=True)
        try:
            return command(*args, **kwargs, quiet=quiet)
        except SurgeryError as e:
            if debug:
                raise
            raise UserFacingError(str(e), e.hint, e.exit_code) from e
        except OSError as e:
            if debug:
                raise
            where = f"{e.filename}: " if e.filename else ""
            raise UserFacingError(f"{where}{e.strerror or e}", None, 1) from e

    return wrapper


def vocab_tensor_options(command):
    """--vocab-tensor and --not-vocab-tensor: settle which tensors have a vocabulary axis."""
    command = click.option(
        "--not-vocab-tensor", "not_vocab_tensors", multiple=True, metavar="NAME|GLOB",
        help="Declare tensors (names or glob patterns) that have no vocabulary axis although one of their sizes "
             "equals the vocabulary's: they are copied unchanged.")(command)
    return click.option(
        "--vocab-tensor", "vocab_tensors", multiple=True, metavar="NAME[:AXIS]",
        help="Also trim this tensor along AXIS (default 0); when no embedding is found by name, the first one "
             "named is the embedding.")(command)


def common_options(command):
    command = click.option("--debug", is_flag=True, help="Show a traceback on errors.")(command)
    return click.option("--quiet", "-q", is_flag=True, help="No progress or summary on stderr.")(command)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="surgery")
def cli() -> None:
    """Checkpoint surgery on raw safetensors tensors: trim a model's vocabulary to the tokens you use.

    \b
    Example:
        surgery trim ckpt/ --keep ids.txt -o ckpt-small/
    """


@cli.command()
@click.argument("ckpt", type=click.Path(path_type=Path))
@click.option("--keep", "keep_path", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="File of token ids to keep: integers, one or more per line, '#' comments.")
@click.option("-o", "--output", type=click.Path(path_type=Path),
              help="Output folder (a .gguf file for a GGUF source). Default: CKPT-trimmed next to CKPT.")
@click.option("--dry-run", is_flag=True, help="Print the plan and write nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document to stdout (the plan or the result).")
@click.option("--force", is_flag=True, help="Replace an existing output folder.")
@click.option("--pad-to-multiple-of", type=click.IntRange(min=1), default=None,
              help="Round the new vocabulary up to a multiple of N rows. Padding rows copy the pad (else unk, "
                   "else first kept) token's row, so they tie with it and are never the argmax.")
@vocab_tensor_options
@click.option("--drop-reserved", is_flag=True,
              help="Do not keep reserved placeholder tokens (<unusedN>, <|reserved_special_token_N|>, <SPECIAL_N> "
                   "...) that no chat template, config or post-processor names.")
@click.option("--link-unchanged", is_flag=True,
              help="Hardlink shards that hold no vocabulary tensor instead of copying them. The output then "
                   "shares those files with CKPT: editing one in place edits both.")
@common_options
@speaks_errors
def trim(ckpt: Path, keep_path: Path, output: Path | None, dry_run: bool, as_json: bool, force: bool,
         pad_to_multiple_of: int | None, vocab_tensors: tuple[str, ...], not_vocab_tensors: tuple[str, ...],
         drop_reserved: bool, link_unchanged: bool, quiet: bool) -> None:
    """Drop the vocabulary rows not listed in KEEP, and rewrite tokenizer and config to match.

    Kept ids are renumbered 0..K-1 in their original order. The tokenizer's needs are kept too (special
    tokens, byte alphabet or byte-fallback tokens, BPE merge intermediates, Unigram characters), and each
    addition is reported. OUT gets surgery_trim.json, the old id of every new id.

    CKPT is a Hugging Face folder or a GGUF file (the first part of a split one); a GGUF keeps its split
    layout and gets the trim record in its metadata (`surgery.trim_record`).

    \b
    Example:
        surgery trim ckpt/ --keep ids.txt -o ckpt-small/
        surgery trim ckpt/ --keep ids.txt --dry-run --json
        surgery trim model-Q4_K_M.gguf --keep ids.txt -o model-fr-Q4_K_M.gguf
    """
    if is_gguf(ckpt):
        return _trim_gguf(ckpt, keep_path, output, dry_run, as_json, force, pad_to_multiple_of, vocab_tensors,
                          not_vocab_tensors, drop_reserved, quiet)
    out = output if output is not None else ckpt.parent / f"{ckpt.resolve().name}-trimmed"
    if not dry_run:
        _check_output(ckpt, out, force)  # before any work: a refusal should not wait for the plan
    checkpoint = Checkpoint.open(ckpt)
    vocab = find_vocab_tensors(checkpoint, vocab_tensors, not_vocab_tensors)
    tokenizer = TokenizerFiles.load(ckpt)
    keep = KeepList.load(keep_path, max(vocab.n_rows, tokenizer.size()))
    plan = plan_trim(checkpoint, vocab, tokenizer, keep, pad_to_multiple_of=pad_to_multiple_of,
                     drop_reserved=drop_reserved)
    if dry_run:
        click.echo(json.dumps(plan.to_json(), indent=2) if as_json else plan.describe())
        return
    if not quiet:
        click.echo(plan.describe(), err=True)
    started = time.monotonic()
    total = plan.totals()["bytes_after"]
    with _progress_bar(total, quiet) as progress:
        tmp = _write_verified(plan, lambda tmp: LOG.debug("verified: %s", verify(plan, tmp, tokenizer)), out,
                              link_unchanged, progress)
    _move_into_place(tmp, out)
    elapsed = time.monotonic() - started
    if as_json:
        click.echo(json.dumps({**_result(plan, out), "seconds": round(elapsed, 3)}, indent=2))
    if not quiet:
        click.echo(f"wrote {out} ({total:,} tensor bytes in {elapsed:.1f}s)", err=True)


@cli.command()
@click.argument("ckpt", type=click.Path(path_type=Path))
@click.option("--keep", "keep_path", type=click.Path(path_type=Path, dir_okay=False),
              help="Also show the trim plan for this keep list (as `trim --dry-run`).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document to stdout (schema in README).")
@vocab_tensor_options
@common_options
@speaks_errors
def inspect(ckpt: Path, keep_path: Path | None, as_json: bool, vocab_tensors: tuple[str, ...],
            not_vocab_tensors: tuple[str, ...], quiet: bool) -> None:
    """Show shards, parameters, vocabulary tensors, tokenizer and config ids, reading no tensor data.

    \b
    Example:
        surgery inspect ckpt/
        surgery inspect ckpt/ --keep ids.txt --json
        surgery inspect model-Q4_K_M.gguf
    """
    if is_gguf(ckpt):
        parts = open_gguf(ckpt)
        report = inspect_gguf(parts, vocab_tensors, not_vocab_tensors)
        plan = plan_gguf_trim(parts, check_keep_range(keep_path, parts), vocab_tensors=vocab_tensors,
                              not_vocab_tensors=not_vocab_tensors) if keep_path is not None else None
    else:
        report, plan = _inspect_folder(ckpt, keep_path, vocab_tensors, not_vocab_tensors)
    if plan is not None:
        report["plan"] = plan.to_json()
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(render(report))
    if plan is not None:
        click.echo("plan:\n" + "\n".join("  " + line for line in plan.describe().splitlines()[1:]))


def _inspect_folder(ckpt: Path, keep_path: Path | None, vocab_tensors: tuple[str, ...],
                    not_vocab_tensors: tuple[str, ...]):
    checkpoint = Checkpoint.open(ckpt)
    vocab = find_vocab_tensors(checkpoint, vocab_tensors, not_vocab_tensors)
    try:
        tokenizer = TokenizerFiles.load(ckpt)
    except CheckpointError as e:
        if keep_path is not None:  # a plan needs the tokenizer
            raise
        tokenizer = e
    report = inspect_checkpoint(checkpoint, vocab, tokenizer)
    plan = None
    if keep_path is not None:
        plan = plan_trim(checkpoint, vocab, tokenizer, KeepList.load(keep_path, max(vocab.n_rows, tokenizer.size())))
    return report, plan


@cli.command("verify")
@click.argument("ckpt", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--corpus", "corpora", multiple=True, metavar="PATH",
              help="Text (a document per line), JSON Lines (field 'text'), .gz, a folder, or - for stdin.")
@click.option("--max-docs", type=click.IntRange(min=1), default=None,
              help="Read at most this many documents per corpus.")
@click.option("--json", "as_json", is_flag=True, help="Print the findings as one JSON document to stdout.")
@vocab_tensor_options
@common_options
@speaks_errors
def verify_command(ckpt: Path, out: Path, corpora: tuple[str, ...], max_docs: int | None, as_json: bool,
                   vocab_tensors: tuple[str, ...], not_vocab_tensors: tuple[str, ...], quiet: bool) -> None:
    """Prove OUT against its source CKPT: rows, tensors, config ids, tokenizer, and optionally text.

    Every kept row must equal its source row byte for byte, every other tensor must be byte-identical,
    config ids must name the same tokens, the tokenizer must be dense and in source order, and with
    --corpus, lines whose source ids are all kept must encode to the mapped ids. Exits 3 on any failure.

    \b
    Example:
        surgery verify ckpt/ ckpt-small/ --corpus held-out.txt
        surgery verify model.gguf model-fr.gguf
    """
    if is_gguf(ckpt):
        findings = compare_gguf(ckpt, out)
    else:
        findings = compare_checkpoints(ckpt, out, tuple(CorpusSpec.parse(c) for c in corpora), max_docs,
                                       vocab_tensors=vocab_tensors, not_vocab_tensors=not_vocab_tensors)
    if as_json:
        click.echo(findings_json(findings))
    for finding in findings:
        if not quiet or not finding.ok:
            click.echo(f"{'ok  ' if finding.ok else 'FAIL'} {finding.check}: {finding.detail}", err=True)
            for example in finding.examples:
                click.echo(f"       {example}", err=True)
    failed = [f.check for f in findings if not f.ok]
    if failed:
        raise VerifyError(f"{out}: {len(failed)} check(s) failed: {', '.join(failed)}")


@cli.command("drop-layers")
@click.argument("ckpt", type=click.Path(path_type=Path))
@click.option("--drop", help="Decoder layers to drop: 0-based indices and inclusive ranges, e.g. 1,4-5.")
@click.option("--keep-layers", help="Decoder layers to keep (the complement of --drop).")
@click.option("--tail", type=click.IntRange(min=1), help="Drop the N layers before the last one (the last is kept).")
@click.option("--importance", type=click.Path(path_type=Path, dir_okay=False),
              help="An importance file (surgery-importance/1): keep the --num-layers layers of highest \"layers\" score.")
@click.option("--num-layers", type=click.IntRange(min=1), help="With --importance: how many layers to keep.")
@click.option("-o", "--output", type=click.Path(path_type=Path),
              help="Output folder (a .gguf file for a GGUF source). Default: CKPT-Nlayers next to CKPT.")
@click.option("--dry-run", is_flag=True, help="Print the plan and write nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document to stdout (the plan or the result).")
@click.option("--force", is_flag=True, help="Replace an existing output.")
@common_options
@speaks_errors
def drop_layers(ckpt: Path, drop: str | None, keep_layers: str | None, tail: int | None, importance: Path | None,
                num_layers: int | None, output: Path | None, dry_run: bool, as_json: bool, force: bool,
                quiet: bool) -> None:
    """Remove whole decoder layers (depth pruning): tensors renamed to their rank, configs made consistent.

    Every kept tensor is copied byte for byte under its new name; num_hidden_layers, layer_types (written out
    from each kept layer's original type), max_window_layers, mlp_only_layers, first_k_dense_replace and the
    MTP layer follow. CKPT is a Hugging Face folder or a GGUF file.

    \b
    Example:
        surgery drop-layers ckpt/ --drop 20-27 -o ckpt-20l/
        surgery drop-layers ckpt/ --tail 8 --dry-run
        surgery drop-layers model.gguf --keep-layers 0-15,31 -o model-17l.gguf
    """
    choice = dict(drop=drop, keep_layers=keep_layers, tail=tail, importance=importance, num_layers=num_layers)
    if is_gguf(ckpt):
        return _drop_layers_gguf(ckpt, choice, output, dry_run, as_json, force, quiet)
    checkpoint = Checkpoint.open(ckpt)
    kept = choose_kept_layers(count_layers(checkpoint), **choice)
    out = output if output is not None else ckpt.parent / f"{ckpt.resolve().name}-{len(kept)}layers"
    if not dry_run:
        _check_output(ckpt, out, force)
    plan = plan_drop_layers(checkpoint, kept)
    if dry_run:
        click.echo(json.dumps(plan.to_json(), indent=2) if as_json else plan.describe())
        return
    if not quiet:
        click.echo(plan.describe(), err=True)
    started = time.monotonic()
    total = plan.totals()["bytes_after"]
    with _progress_bar(total, quiet) as progress:
        tmp = _write_verified(plan, lambda tmp: check_layers_output(plan, tmp), out, False, progress)
    _move_into_place(tmp, out)
    elapsed = time.monotonic() - started
    if as_json:
        click.echo(json.dumps({"output": str(out), **plan.to_json(), "seconds": round(elapsed, 3)}, indent=2))
    if not quiet:
        click.echo(f"wrote {out} ({total:,} tensor bytes in {elapsed:.1f}s)", err=True)


def _drop_layers_gguf(src: Path, choice: dict, output: Path | None, dry_run: bool, as_json: bool, force: bool,
                      quiet: bool) -> None:
    parts = open_gguf(src)
    kept = choose_kept_layers(gguf_block_count(parts[0]), **choice)
    out = output if output is not None else src.with_name(f"{src.name.removesuffix('.gguf')}-{len(kept)}layers.gguf")
    if not dry_run:
        check_gguf_output_path(src, out, force)
    plan = plan_gguf_drop_layers(parts, kept)
    if dry_run:
        click.echo(json.dumps(plan.to_json(), indent=2) if as_json else plan.describe())
        return
    if not quiet:
        click.echo(plan.describe(), err=True)
    started = time.monotonic()
    with _progress_bar(plan.totals()["bytes_after"], quiet) as progress:
        written = write_gguf_verified(plan, out, progress)
    if as_json:
        click.echo(json.dumps({"output": [str(p) for p in written], **plan.to_json(),
                               "seconds": round(time.monotonic() - started, 3)}, indent=2))
    if not quiet:
        click.echo(f"wrote {', '.join(str(p) for p in written)}", err=True)


@cli.command()
@click.argument("ckpt", type=click.Path(path_type=Path))
@click.option("--corpus", "corpora", multiple=True, required=True, metavar="PATH[:WEIGHT[:MAX_DOCS]]",
              help="Text (a document per line), JSON Lines, .gz of either, a folder, or - for stdin. Repeat for "
                   "several corpora; WEIGHT balances them (each counts by its share of tokens, times WEIGHT).")
@click.option("-o", "--output", type=click.Path(path_type=Path, dir_okay=False), required=True,
              help="Where to write the id list (one id a line, '#' header).")
@click.option("--field", default="text", show_default=True, help="JSON Lines field holding the text.")
@click.option("--whole-files", is_flag=True, help="Treat each plain-text file as one document, not one per line.")
@click.option("--max-docs", type=click.IntRange(min=1), help="Read at most this many documents per corpus.")
@click.option("--max-bytes", type=click.IntRange(min=1), help="Read at most this many bytes of text per corpus.")
@click.option("--size", type=click.IntRange(min=1),
              help="Final vocabulary rows after trim, counting every id trim adds.")
@click.option("--coverage", type=click.FloatRange(0, 1, min_open=True),
              help="Smallest set covering this fraction of corpus tokens (e.g. 0.999).")
@click.option("--min-count", type=click.IntRange(min=1), help="Every id seen at least this many times.")
@click.option("--top-k", type=click.IntRange(min=1), help="The K most frequent ids.")
@click.option("--keep-ids", type=click.Path(path_type=Path, dir_okay=False), help="Ids that must stay (ids.txt form).")
@click.option("--keep-tokens", type=click.Path(path_type=Path, dir_okay=False),
              help="Token strings that must stay, one per line, exactly as in the vocabulary.")
@click.option("--pad-to-multiple-of", type=click.IntRange(min=1),
              help="Grow the selection until the final size is a multiple of N (no padding rows needed).")
@vocab_tensor_options
@click.option("--drop-reserved", is_flag=True,
              help="Do not keep reserved placeholder tokens that nothing names (see trim --help).")
@click.option("--tokenizer", "tokenizer_dir", type=click.Path(path_type=Path, file_okay=False),
              help="For a GGUF file: the Hugging Face tokenizer folder of the same model, to encode the corpora "
                   "(checked token by token against the GGUF's); not needed when the GGUF embeds tokenizer.json.")
@click.option("--stats", is_flag=True, help="Print the figures (coverage curve, savings) to stderr.")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as one JSON document to stdout.")
@common_options
@speaks_errors
def keep(ckpt: Path, corpora: tuple[str, ...], output: Path, field: str, whole_files: bool, max_docs: int | None,
         max_bytes: int | None, size: int | None, coverage: float | None, min_count: int | None, top_k: int | None,
         keep_ids: Path | None, keep_tokens: Path | None, pad_to_multiple_of: int | None,
         vocab_tensors: tuple[str, ...], not_vocab_tensors: tuple[str, ...], drop_reserved: bool,
         tokenizer_dir: Path | None, stats: bool, as_json: bool, quiet: bool) -> None:
    """Mine corpora with the checkpoint's own tokenizer and write the ids that `trim --keep` reads.

    Choose exactly one of --size, --coverage, --min-count, --top-k. The list written is the final kept
    set: trim adds nothing to it, and with --size it has exactly that many ids.

    \b
    Example:
        surgery keep ckpt/ --corpus fr.jsonl.gz --corpus en.txt:0.5 --size 32000 -o ids.txt
        surgery trim ckpt/ --keep ids.txt -o ckpt-fr/
        surgery keep model-Q4_K_M.gguf --tokenizer hf-model/ --corpus fr.txt --size 32000 -o ids.txt
    """
    meter = _CorpusMeter(not quiet and sys.stderr.isatty())
    request = mine_keep_list(
        ckpt, [CorpusSpec.parse(c) for c in corpora], field=field, whole_files=whole_files, max_docs=max_docs,
        max_bytes=max_bytes, size=size, coverage=coverage, min_count=min_count, top_k=top_k, keep_ids=keep_ids,
        keep_tokens=keep_tokens, pad_to_multiple_of=pad_to_multiple_of, vocab_tensors=vocab_tensors,
        not_vocab_tensors=not_vocab_tensors, drop_reserved=drop_reserved, tokenizer_dir=tokenizer_dir,
        progress=meter)
    meter.done()
    output.write_text(request.ids_text())
    if as_json:
        click.echo(json.dumps(request.figures, indent=2))
    if stats or not quiet:
        click.echo(request.describe(verbose=stats), err=True)


def is_gguf(path: Path) -> bool:
    return path.suffix == ".gguf" and not path.is_dir()


def _trim_gguf(src: Path, keep_path: Path, output: Path | None, dry_run: bool, as_json: bool, force: bool,
               pad_to_multiple_of: int | None, vocab_tensors: tuple[str, ...], not_vocab_tensors: tuple[str, ...],
               drop_reserved: bool, quiet: bool) -> None:
    out = output if output is not None else default_output(src)
    if not dry_run:
        check_gguf_output_path(src, out, force)
    parts = open_gguf(src)
    plan = plan_gguf_trim(parts, check_keep_range(keep_path, parts), pad_to_multiple_of=pad_to_multiple_of,
                          drop_reserved=drop_reserved, vocab_tensors=vocab_tensors, not_vocab_tensors=not_vocab_tensors)
    if dry_run:
        click.echo(json.dumps(plan.to_json(), indent=2) if as_json else plan.describe())
        return
    if not quiet:
        click.echo(plan.describe(), err=True)
    started = time.monotonic()
    total = plan.totals()["bytes_after"]
    with _progress_bar(total, quiet) as progress:
        written = write_gguf_verified(plan, out, progress)
    elapsed = time.monotonic() - started
    if as_json:
        click.echo(json.dumps({"output": [str(p) for p in written], "old_vocab_rows": plan.n_rows,
                               "new_vocab_rows": plan.new_rows, "kept": len(plan.kept_ids),
                               "added_by_rule": plan.addition_counts(), **plan.totals(),
                               "tensors": {a.name: list(reversed(a.new_ne)) for a in plan.actions if a.role},
                               "seconds": round(elapsed, 3)}, indent=2))
    if not quiet:
        click.echo(f"wrote {', '.join(str(p) for p in written)} ({total:,} tensor bytes in {elapsed:.1f}s)", err=True)


def _write_verified(plan, check, out: Path, link_unchanged: bool, progress) -> Path:
    """Write into a sibling temporary folder and check it (`check(tmp)`); on any failure remove it and re-raise."""
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(out)
    tmp = partial_path(out)
    try:
        apply_plan(plan, tmp, link_unchanged=link_unchanged, progress=progress)
        check(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return tmp


def _check_output(ckpt: Path, out: Path, force: bool) -> None:
    src, dst = ckpt.resolve(), out.resolve()
    if dst == src or src in dst.parents:
        raise InputError(f"{out}: output must not be CKPT or inside it (CKPT is never written to)")
    if dst in src.parents:
        raise InputError(f"{out}: output must not contain CKPT")
    if out.exists() and not force:
        raise InputError(f"{out}: already exists", hint="pass --force to replace it")


def _move_into_place(tmp: Path, out: Path) -> None:
    """Rename the verified folder to OUT; an old OUT (with --force) is moved aside first, then removed."""
    if out.exists():
        aside = out.parent / f".{out.name}.replaced-{secrets.token_hex(4)}"
        out.rename(aside)
        tmp.rename(out)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        tmp.rename(out)


def _result(plan, out: Path) -> dict:
    return {
        "output": str(out),
        "old_vocab_rows": plan.n_rows,
        "new_vocab_rows": plan.new_rows,
        "kept": len(plan.kept_ids),
        "added_by_rule": plan.addition_counts(),
        **plan.totals(),
        "tensors": {a.name: list(a.new_shape) for a in plan.tensor_actions() if a.action == "gather"},
    }


class _progress_bar:
    """Bytes written and rate on stderr, only when stderr is a terminal and not --quiet."""

    def __init__(self, total: int, quiet: bool) -> None:
        self.total, self.done, self.last = total, 0, 0.0
        self.enabled = not quiet and sys.stderr.isatty()
        self.started = time.monotonic()
        self.lock = threading.Lock()  # shards are written by two threads

    def __enter__(self):
        return self.update

    def update(self, nbytes: int) -> None:
        with self.lock:
            self.done += nbytes
            self._draw()

    def _draw(self) -> None:
        now = time.monotonic()
        if self.enabled and (now - self.last > 0.2 or self.done >= self.total):
            self.last = now
            rate = self.done / max(now - self.started, 1e-9) / 2**20
            share = 100 * self.done / self.total if self.total else 100
            sys.stderr.write(f"\r{self.done / 2**30:6.2f} / {self.total / 2**30:.2f} GiB  {share:5.1f}%  {rate:7.1f} MiB/s")
            sys.stderr.flush()

    def __exit__(self, *exc) -> None:
        if self.enabled:
            sys.stderr.write("\n")


class _CorpusMeter:
    """Documents and MB/s on stderr when stderr is a terminal."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.docs = self.nbytes = 0
        self.started = self.last = time.monotonic()

    def __call__(self, docs: int, nbytes: int) -> None:
        self.docs += docs
        self.nbytes += nbytes
        now = time.monotonic()
        if self.enabled and now - self.last > 0.2:
            self.last = now
            rate = self.nbytes / max(now - self.started, 1e-9) / 2**20
            sys.stderr.write(f"\r{self.docs:,} documents, {self.nbytes / 2**20:,.1f} MiB, {rate:.1f} MiB/s")
            sys.stderr.flush()

    def done(self) -> None:
        if self.enabled and self.docs:
            sys.stderr.write("\n")


def main() -> None:
    cli(prog_name="surgery")
