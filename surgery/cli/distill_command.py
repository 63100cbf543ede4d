"""`surgery distill`: heal a cut by logit distillation from the model it was cut from."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import click

from surgery import api
from surgery.cli import cli, common_options, speaks_errors
from surgery.errors import SurgeryError

# a launcher stops every process when one exits: the others wait this long, so that rank 0's line gets out first
REFUSAL_GRACE_SECONDS = 2.0


@cli.command()
@click.argument("teacher", type=click.Path(path_type=Path))
@click.argument("student", type=click.Path(path_type=Path))
@click.option("--corpus", "corpora", multiple=True, required=True, metavar="PATH[:WEIGHT[:MAX_DOCS]]",
              help="Training text, read in order as `surgery keep` reads it (a document is a non-blank line).")
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="The distilled student.")
@click.option("--max-steps", type=click.IntRange(min=0), default=100, show_default=True, help="Optimizer steps.")
@click.option("--seq-len", type=int, default=512, show_default=True, help="Tokens per block (L).")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True,
              help="GLOBAL batch: blocks per optimizer step over every process and accumulation step.")
@click.option("--grad-accum", type=click.IntRange(min=1), default=1, show_default=True,
              help="Micro-steps per optimizer step (G); each process takes B / (processes x G) blocks per micro-step.")
@click.option("--lr", type=float, default=1e-4, show_default=True, help="AdamW peak learning rate.")
@click.option("--warmup-steps", type=click.IntRange(min=0), default=0, show_default=True,
              help="Linear warmup, then linear decay to 0 at --max-steps.")
@click.option("--temperature", type=float, default=1.0, show_default=True, help="KL temperature T (loss x T²).")
@click.option("--loss", type=click.Choice(["forward-kl", "reverse-kl"]), default="forward-kl", show_default=True,
              help="KL(teacher || student) (Minitron) or KL(student || teacher).")
@click.option("--lm-loss-weight", type=float, default=0.0, show_default=True,
              help="A: plus A x the student's next-token cross-entropy (0: logit-only KD, Minitron's finding).")
@click.option("--eval-corpus", "eval_corpora", multiple=True, metavar="PATH[:WEIGHT[:MAX_DOCS]]",
              help="Held-out text: KL(teacher || student) at step 0, every --eval-every steps and at the end.")
@click.option("--eval-docs", type=click.IntRange(min=1), default=64, show_default=True,
              help="Documents read from the start of each eval corpus.")
@click.option("--eval-every", type=click.IntRange(min=0), default=0, show_default=True,
              help="Evaluate every N steps (0: step 0 and the last step only).")
@click.option("--save-every", type=click.IntRange(min=0), default=0, show_default=True,
              help="Keep a resumable checkpoint every N steps in a staging folder beside OUTPUT.")
@click.option("--resume", is_flag=True, help="Continue from the latest checkpoint of a run with the same -o.")
@click.option("--seed", type=int, default=0, show_default=True, help="The order of blocks (and torch's RNG).")
@click.option("--bf16", is_flag=True, help="bfloat16 autocast (accelerate's mixed precision); weights stay float32.")
@click.option("--json", "as_json", is_flag=True, help="Print the surgery-distill/1 record on stdout, nothing else.")
@click.option("--force", is_flag=True, help="Replace an existing OUTPUT.")
@common_options
@speaks_errors
def distill(teacher: Path, student: Path, corpora: tuple[str, ...], output: Path, eval_corpora: tuple[str, ...],
            as_json: bool, quiet: bool, **options) -> None:
    """Heal a cut STUDENT by logit distillation from its TEACHER (Minitron's recovery step).

    STUDENT may be a trim of TEACHER (KD over the kept vocabulary), a drop-layers / prune output or a `surgery
    factor` output. One process by default; `accelerate launch -m surgery distill ...` or `torchrun -m surgery
    distill ...` spread it over GPUs and nodes with the same results for the same global batch.

    \b
    Example:
        surgery distill ckpt/ ckpt-pruned/ --corpus train.txt --eval-corpus heldout.txt --max-steps 200 -o healed/
        accelerate launch --num_processes 8 -m surgery distill ckpt/ ckpt-24l/ --corpus web.txt --batch-size 64 -o out/
    """
    main_process = os.environ.get("RANK", "0") == "0"
    show = not quiet and main_process

    def progress(state: dict) -> None:
        if not show:
            return
        last = state["eval"]
        eta = int(state["eta_seconds"])
        click.echo(f"step {state['step']}/{state['steps']}  loss {state['loss']:.4f}  "
                   + (f"eval KL {last['kld']:.4f} (step {last['step']})  " if last else "")
                   + f"{state['tokens_per_second']:,.0f} tok/s  ETA {eta // 3600}:{eta // 60 % 60:02d}:{eta % 60:02d}",
                   err=True)

    try:
        record = api.distill(teacher, student, corpora, output, eval_corpora=eval_corpora, progress=progress,
                             **options)
    except SurgeryError as e:
        if not main_process:  # under a launcher, rank 0 speaks first; the others exit with the same code after it
            time.sleep(REFUSAL_GRACE_SECONDS)
            sys.exit(e.exit_code)
        raise
    if not main_process:
        return
    if as_json:
        click.echo(json.dumps(record, indent=2))
    elif show:
        evals = ", ".join(f"step {e['step']}: {e['kld']:.4f}" for e in record["eval"])
        click.echo(f"wrote {output} ({record['steps']} steps, {record['tokens']:,} tokens)"
                   + (f"; eval KL {evals}" if evals else ""), err=True)
