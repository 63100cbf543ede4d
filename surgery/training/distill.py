"""surgery distill: logit distillation of a cut STUDENT from its TEACHER on accelerate (the torch extra).

One process is the default; `accelerate launch` / `torchrun` spread it over processes, GPUs and nodes (DDP through
accelerate's own config). Semantics that do not depend on the process count P:
- global batch B: the blocks of optimizer step s are fixed by (seed, s) (blocks.step_blocks); in micro-step g,
  process p takes B / (P x G) consecutive ones (blocks.process_slice);
- each process backpropagates its loss sum x P / (B·(L−1)); DDP's mean over processes and the sum over the G
  micro-steps then give the gradient of the step's mean loss, whatever P and G;
- loss[i] is step i+1's mean loss before its update, summed over processes (accelerate's reduce);
- the eval statistic (KL(teacher ‖ student) at T = 1 pooled over every position, as `surgery compare`) splits
  documents over processes and adds their sums.
Resumable checkpoints hold no pickle: parameters and AdamW moments in safetensors, the rest in JSON.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from surgery.training.blocks import process_slice, step_blocks, token_blocks
from surgery.errors import CheckpointError, InputError
from surgery.mining.corpus import CorpusSpec
from surgery.engine import (
    EXTRA_HINT,
    check_joined,
    cpu_processes,
    finish_distributed,
    import_torch,
    load_causal_lm,
    load_tokenizer,
)

LOSSES = ("forward-kl", "reverse-kl")
DISTILL_RECORD = "surgery_distill.json"
DISTILL_FORMAT = "surgery-distill/1"
TRIM_RECORD = "surgery_trim.json"
STAGING_SUFFIX = ".distill-staging"
CHECKPOINT = "checkpoint-"
STEP_DELAY = "SURGERY_DISTILL_STEP_DELAY"  # seconds slept after each step: lets the tests kill a run mid-way


@dataclass(frozen=True)
class DistillOptions:
    max_steps: int = 100
    seq_len: int = 512
    batch_size: int = 8  # the GLOBAL batch: blocks per optimizer step over every process and micro-step
    grad_accum: int = 1
    lr: float = 1e-4
    warmup_steps: int = 0
    temperature: float = 1.0
    loss: str = "forward-kl"
    lm_loss_weight: float = 0.0
    eval_docs: int = 64
    eval_every: int = 0  # 0: at step 0 and the last step only
    save_every: int = 0  # 0: no resumable checkpoints
    resume: bool = False
    seed: int = 0
    bf16: bool = False
    force: bool = False


Progress = Callable[[dict], None]


def check_options(options: DistillOptions, processes: int) -> None:
    if options.seq_len < 2:
        raise InputError(f"--seq-len {options.seq_len}: at least 2 (a position and the token it predicts)")
    if options.max_steps < 0:
        raise InputError(f"--max-steps {options.max_steps}: must not be negative")
    if options.batch_size < 1 or options.grad_accum < 1:
        raise InputError("--batch-size and --grad-accum must be positive")
    if options.batch_size % (processes * options.grad_accum):
        raise InputError(f"--batch-size {options.batch_size}: the global batch must be divisible by processes x "
                         f"--grad-accum = {processes} x {options.grad_accum}",
                         hint="each process takes B / (processes x G) blocks per micro-step")
    if options.loss not in LOSSES:
        raise InputError(f"--loss {options.loss}: one of {', '.join(LOSSES)}")
    if not options.temperature > 0:
        raise InputError(f"--temperature {options.temperature}: must be positive")
    if options.lm_loss_weight < 0 or options.lr <= 0 or options.warmup_steps < 0 or options.eval_docs < 1:
        raise InputError("--lm-loss-weight and --warmup-steps must not be negative, --lr and --eval-docs positive")


def staging_dir(out: Path) -> Path:
    return out.parent / f".{out.name}{STAGING_SUFFIX}"


# ---- models and vocabularies ------------------------------------------------------------------------------

class _Side:
    """What compare.relation reads of a model: path, logit rows, token strings, trim record."""

    def __init__(self, path: Path, model, tokenizer) -> None:
        self.path, self.tokenizer = path, tokenizer
        self.rows = int(model.get_output_embeddings().weight.shape[0])

    def tokens(self) -> list[str]:
        return self.tokenizer.convert_ids_to_tokens(list(range(len(self.tokenizer))))

    def trim_record(self) -> dict | None:
        path = self.path / TRIM_RECORD
        return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def _load(path: Path, torch, what: str):
    return (load_causal_lm(path, "distill", dtype=torch.float32, what=what).train(what == "student"),
            load_tokenizer(path, "distill"))


def _checkpoint_tensors(student: Path) -> list:
    """The student's tensors as its files hold them (names, dtypes, shards): OUT is written in that layout."""
    from surgery.formats.hf_folder import Checkpoint

    return Checkpoint.open(student).shards


# ---- the run ------------------------------------------------------------------------------------------------

def distill(teacher: Path, student: Path, corpora: Iterable[CorpusSpec], out: Path, options: DistillOptions, *,
            eval_corpora: Iterable[CorpusSpec] = (), progress: Progress | None = None) -> dict:
    torch, transformers = import_torch("distill")  # the options were checked by the caller (api.distill)
    try:
        from accelerate import Accelerator
    except ImportError as e:
        raise InputError(f"surgery distill needs accelerate: {EXTRA_HINT}") from e
    from surgery.training.loss import kd_loss_sum  # torch at import time
    transformers.utils.logging.set_verbosity_error()
    shards = _checkpoint_tensors(student)
    accelerator = Accelerator(mixed_precision="bf16" if options.bf16 else "no", cpu=cpu_processes(torch))
    processes, rank = accelerator.num_processes, accelerator.process_index
    check_joined(processes)
    torch.manual_seed(options.seed)
    teacher_model, _ = _load(teacher, torch, "teacher")
    student_model, tokenizer = _load(student, torch, "student")
    kept = _vocabulary(teacher, student, teacher_model, student_model, tokenizer, torch)
    state = dict(student_model.state_dict())
    for shard in shards:
        for entry in shard.entries:
            if entry.name not in state or tuple(state[entry.name].shape) != tuple(entry.shape):
                raise CheckpointError(f"{student.name}: tensor '{entry.name}' of {shard.path.name} is not a parameter "
                                      "of the loaded model (renamed at load time); distill writes the student's own "
                                      "tensor names")
    eos = tokenizer.eos_token_id
    if eos is None:
        raise CheckpointError(f"{student.name}: its tokenizer has no EOS token (one follows every document)")
    blocks = token_blocks(corpora, lambda doc: tokenizer(doc)["input_ids"], eos, options.seq_len)
    eval_docs = _eval_documents(eval_corpora, tokenizer, options)
    device = accelerator.device
    teacher_model.to(device).eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(student_model.parameters(), lr=options.lr, weight_decay=0.0)
    scheduler = transformers.get_linear_schedule_with_warmup(optimizer, options.warmup_steps, max(options.max_steps, 1))
    model, optimizer = accelerator.prepare(student_model, optimizer)
    model.train()
    kept_device = None if kept is None else kept.to(device)
    staging = staging_dir(out)
    record = {"format": DISTILL_FORMAT, "teacher": str(teacher), "student": str(student),
              "vocabulary": "same" if kept is None else "trim", "steps": options.max_steps,
              "tokens": options.max_steps * options.batch_size * options.seq_len, "seq_len": options.seq_len,
              "global_batch": options.batch_size, "grad_accum": options.grad_accum, "processes": processes,
              "blocks": int(len(blocks)), "lr": options.lr, "warmup_steps": options.warmup_steps,
              "temperature": options.temperature, "loss_function": options.loss,
              "lm_loss_weight": options.lm_loss_weight, "seed": options.seed, "loss": [], "eval": []}
    start = 0
    if options.resume:
        start = _resume(staging, accelerator.unwrap_model(model), optimizer, scheduler, record, torch)
    elif accelerator.is_main_process and staging.exists():
        shutil.rmtree(staging)
    accelerator.wait_for_everyone()

    def evaluate(step: int) -> None:
        if eval_docs and not any(e["step"] == step for e in record["eval"]):
            kld, positions = _eval_kld(accelerator, teacher_model, accelerator.unwrap_model(model), eval_docs, kept,
                                       torch)
            record["eval"].append({"step": step, "kld": kld})
            record["eval_positions"] = positions

    if start == 0:
        evaluate(0)
    scale = processes / (options.batch_size * (options.seq_len - 1))
    per_process = options.batch_size // (processes * options.grad_accum)
    started = time.monotonic()
    delay = float(os.environ.get(STEP_DELAY, "0") or 0)
    for step in range(start, options.max_steps):
        indices = step_blocks(len(blocks), options.seed, step, options.batch_size)
        step_sum = torch.zeros((), device=device)
        for micro in range(options.grad_accum):
            ids = torch.from_numpy(blocks[process_slice(indices, micro, options.grad_accum, rank, processes)]).to(device)
            assert len(ids) == per_process
            with torch.no_grad():
                teacher_ids = ids if kept is None else kept_device[ids]
                teacher_logits = teacher_model(input_ids=teacher_ids, use_cache=False).logits
            sync = micro == options.grad_accum - 1
            context = accelerator.no_sync(model) if not sync and processes > 1 else _nothing()
            with context, accelerator.autocast():
                logits = model(input_ids=ids, use_cache=False).logits
                loss_sum = kd_loss_sum(logits, teacher_logits, ids, temperature=options.temperature,
                                       loss=options.loss, lm_weight=options.lm_loss_weight, kept=kept_device)
                accelerator.backward(loss_sum * scale)
            step_sum += loss_sum.detach().float()
        total = accelerator.reduce(step_sum, reduction="sum")
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        record["loss"].append(float(total) / (options.batch_size * (options.seq_len - 1)))
        done = step + 1
        if (options.eval_every and done % options.eval_every == 0) or done == options.max_steps:
            evaluate(done)
        if options.save_every and done % options.save_every == 0 and done < options.max_steps:
            _save(accelerator, staging, done, accelerator.unwrap_model(model), optimizer, scheduler, record, torch)
        if progress and accelerator.is_main_process:
            elapsed = time.monotonic() - started
            progress({"step": done, "steps": options.max_steps, "loss": record["loss"][-1],
                      "eval": record["eval"][-1] if record["eval"] else None,
                      "tokens_per_second": (done - start) * options.batch_size * options.seq_len / max(elapsed, 1e-9),
                      "eta_seconds": elapsed / (done - start) * (options.max_steps - done)})
        if delay:
            time.sleep(delay)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        _write_output(student, out, accelerator.unwrap_model(model), record)
        shutil.rmtree(staging, ignore_errors=True)
    finish_distributed()
    return record


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _vocabulary(teacher: Path, student: Path, teacher_model, student_model, tokenizer, torch):
    """None when both read the same ids; the teacher ids of the student's rows for a trim of the teacher."""
    from surgery.reports.compare import relation

    teacher_tokenizer = load_tokenizer(teacher, "distill")
    t_side, s_side = _Side(teacher, teacher_model, teacher_tokenizer), _Side(student, student_model, tokenizer)
    rel = relation(t_side, s_side, t_side.tokens())
    if rel.kind == "same-vocab":
        return None
    return torch.as_tensor(rel.old_ids, dtype=torch.long)


def _eval_documents(eval_corpora, tokenizer, options: DistillOptions) -> list[list[int]]:
    from surgery.reports.compare import load_documents

    specs = list(eval_corpora)
    if not specs:
        return []
    docs = [tokenizer(doc)["input_ids"][: options.seq_len] for doc in load_documents(specs, options.eval_docs)]
    return [ids for ids in docs if len(ids) >= 2]


def _eval_kld(accelerator, teacher_model, student_model, docs: list[list[int]], kept, torch) -> tuple[float, int]:
    """Pooled KL(teacher ‖ student) at T = 1 over positions 0..n-2 of every document (float64, compare's)."""
    from surgery.reports.compare import position_stats

    was_training = student_model.training
    student_model.eval()
    total, positions = 0.0, 0
    device = accelerator.device
    for index in range(accelerator.process_index, len(docs), accelerator.num_processes):
        ids = torch.tensor([docs[index]], device=device)
        with torch.no_grad():
            t = teacher_model(input_ids=ids if kept is None else kept.to(device)[ids], use_cache=False).logits[0, :-1]
            s = student_model(input_ids=ids, use_cache=False).logits[0, :-1]
        t, s = t.double().cpu().numpy(), s.double().cpu().numpy()
        if kept is not None:
            t, s = t[:, kept.numpy()], s[:, : len(kept)]
        values = position_stats(t, s, np.asarray(docs[index][1:]))
        total += float(values[:, 0].sum())
        positions += len(values)
    student_model.train(was_training)
    sums = accelerator.reduce(torch.tensor([total, float(positions)], dtype=torch.float64, device=device), "sum")
    return float(sums[0] / max(sums[1], 1)), int(sums[1])


# ---- resumable checkpoints (no pickle) ------------------------------------------------------------------------

def _save(accelerator, staging: Path, step: int, model, optimizer, scheduler, record: dict, torch) -> None:
    from safetensors.torch import save_file

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        staging.mkdir(parents=True, exist_ok=True)
        partial = staging / f".{CHECKPOINT}{step}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        save_file({n: p.detach().float().cpu().contiguous() for n, p in model.named_parameters()},
                  partial / "model.safetensors")
        opt = optimizer.state_dict()
        moments = {"rng": torch.get_rng_state()}
        for index, values in opt["state"].items():
            for key, value in values.items():
                moments[f"{index}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
        save_file(moments, partial / "optimizer.safetensors")
        (partial / "state.json").write_text(json.dumps({
            "step": step, "param_groups": opt["param_groups"], "scheduler": scheduler.state_dict(),
            "loss": record["loss"], "eval": record["eval"], "eval_positions": record.get("eval_positions")}))
        for path in partial.iterdir():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
        partial.rename(staging / f"{CHECKPOINT}{step}")
        for old in staging.glob(f"{CHECKPOINT}*"):
            if old.name != f"{CHECKPOINT}{step}":
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def _resume(staging: Path, model, optimizer, scheduler, record: dict, torch) -> int:
    """Load the latest complete checkpoint; 0 when there is none (a partial one left by a kill is ignored)."""
    from safetensors.torch import load_file

    found = sorted((int(p.name.removeprefix(CHECKPOINT)), p) for p in staging.glob(f"{CHECKPOINT}*")
                   if p.is_dir() and p.name.removeprefix(CHECKPOINT).isdigit() and (p / "state.json").exists())
    if not found:
        return 0
    step, path = found[-1]
    state = json.loads((path / "state.json").read_text())
    params = load_file(path / "model.safetensors")
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.copy_(params[name])
    moments = load_file(path / "optimizer.safetensors")
    torch.set_rng_state(moments.pop("rng"))
    opt_state: dict = {}
    for key, value in moments.items():
        index, name = key.split(".", 1)
        opt_state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": opt_state, "param_groups": state["param_groups"]})
    scheduler.load_state_dict(state["scheduler"])
    record["loss"], record["eval"] = state["loss"], state["eval"]
    if state.get("eval_positions") is not None:
        record["eval_positions"] = state["eval_positions"]
    return step


# ---- the output ------------------------------------------------------------------------------------------

def _write_output(student: Path, out: Path, model, record: dict) -> None:
    """The student's folder with its tensors replaced by the trained ones, in the student's names, dtypes and
    shards (config.json and every other file copied unchanged), plus the record; staged and checked."""
    from surgery.edit.compute import check_written, folder_output, write_outputs
    from surgery.edit.ops import Compute
    from surgery.edit.staging import write_folders
    from surgery.formats.hf_folder import Checkpoint, dump_json

    state = model.state_dict()
    output = folder_output(Checkpoint.open(student), (), lambda target: [], {DISTILL_RECORD: dump_json(record)},
                           DISTILL_RECORD, copy_op=lambda e: Compute(
                               e.name, e.dtype, e.shape, e.name,
                               lambda _, name=e.name: state[name].detach().float().cpu().numpy()))
    write_folders([out], lambda partials: write_outputs(student, [output], partials, lambda key: None,
                                                        lambda n: None),
                  lambda partials: check_written(output, partials[0]))
