"""`surgery compare`: the statistics of a lossy cut, as a table for people or a JSON document for machines."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from surgery import api
from surgery.cli import cli, common_options, speaks_errors


@cli.command()
@click.argument("src", type=click.Path(path_type=Path, exists=True))
@click.argument("outs", nargs=-1, required=True, type=click.Path(path_type=Path, exists=True))
@click.option("--corpus", "corpora", multiple=True, required=True, metavar="PATH[:WEIGHT[:MAX_DOCS]]",
              help="Held-out text read as `surgery keep` reads it: a document is a line with a non-blank character.")
@click.option("--max-docs", type=click.IntRange(min=1), default=256, show_default=True,
              help="Documents read from the start of EACH corpus.")
@click.option("--max-length", type=click.IntRange(min=2), default=512, show_default=True,
              help="Each document is cut to its first L token ids.")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True,
              help="Documents per forward pass (folders).")
@click.option("--device", default="cpu", show_default=True, help="torch device for folders, e.g. cuda:0; 'auto': a device map over every device.")
@click.option("--json", "as_json", is_flag=True, help="Print the surgery-compare/1 document on stdout.")
@common_options
@speaks_errors
def compare(src: Path, outs: tuple[Path, ...], corpora: tuple[str, ...], max_docs: int, max_length: int,
            batch_size: int, device: str, as_json: bool, quiet: bool) -> None:
    """Measure what a cut cost: KL(SRC || OUT) per token, top-1 agreement and both perplexities.

    SRC and each OUT are Hugging Face folders (the torch extra) or GGUF files (llama-cpp-python); several OUTs
    are compared side by side against one pass of SRC. A trim of SRC is compared over its kept ids.

    \b
    Example:
        surgery compare ckpt/ ckpt-24layers/ ckpt-pruned/ --corpus heldout.txt --max-docs 64
        surgery compare model-F16.gguf model-Q4_K_M.gguf --corpus heldout.txt --json
    """
    main_process = os.environ.get("RANK", "0") == "0"  # under a launcher, rank 0 speaks
    show = not quiet and sys.stderr.isatty() and main_process

    def progress(done: int, total: int) -> None:
        if show:
            click.echo(f"\rcompare: {done}/{total} documents", err=True, nl=False)

    report = api.compare(src, list(outs), corpora, max_docs=max_docs, max_length=max_length, batch_size=batch_size,
                         device=device, progress=progress)
    if show:
        click.echo("", err=True)
    if not main_process:
        return
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(render_table(report))


def render_table(report: dict) -> str:
    """One row per OUT, the columns llama-perplexity --kl-divergence prints."""
    header = ("output", "relation", "docs", "positions", "mean KLD", "± stderr", "median", "p99", "max",
              "same top-1", "PPL src", "PPL out")
    rows = [header]
    for entry in report["outputs"]:
        kld = entry["kld"]
        rows.append((entry["path"], entry["relation"], f"{entry['documents']}" + (
            f" (+{entry['skipped_documents']} skipped)" if entry["skipped_documents"] else ""),
            f"{entry['positions']:,}", f"{kld['mean']:.6f}", f"{kld['stderr']:.6f}", f"{kld['median']:.6f}",
            f"{kld['p99']:.6f}", f"{kld['max']:.6f}", f"{100 * entry['top1_agreement']:.2f}%",
            f"{entry['ppl_source']:.4f}", f"{entry['ppl_output']:.4f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
                     for row in rows)
