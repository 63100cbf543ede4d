"""The command line: parses options, runs inspect -> plan -> execute -> verify, and speaks to the user.

Library code raises SurgeryError; only this module prints, and it maps errors to exit codes (errors.py).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
from pathlib import Path

import click

from surgery import __version__, api
from surgery.cli.progress import CorpusMeter, progress_bar
from surgery.errors import SurgeryError, VerifyError

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
    """Checkpoint surgery on raw tensors (safetensors folders, GGUF files): trim the vocabulary, drop layers, prune.

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
    job = api.prepare_trim(ckpt, keep_path, output, pad_to_multiple_of=pad_to_multiple_of,
                           vocab_tensors=vocab_tensors, not_vocab_tensors=not_vocab_tensors,
                           drop_reserved=drop_reserved, link_unchanged=link_unchanged, force=force,
                           check_output=not dry_run)
    _run_job(job, dry_run, as_json, quiet)


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
    report, job = api.inspect(ckpt, keep_path, vocab_tensors=vocab_tensors, not_vocab_tensors=not_vocab_tensors)
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    from surgery.reports.inspection import render

    click.echo(render(report))
    if job is not None:
        click.echo("plan:\n" + "\n".join("  " + line for line in job.describe().splitlines()[1:]))


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
    --corpus, lines whose source ids are all kept must encode to the mapped ids. A drop-layers or prune output
    folder is proved by replaying its record on CKPT: every kept row and column equal to its source slice, configs
    equal to the replayed ones. Exits 3 on any failure.

    \b
    Example:
        surgery verify ckpt/ ckpt-small/ --corpus held-out.txt
        surgery verify model.gguf model-fr.gguf
        surgery verify ckpt/ ckpt-pruned/
    """
    findings = api.verify(ckpt, out, corpora, max_docs, vocab_tensors=vocab_tensors,
                          not_vocab_tensors=not_vocab_tensors).findings
    if as_json:
        from surgery.reports.comparison import findings_json

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
    job = api.prepare_drop_layers(ckpt, output, drop=drop, keep_layers=keep_layers, tail=tail, importance=importance,
                                  num_layers=num_layers, force=force, check_output=not dry_run)
    _run_job(job, dry_run, as_json, quiet, src=ckpt)


@cli.command()
@click.argument("ckpt", type=click.Path(path_type=Path))
@click.option("--importance", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="An importance file (surgery-importance/1), e.g. from `surgery importance`.")
@click.option("--intermediate-size", type=click.IntRange(min=1), help="MLP neurons to keep in every layer.")
@click.option("--num-attention-heads", type=click.IntRange(min=1),
              help="Query heads to keep in every layer (a multiple of the key/value heads).")
@click.option("--hidden-size", type=click.IntRange(min=1), help="Hidden channels to keep (changes outputs).")
@click.option("--num-experts", type=click.IntRange(min=1), help="Experts to keep in every MoE layer.")
@click.option("--moe-intermediate-size", type=click.IntRange(min=1), help="Neurons to keep in every expert.")
@click.option("--shared-expert-intermediate-size", type=click.IntRange(min=1),
              help="Neurons to keep in every shared expert (Qwen2-MoE).")
@click.option("-o", "--output", type=click.Path(path_type=Path),
              help="Output folder (a .gguf file for a GGUF source). Default: CKPT-pruned.")
@click.option("--dry-run", is_flag=True, help="Print the plan and write nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document to stdout (the plan or the result).")
@click.option("--force", is_flag=True, help="Replace an existing output.")
@common_options
@speaks_errors
def prune(ckpt: Path, importance: Path, intermediate_size: int | None, num_attention_heads: int | None,
          hidden_size: int | None, num_experts: int | None, moe_intermediate_size: int | None,
          shared_expert_intermediate_size: int | None, output: Path | None, dry_run: bool, as_json: bool,
          force: bool, quiet: bool) -> None:
    """Width pruning (Minitron): keep the most important MLP neurons, heads, hidden channels or experts.

    Rows and columns of the known tensors are cut as bytes (any dtype); the config gets the new sizes and an
    explicit head_dim. MLP and head pruning keep the model's function on the kept units; hidden pruning
    changes outputs and needs healing.

    \b
    Example:
        surgery prune ckpt/ --importance imp.json --intermediate-size 9216 -o ckpt-w/
        surgery prune ckpt/ --importance imp.json --num-attention-heads 24 --hidden-size 3072 --dry-run
    """
    job = api.prepare_prune(ckpt, importance, output, intermediate_size=intermediate_size,
                            num_attention_heads=num_attention_heads, hidden_size=hidden_size,
                            num_experts=num_experts, moe_intermediate_size=moe_intermediate_size,
                            shared_expert_intermediate_size=shared_expert_intermediate_size, force=force,
                            check_output=not dry_run)
    _run_job(job, dry_run, as_json, quiet, src=ckpt)


@cli.command()
@click.argument("ckpt", type=click.Path(path_type=Path, file_okay=False, exists=True))
@click.option("--corpus", "corpora", multiple=True, required=True, metavar="PATH[:WEIGHT[:MAX_DOCS]]",
              help="Calibration text: plain text, JSON Lines, .gz, a folder, or - for stdin.")
@click.option("--max-docs", type=click.IntRange(min=1), help="Read at most this many documents per corpus.")
@click.option("--field", default="text", show_default=True, help="JSON Lines field holding the text.")
@click.option("--whole-files", is_flag=True, help="Treat each plain-text file as one document, not one per line.")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True,
              help="Documents per forward pass.")
@click.option("--max-length", type=click.IntRange(min=1), default=512, show_default=True,
              help="Tokens per document at most.")
@click.option("--device", default="cpu", show_default=True,
              help="torch device, e.g. cuda:0; 'auto' spreads a model too big for one device over all (a device map).")
@click.option("-o", "--output", type=click.Path(path_type=Path, dir_okay=False), required=True,
              help="Where to write the importance file (surgery-importance/1).")
@common_options
@speaks_errors
def importance(ckpt: Path, corpora: tuple[str, ...], max_docs: int | None, field: str, whole_files: bool,
               batch_size: int, max_length: int, device: str, output: Path, quiet: bool) -> None:
    """Score layers, MLP neurons, heads and hidden channels on a calibration corpus (Minitron's rules).

    Needs torch and transformers: pip install 'surgery[torch]'. The file feeds `prune`,
    `drop-layers --importance` and `factor --scaling`. Under `accelerate launch` / torchrun the batches are split
    over the processes and the sums added (rank 0 writes the file).

    \b
    Example:
        surgery importance ckpt/ --corpus calib.jsonl --max-docs 1024 -o imp.json
        surgery prune ckpt/ --importance imp.json --intermediate-size 9216 -o ckpt-w/
    """
    main_process = os.environ.get("RANK", "0") == "0"
    meter = CorpusMeter(not quiet and sys.stderr.isatty() and main_process)
    scores = api.importance(ckpt, corpora, output if main_process else None, max_docs=max_docs, field=field, whole_files=whole_files,
                            batch_size=batch_size, max_length=max_length, device=device, progress=meter)
    meter.done()
    if not quiet and main_process:
        click.echo(f"wrote {output}: {scores['documents']:,} documents, {scores['tokens']:,} tokens", err=True)


def _run_job(job: api.Job, dry_run: bool, as_json: bool, quiet: bool, src: Path | None = None) -> None:
    """The plan (dry run), or the summary, the progress bar while writing, and the result."""
    if dry_run:
        click.echo(json.dumps(job.to_json(), indent=2) if as_json else job.describe())
        return
    if not quiet:
        click.echo(job.describe(), err=True)
    total = job.output_nbytes
    with progress_bar(total, quiet) as progress:
        result = job.run(progress)
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
    if not quiet:
        click.echo(f"wrote {', '.join(str(p) for p in result.output)} ({total:,} tensor bytes in "
                   f"{result.seconds:.1f}s)", err=True)
        if src is not None:  # a lossy cut: say how to measure what it cost
            click.echo(f"next: measure what the cut cost with `surgery compare {src} {result.output[0]} --corpus "
                       "HELDOUT.txt`", err=True)


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
    meter = CorpusMeter(not quiet and sys.stderr.isatty())
    request = api.keep(
        ckpt, corpora, field=field, whole_files=whole_files, max_docs=max_docs, max_bytes=max_bytes, size=size,
        coverage=coverage, min_count=min_count, top_k=top_k, keep_ids=keep_ids, keep_tokens=keep_tokens,
        pad_to_multiple_of=pad_to_multiple_of, vocab_tensors=vocab_tensors, not_vocab_tensors=not_vocab_tensors,
        drop_reserved=drop_reserved, tokenizer_dir=tokenizer_dir, progress=meter)
    meter.done()
    output.write_text(request.ids_text())
    if as_json:
        click.echo(json.dumps(request.figures, indent=2))
    if stats or not quiet:
        click.echo(request.describe(verbose=stats), err=True)


from surgery.cli import compare_command  # noqa: E402,F401  (registers `surgery compare`)
from surgery.cli import factor_command  # noqa: E402,F401  (registers `surgery factor` and `surgery unfactor`)
from surgery.cli import distill_command  # noqa: E402,F401  (registers `surgery distill`)


def main() -> None:
    cli(prog_name="surgery")
