"""The Python API: what scripts that make hundreds of variants call. The CLI is a thin layer over it.

Every function raises `SurgeryError` (CheckpointError, InputError, VerifyError) and prints nothing.

    >>> import surgery
    >>> result = surgery.trim("ckpt/", range(5000), "ckpt-small/")            # doctest: +SKIP
    >>> result.summary["new_vocab_rows"]                                          # doctest: +SKIP
    5004
    >>> job = surgery.prepare_trim("model-Q4_K_M.gguf", "ids.txt")                # doctest: +SKIP
    >>> print(job.describe()); job.run()                                          # doctest: +SKIP
    >>> surgery.verify("ckpt/", "ckpt-small/").ok                                  # doctest: +SKIP
    True
    >>> surgery.drop_layers("ckpt/", "ckpt-24/", tail=8)                          # doctest: +SKIP
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from surgery.edit.prefetch import prefetched, tensor_files
from surgery.edit.staging import check_folder_output, check_output_path, write_plan
from surgery.errors import InputError
from surgery.formats.paths import check_source, default_output

Progress = Callable[[int], None]  # called with the number of bytes just written


@dataclass(frozen=True)
class Result:
    """What a verb wrote: the output paths, the summary that `--json` prints, and the wall time."""

    output: list[Path]
    summary: dict
    seconds: float

    def to_json(self) -> dict:
        return {**self.summary, "seconds": round(self.seconds, 3)}


@dataclass(frozen=True)
class Job:
    """A planned edit: read everything, decided everything, written nothing yet. `run()` writes and checks it."""

    plan: object  # TrimPlan, GgufTrimPlan, LayerPlan or GgufLayerPlan
    _run: Callable[[Progress], tuple[list[Path], dict]] = field(repr=False)

    def describe(self) -> str:
        return self.plan.describe()

    def to_json(self) -> dict:
        """The plan, as `--dry-run --json` prints it."""
        return self.plan.to_json()

    @property
    def output_nbytes(self) -> int:
        return self.plan.totals()["bytes_after"]

    def run(self, progress: Progress | None = None) -> Result:
        started = time.monotonic()
        output, summary = self._run(progress or (lambda nbytes: None))
        return Result(output, summary, time.monotonic() - started)


@dataclass(frozen=True)
class VerifyResult:
    findings: list  # comparison.Finding

    @property
    def ok(self) -> bool:
        return all(f.ok for f in self.findings)

    @property
    def failed(self) -> list[str]:
        return [f.check for f in self.findings if not f.ok]

    def to_json(self) -> dict:
        return {"ok": self.ok, "checks": [f.to_json() for f in self.findings]}


def _corpus_specs(corpora: Iterable) -> list:
    """--corpus values as CorpusSpec (a spec passes through; a path or `PATH:WEIGHT:MAX_DOCS` string is parsed)."""
    from surgery.mining.corpus import CorpusSpec

    return [c if isinstance(c, CorpusSpec) else CorpusSpec.parse(str(c)) for c in corpora]


def _source(src) -> Path:
    """The checkpoint path, refused in one line when it is a symlink loop, a pipe or a device."""
    src = Path(src)
    check_source(src)
    return src


# ---- trim -----------------------------------------------------------------------------------------------


def open_source(src, *, vocab_tensors: tuple[str, ...] = (), not_vocab_tensors: tuple[str, ...] = ()):
    """Read a folder or GGUF file once, for many plans: `surgery.trim(opened, keep, out)` for each keep list,
    `surgery.drop_layers(opened, ...)` and `surgery.prune(opened, ...)` for each cut."""
    from surgery.verbs.trim import TrimSource

    opened = TrimSource.open(_source(src), tuple(vocab_tensors), tuple(not_vocab_tensors))
    if opened.tokenizer is not None:  # planned many times: each token's merge replay is kept for the next plan
        opened.tokenizer.remember_replays()
    return opened


def prepare_trim(src, keep, out=None, *, pad_to_multiple_of: int | None = None, vocab_tensors: tuple[str, ...] = (),
                 not_vocab_tensors: tuple[str, ...] = (), drop_reserved: bool = False, link_unchanged: bool = False,
                 force: bool = False, check_output: bool = True) -> Job:
    """Plan a vocabulary trim of a folder or a GGUF file (a path, or an `open_source` result). `keep` is a keep-list
    path or an iterable of ids.

    `check_output=False` skips the checks on OUT (for a dry run, where nothing is written).
    """
    from surgery.verbs.trim import TrimSource, check_trim_options

    opened = src if isinstance(src, TrimSource) else None
    if opened is not None and (tuple(vocab_tensors), tuple(not_vocab_tensors)) not in (
            ((), ()), (opened.vocab_tensors, opened.not_vocab_tensors)):
        raise InputError("vocab_tensors / not_vocab_tensors: give them to open_source, which settles the vocabulary "
                         "tensors once")
    src = opened.path if opened is not None else _source(src)
    check_trim_options(src, link_unchanged)
    out = Path(out) if out is not None else default_output(src, "trimmed")
    if check_output:
        check_output_path(src, out, force)  # before any work: a refusal should not wait for the plan
    # a plan that will be written: the disk reads the source while the CPU plans (edit/prefetch)
    with prefetched(tensor_files(src) if check_output else ()):
        if opened is None:
            opened = TrimSource.open(src, tuple(vocab_tensors), tuple(not_vocab_tensors))
        plan = opened.plan(_keep_list(keep, opened.n_ids()), pad_to_multiple_of=pad_to_multiple_of,
                           drop_reserved=drop_reserved)

    def run(progress: Progress):
        written = write_plan(plan, out, progress, link_unchanged=link_unchanged)
        return written, {
            "output": plan.output_json(written), "old_vocab_rows": plan.n_rows, "new_vocab_rows": plan.new_rows,
            "kept": len(plan.kept_ids), "added_by_rule": plan.addition_counts(), **plan.totals(),
            "tensors": plan.vocab_shapes(),
        }

    return Job(plan, run)


def trim(src, keep, out=None, *, progress: Progress | None = None, **options) -> Result:
    """Trim the vocabulary of a folder or a GGUF file to `keep` (a keep-list path or an iterable of ids).

    Options: pad_to_multiple_of, vocab_tensors, not_vocab_tensors, drop_reserved, link_unchanged, force.
    Returns the written paths and the summary `surgery trim --json` prints.
    """
    return prepare_trim(src, keep, out, **options).run(progress)


def _keep_list(keep, n_vocab: int):
    from surgery.verbs.keep_list import KeepList

    if isinstance(keep, (str, Path)):
        return KeepList.load(Path(keep), n_vocab)
    if not n_vocab:
        from surgery.errors import CheckpointError

        raise CheckpointError("the source has no tokenizer vocabulary")
    return KeepList.of(keep, n_vocab)


def _container(src):
    """The Source of `src`: a path, an `open_source` result, or a Source itself (edit/sources)."""
    from surgery.edit.sources import FolderSource, GgufSource, open_source as open_container
    from surgery.verbs.trim import TrimSource

    if isinstance(src, TrimSource):
        return src.source
    if isinstance(src, (FolderSource, GgufSource)):
        return src
    return open_container(_source(src))


def _cut_job(plan, out: Path) -> Job:
    """A drop-layers or prune plan as a Job: write it, check it, name what was written."""

    def run(progress: Progress):
        written = write_plan(plan, out, progress)
        return written, {"output": plan.output_json(written), **plan.to_json()}

    return Job(plan, run)


# ---- drop-layers ----------------------------------------------------------------------------------------


def prepare_drop_layers(src, out=None, *, drop: str | None = None, keep_layers: str | None = None,
                        tail: int | None = None, importance=None, num_layers: int | None = None, force: bool = False,
                        check_output: bool = True) -> Job:
    """Plan the removal of decoder layers from a folder or a GGUF file (a path, or an `open_source` result: many
    cuts of one source read its headers once); choose with exactly one of drop ("1,4-5"), keep_layers, tail, or
    importance (a surgery-importance/1 file) with num_layers."""
    from surgery.verbs.drop_layers import choose_kept_layers, plan_drop_layers

    source = _container(src)
    src = source.path
    kept = choose_kept_layers(source.n_layers(), drop=drop, keep_layers=keep_layers, tail=tail,
                              num_layers=num_layers, importance=Path(importance) if importance is not None else None)
    out = Path(out) if out is not None else default_output(src, f"{len(kept)}layers")
    if check_output:
        check_output_path(src, out, force)
    return _cut_job(plan_drop_layers(source, kept), out)


def drop_layers(src, out=None, *, progress: Progress | None = None, **choice) -> Result:
    """Remove decoder layers (depth pruning); see prepare_drop_layers for the ways to choose them."""
    return prepare_drop_layers(src, out, **choice).run(progress)


# ---- prune ---------------------------------------------------------------------------------------------


def prepare_prune(src, importance, out=None, *, intermediate_size: int | None = None,
                  num_attention_heads: int | None = None, hidden_size: int | None = None,
                  num_experts: int | None = None, moe_intermediate_size: int | None = None,
                  shared_expert_intermediate_size: int | None = None, force: bool = False,
                  check_output: bool = True) -> Job:
    """Plan Minitron width pruning of a folder or a GGUF file (a path, or an `open_source` result) from an
    importance file (surgery-importance/1): the N most important MLP neurons / query heads per layer, hidden
    channels, or experts per layer."""
    from surgery.mining.importance_file import load_importance
    from surgery.verbs.prune import plan_prune

    source = _container(src)
    src = source.path
    out = Path(out) if out is not None else default_output(src, "pruned")
    if check_output:
        check_output_path(src, out, force)
    plan = plan_prune(source, load_importance(Path(importance)), Path(importance).name,
                      intermediate_size=intermediate_size, num_attention_heads=num_attention_heads,
                      hidden_size=hidden_size, num_experts=num_experts, moe_intermediate_size=moe_intermediate_size,
                      shared_expert_intermediate_size=shared_expert_intermediate_size)
    return _cut_job(plan, out)


def prune(src, importance, out=None, *, progress: Progress | None = None, **sizes) -> Result:
    """Width pruning; see prepare_prune."""
    return prepare_prune(src, importance, out, **sizes).run(progress)


# ---- factor / unfactor ----------------------------------------------------------------------------------


def prepare_factor(src, out=None, *, rank_ratio=None, param_ratio=None, energy=None, rank_multiple: int = 1,
                   targets: Iterable[str] = (), scaling=None, device: str = "cpu", force: bool = False,
                   spectrum_progress: Callable[[int, int], None] | None = None) -> Job:
    """Plan a low-rank factorization of a folder (PLRD / SVD-LLM style). Exactly one of `rank_ratio`,
    `param_ratio`, `energy`: a number, or several (a list or "0.75,0.5") for a family written to OUT-r0.75, ...
    `scaling` is an importance file with input statistics (activation-aware); `targets` are module-name globs."""
    from surgery.formats.hf_folder import Checkpoint
    from surgery.lowrank.ranks import parse_rules
    from surgery.verbs.factor import check_factor_output, decompose, family_outputs, plan_factor, refuse_gguf

    src = _source(src)
    refuse_gguf(src)
    rules = parse_rules(*(_values(v) for v in (rank_ratio, param_ratio, energy)), rank_multiple)
    out = Path(out) if out is not None else src.parent / f"{src.resolve().name}-factored"
    outs = family_outputs(out, rules)
    for path in outs:
        check_folder_output(src, path, force)
    scaling_data = None
    if scaling is not None:
        from surgery.mining.importance_file import load_importance

        scaling_data = load_importance(Path(scaling))
    plan = plan_factor(Checkpoint.open(src), rules, outs, targets=tuple(targets), scaling=scaling_data,
                       scaling_name=None if scaling is None else Path(scaling).name, engine=_engine(device),
                       spectrum_progress=spectrum_progress)

    def run(progress: Progress):
        from surgery.edit.compute import write_outputs
        from surgery.edit.staging import write_folders

        def check(partials):
            for member, partial in zip(plan.members, partials):
                check_factor_output(plan, member, partial)

        write_folders(outs, lambda partials: write_outputs(src, [m.output for m in plan.members], partials,
                                                           lambda key: decompose(plan, key), progress), check)
        return outs, plan.to_json()

    return Job(plan, run)


def factor(src, out=None, *, progress: Progress | None = None, **options) -> Result:
    """Low-rank factorization; see prepare_factor."""
    return prepare_factor(src, out, **options).run(progress)


def prepare_unfactor(src, out=None, *, device: str = "cpu", force: bool = False) -> Job:
    """Plan the product of a factored folder's factors: the plain source architecture again."""
    from surgery.formats.hf_folder import Checkpoint
    from surgery.verbs.unfactor import check_unfactor_output, multiply, plan_unfactor, refuse_gguf

    src = _source(src)
    refuse_gguf(src)
    out = Path(out) if out is not None else src.parent / f"{src.resolve().name}-dense"
    check_folder_output(src, out, force)
    plan = plan_unfactor(Checkpoint.open(src), _engine(device))

    def run(progress: Progress):
        from surgery.edit.compute import write_outputs
        from surgery.edit.staging import write_folders

        write_folders([out], lambda partials: write_outputs(src, [plan.output], partials,
                                                            lambda key: multiply(plan, key), progress),
                      lambda partials: check_unfactor_output(plan, partials[0]))
        return [out], {"output": str(out), **plan.to_json()}

    return Job(plan, run)


def unfactor(src, out=None, *, progress: Progress | None = None, **options) -> Result:
    """The dense product of a factored folder; see prepare_unfactor."""
    return prepare_unfactor(src, out, **options).run(progress)


def _values(value) -> str | None:
    """A rule's values as the CLI spells them: 0.5, "0.75,0.5" or [0.75, 0.5]."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return repr(float(value))
    return ",".join(repr(float(v)) for v in value)


def _engine(device: str):
    from surgery.lowrank.linalg import Engine

    try:
        engine = Engine(device)
    except ImportError as e:
        raise InputError(f"--device {device}: needs torch: pip install torch==2.13.0") from e
    except ValueError as e:
        raise InputError(f"--device {device}: {e}") from e
    if engine.torch is not None and device != "cpu":
        try:
            engine.torch.zeros(1, device=device)
        except (RuntimeError, AssertionError) as e:
            raise InputError(f"--device {device}: not usable here ({str(e).splitlines()[0]})") from e
    return engine


# ---- distill ------------------------------------------------------------------------------------------------


def distill(teacher, student, corpora: Iterable, out, *, eval_corpora: Iterable = (),
            progress: Callable[[dict], None] | None = None, **options) -> dict:
    """Logit distillation of STUDENT (a cut of TEACHER: trimmed, pruned, fewer layers, factored) into OUT; returns
    the surgery-distill/1 record. Options: max_steps, seq_len, batch_size (global), grad_accum, lr, warmup_steps,
    temperature, loss ("forward-kl" | "reverse-kl"), lm_loss_weight, eval_docs, eval_every, save_every, resume,
    seed, bf16, force. Runs under `accelerate launch` / torchrun as it is."""
    from surgery.engine import world_size
    from surgery.training.distill import DistillOptions, check_options
    from surgery.training.distill import distill as run_distill

    teacher, student, out = _source(teacher), _source(student), Path(out)
    for path, what in ((teacher, "teacher"), (student, "student")):
        if not path.is_dir() or not (path / "config.json").is_file():
            raise InputError(f"{path}: the {what} must be a Hugging Face folder with config.json")
    try:
        settings = DistillOptions(**options)
    except TypeError as e:
        raise InputError(f"distill: {e}") from e
    check_options(settings, world_size())
    if out.resolve() == teacher.resolve() or teacher.resolve() in out.resolve().parents:
        raise InputError(f"{out}: output must not be the teacher or inside it")
    check_folder_output(student, out, settings.force)
    specs = _corpus_specs(corpora)
    if not specs:
        raise InputError("distill needs at least one --corpus")
    evals = _corpus_specs(eval_corpora)
    return run_distill(teacher, student, specs, out, settings, eval_corpora=evals, progress=progress)


def importance(src, corpora: Iterable, output=None, **options) -> dict:
    """Minitron importance scores of a folder's model on calibration corpora (needs the `importance` extra).

    Options: max_docs, field, whole_files, batch_size, max_length, device, progress. With `output`, also writes
    the JSON file.
    """
    import json

    from surgery.mining.importance import compute_importance

    specs = _corpus_specs(corpora)
    scores = compute_importance(_source(src), specs, **options)
    if output is not None:
        Path(output).write_text(json.dumps(scores) + "\n")
    return scores


def compare(src, outs: Iterable, corpora: Iterable, **options) -> dict:
    """The surgery-compare/1 document: KL(SRC || OUT) statistics, top-1 agreement and perplexities of each OUT
    against one pass of SRC (folders need torch and transformers, GGUF files llama-cpp-python).

    Options: max_docs (per corpus, 256), max_length (512), batch_size, device, progress.
    """
    from surgery.reports.compare import compare_models

    specs = _corpus_specs(corpora)
    if not specs:
        raise InputError("compare needs at least one corpus")
    return compare_models(_source(src), [_source(out) for out in outs], specs, **options)


# ---- keep, inspect, verify ------------------------------------------------------------------------------


def keep(src, corpora: Iterable, output=None, **options):
    """Mine corpora (paths, or "PATH:WEIGHT:MAX_DOCS" strings) into the final kept set.

    Options as `surgery keep`: size, coverage, min_count, top_k, field, whole_files, max_docs, max_bytes,
    keep_ids, keep_tokens, pad_to_multiple_of, drop_reserved, tokenizer_dir, vocab_tensors, not_vocab_tensors,
    progress. Returns a MinedKeepList (`.ids`, `.figures`, `.ids_text()`); with `output`, also writes the list.
    """
    from surgery.mining.keep_mining import mine_keep_list

    specs = _corpus_specs(corpora)
    if not specs:
        raise InputError("keep needs at least one corpus")
    mined = mine_keep_list(_source(src), specs, **options)
    if output is not None:
        Path(output).write_text(mined.ids_text())
    return mined


def inspect(src, keep=None, *, vocab_tensors: tuple[str, ...] = (), not_vocab_tensors: tuple[str, ...] = ()):
    """What a folder or GGUF file holds (the `inspect --json` document), reading no tensor data; with
    `keep`, also the plan a trim would follow (under "plan"). Returns (report, job or None)."""
    from surgery.reports.inspection import inspect_source

    src = _source(src)
    report = inspect_source(src, tuple(vocab_tensors), tuple(not_vocab_tensors), tokenizer_required=keep is not None)
    job = None
    if keep is not None:
        job = prepare_trim(src, keep, vocab_tensors=vocab_tensors, not_vocab_tensors=not_vocab_tensors,
                           check_output=False)
        report["plan"] = job.to_json()
    return report, job


def verify(src, out, corpora: Iterable = (), max_docs: int | None = None, *, vocab_tensors: tuple[str, ...] = (),
           not_vocab_tensors: tuple[str, ...] = ()) -> VerifyResult:
    """Prove OUT against its source, byte for byte (folder or GGUF); `.ok` says whether every check passed."""
    from surgery.formats.paths import check_same_container
    from surgery.reports.cut_reports import cut_kind, verify_cut

    src, out = _source(src), _source(out)
    check_same_container(src, out)

    kind = cut_kind(out)
    if kind is not None:  # a drop-layers or prune output
        if corpora:
            raise InputError(f"{out}: a {kind} output keeps the source's tokenizer; --corpus proves a "
                             "trim's tokenizer (`surgery compare` measures what a cut cost)")
        return VerifyResult(verify_cut(src, out))
    from surgery.reports.comparison import verify_trim

    return VerifyResult(verify_trim(src, out, tuple(_corpus_specs(corpora)), max_docs, vocab_tensors=tuple(vocab_tensors),
                                    not_vocab_tensors=tuple(not_vocab_tensors)))
