"""`surgery factor` and `surgery unfactor`: low-rank factors of a folder's linear layers, and back."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from surgery import api
from surgery.cli import _run_job, cli, common_options, speaks_errors


@cli.command()
@click.argument("ckpt", type=click.Path(path_type=Path, exists=True))
@click.option("-o", "--output", type=click.Path(path_type=Path),
              help="Output folder (default: CKPT-factored); with several values, OUTPUT-r0.5, OUTPUT-r0.25, ...")
@click.option("--rank-ratio", metavar="R[,R...]", help="r = round(R * min(m, n)); 1 keeps full rank (exact).")
@click.option("--param-ratio", metavar="P[,P...]", help="r = floor(P * m * n / (m + n)): the factors hold at most P "
              "of each matrix's parameters (SVD-LLM).")
@click.option("--energy", metavar="E[,E...]", help="The smallest r keeping E of the squared singular values "
              "(computes every spectrum first).")
@click.option("--rank-multiple", type=click.IntRange(min=1), default=1, show_default=True,
              help="Round each rank up to a multiple of K (tensor cores like 8, 64 or 128).")
@click.option("--targets", "targets", multiple=True, metavar="GLOB",
              help="Only the candidate modules matching GLOB (fnmatch on names like model.layers.3.mlp.down_proj); "
                   "repeatable.")
@click.option("--scaling", type=click.Path(path_type=Path, dir_okay=False),
              help="An importance file with input statistics (surgery importance): activation-aware factors.")
@click.option("--device", default="cpu", show_default=True, help="torch device for the SVDs, e.g. cuda.")
@click.option("--dry-run", is_flag=True, help="Show ranks and sizes; write nothing (no SVD unless --energy).")
@click.option("--json", "as_json", is_flag=True, help="Print the plan or the result as JSON on stdout.")
@click.option("--force", is_flag=True, help="Replace existing outputs.")
@common_options
@speaks_errors
def factor(ckpt: Path, output: Path | None, rank_ratio: str | None, param_ratio: str | None, energy: str | None,
           rank_multiple: int, targets: tuple[str, ...], scaling: Path | None, device: str, dry_run: bool,
           as_json: bool, force: bool, quiet: bool) -> None:
    """Replace each linear weight W of the decoder layers by two thin factors (truncated SVD; PLRD).

    Writes a folder that loads with AutoModelForCausalLM.from_pretrained(OUT, trust_remote_code=True) and trains;
    `surgery unfactor` turns it back into the plain architecture. A factored CKPT is factored again from its
    factors (progressive). Several values make a family, each matrix decomposed once.

    \b
    Example:
        surgery factor ckpt/ --param-ratio 0.5 -o ckpt-p0.5/
        surgery factor ckpt/ --rank-ratio 0.75,0.5,0.25 --rank-multiple 8 -o family/
        surgery factor ckpt/ --energy 0.9 --scaling imp.json --targets '*.mlp.*' --dry-run --json
    """
    show = not quiet and sys.stderr.isatty()

    def spectra(done: int, total: int) -> None:
        if show:
            click.echo(f"\rfactor: singular values of {done}/{total} targets", err=True, nl=done == total)

    job = api.prepare_factor(ckpt, output, rank_ratio=rank_ratio, param_ratio=param_ratio, energy=energy,
                             rank_multiple=rank_multiple, targets=targets, scaling=scaling, device=device,
                             force=force, spectrum_progress=spectra)
    _run_job(job, dry_run, as_json, quiet, src=ckpt)


@cli.command()
@click.argument("ckpt", type=click.Path(path_type=Path, exists=True))
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Output folder (default: CKPT-dense).")
@click.option("--device", default="cpu", show_default=True, help="torch device for the products, e.g. cuda.")
@click.option("--dry-run", is_flag=True, help="Show what would be written; write nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the plan or the result as JSON on stdout.")
@click.option("--force", is_flag=True, help="Replace an existing output.")
@common_options
@speaks_errors
def unfactor(ckpt: Path, output: Path | None, device: str, dry_run: bool, as_json: bool, force: bool,
             quiet: bool) -> None:
    """Multiply a factored folder's factors back into the plain source architecture (after training).

    \b
    Example:
        surgery unfactor ckpt-p0.5-trained/ -o ckpt-p0.5-dense/
    """
    _run_job(api.prepare_unfactor(ckpt, output, device=device, force=force), dry_run, as_json, quiet)
