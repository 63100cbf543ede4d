"""surgery distill end to end on tiny models: recovery of cut students (a dropped layer, a pruned MLP, a trim, a
factored student), max-steps 0 is the identity, --json is the record, 2 processes (accelerate, torchrun) equal
one, a resumed run after SIGKILL equals an uninterrupted one, and bad input is one line."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import CORPUS, TOKENIZERS, leftovers, run_cli, snapshot, write_keep

import surgery
from surgery.cli import cli

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

TRAIN, HELDOUT = CORPUS / "train.txt", CORPUS / "heldout.txt"
FAST = dict(seq_len=32, batch_size=4, lr=3e-3, eval_docs=16)


def teacher(root: Path) -> Path:
    config = transformers.LlamaConfig(vocab_size=703, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                      bos_token_id=0, eos_token_id=1, initializer_range=0.1)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(root)
    for path in (TOKENIZERS / "bpe-bytelevel-llama3").iterdir():
        shutil.copy(path, root / path.name)
    return root


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill")
    teacher(root / "teacher")
    surgery.drop_layers(root / "teacher", root / "dropped", drop="1")
    return root


def weights(path: Path) -> dict:
    from safetensors.numpy import load_file

    return load_file(path / "model.safetensors")


def eval_kl(record: dict) -> list[float]:
    return [e["kld"] for e in record["eval"]]


@pytest.mark.parametrize("cut", ["dropped", "pruned", "factored"])
def test_a_cut_student_recovers(cut, models, tmp_path):
    if cut == "pruned":
        importance = {"format": "surgery-importance/1", "mlp": np.random.default_rng(0).random((3, 64)).tolist()}
        (tmp_path / "imp.json").write_text(json.dumps(importance))
        surgery.prune(models / "teacher", tmp_path / "imp.json", tmp_path / "student", intermediate_size=16)
    elif cut == "factored":
        surgery.factor(models / "teacher", tmp_path / "student", param_ratio=0.3)
    else:
        shutil.copytree(models / "dropped", tmp_path / "student")
    record = surgery.distill(models / "teacher", tmp_path / "student", [TRAIN], tmp_path / "out", max_steps=30,
                             eval_corpora=[HELDOUT], eval_every=10, **FAST)
    kl = eval_kl(record)
    assert [e["step"] for e in record["eval"]] == [0, 10, 20, 30]
    assert kl[-1] < 0.7 * kl[0], kl  # held-out KL to the teacher falls by at least 30%
    assert len(record["loss"]) == 30 and record["tokens"] == 30 * 4 * 32 and record["global_batch"] == 4
    # OUT keeps the student's architecture, files, names and dtypes; only the tensors changed
    assert (tmp_path / "out" / "config.json").read_bytes() == (tmp_path / "student" / "config.json").read_bytes()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        [p.name for p in (tmp_path / "student").iterdir()] + ["surgery_distill.json"])
    before, after = weights(tmp_path / "student"), weights(tmp_path / "out")
    assert {k: v.shape for k, v in before.items()} == {k: v.shape for k, v in after.items()}
    assert any(not np.array_equal(before[k], after[k]) for k in before)
    assert json.loads((tmp_path / "out" / "surgery_distill.json").read_text()) == record
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", trust_remote_code=cut == "factored")
    assert loaded(input_ids=torch.tensor([[5, 6, 7]])).logits.shape[-1] == 703


def test_a_trimmed_student_starts_at_kl_zero_and_learns_over_the_kept_vocabulary(models, tmp_path):
    surgery.trim(models / "dropped", write_keep(tmp_path / "keep.txt", range(300)), tmp_path / "student")
    record = surgery.distill(models / "teacher", tmp_path / "student", [TRAIN], tmp_path / "out", max_steps=20,
                             eval_corpora=[HELDOUT], eval_every=10, **FAST)
    assert record["vocabulary"] == "trim"
    surgery.trim(models / "teacher", tmp_path / "keep.txt", tmp_path / "trimmed-teacher")
    same = surgery.distill(models / "teacher", tmp_path / "trimmed-teacher", [TRAIN], tmp_path / "same", max_steps=0,
                           eval_corpora=[HELDOUT], **FAST)
    assert same["eval"][0]["kld"] == pytest.approx(0.0, abs=1e-9)  # a trim of the teacher is the teacher
    kl = eval_kl(record)
    assert kl[-1] < 0.7 * kl[0], kl


def test_max_steps_zero_is_the_identity_and_json_is_the_record(models, tmp_path):
    student = models / "dropped"
    stale = tmp_path / ".out.distill-staging" / "checkpoint-3"
    stale.mkdir(parents=True)  # left by an earlier run: a run without --resume discards it
    result = run_cli(["distill", models / "teacher", student, "--corpus", TRAIN, "--eval-corpus", HELDOUT,
                      "--max-steps", "0", "--seq-len", "32", "--batch-size", "2", "--eval-docs", "8",
                      "-o", tmp_path / "out", "--json"])
    record = json.loads(result.stdout)
    assert record["steps"] == 0 and record["loss"] == [] and [e["step"] for e in record["eval"]] == [0]
    assert record["eval"][0]["kld"] > 0
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == (student / "model.safetensors").read_bytes()
    assert snapshot(tmp_path / "out") == {**snapshot(student), "surgery_distill.json": snapshot(tmp_path / "out")[
        "surgery_distill.json"]}
    assert not stale.parent.exists()


def test_a_bf16_student_keeps_its_dtype(models, tmp_path):
    model = transformers.AutoModelForCausalLM.from_pretrained(models / "dropped").to(torch.bfloat16)
    model.save_pretrained(tmp_path / "student")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(models / "dropped" / name, tmp_path / "student" / name)
    surgery.distill(models / "teacher", tmp_path / "student", [TRAIN], tmp_path / "same", max_steps=0, **FAST)
    assert (tmp_path / "same" / "model.safetensors").read_bytes() == (
        tmp_path / "student" / "model.safetensors").read_bytes()
    surgery.distill(models / "teacher", tmp_path / "student", [TRAIN], tmp_path / "out", max_steps=2, **FAST)
    from safetensors import safe_open

    with safe_open(tmp_path / "out" / "model.safetensors", "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}


def launch(args: list[str], launcher: str, processes: int, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    bin_dir = Path(sys.executable).parent
    if launcher == "accelerate":
        prefix = [str(bin_dir / "accelerate"), "launch", "--multi_gpu", "--num_processes", str(processes),
                  "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "surgery"]
    else:
        prefix = [str(bin_dir / "torchrun"), "--nproc_per_node", str(processes), "-m", "surgery"]
    return subprocess.run([*prefix, *map(str, args)], capture_output=True, text=True, env=env, timeout=600)


@pytest.mark.parametrize("launcher", ["accelerate", "torchrun"])
def test_two_processes_equal_one_with_the_same_global_batch(launcher, models, tmp_path):
    args = ["distill", models / "teacher", models / "dropped", "--corpus", TRAIN, "--eval-corpus", HELDOUT,
            "--max-steps", "6", "--seq-len", "32", "--batch-size", "8", "--lr", "3e-3", "--eval-docs", "12",
            "--eval-every", "3", "--json", "-q"]
    one = surgery.distill(models / "teacher", models / "dropped", [TRAIN], tmp_path / "one", max_steps=6,
                          eval_corpora=[HELDOUT], eval_every=3, seq_len=32, batch_size=8, lr=3e-3, eval_docs=12)
    done = launch([*args, "--grad-accum", "2", "-o", tmp_path / "two"], launcher, 2)
    assert done.returncode == 0, done.stderr[-3000:]
    two = json.loads(done.stdout)
    assert two["processes"] == 2 and one["processes"] == 1
    assert np.allclose(two["loss"], one["loss"], atol=1e-5, rtol=0), (two["loss"], one["loss"])
    assert np.allclose(eval_kl(two), eval_kl(one), atol=1e-5, rtol=0)
    a, b = weights(tmp_path / "one"), weights(tmp_path / "two")
    differ = sum(int((np.abs(a[k] - b[k]) > 1e-5).sum()) for k in a)
    assert differ <= 1e-4 * sum(v.size for v in a.values()), differ


def test_resume_after_sigkill_equals_the_uninterrupted_run(models, tmp_path):
    base = ["distill", models / "teacher", models / "dropped", "--corpus", TRAIN, "--eval-corpus", HELDOUT,
            "--max-steps", "8", "--seq-len", "32", "--batch-size", "4", "--lr", "3e-3", "--eval-docs", "8",
            "--eval-every", "4", "--save-every", "2", "--json", "-q"]
    whole = surgery.distill(models / "teacher", models / "dropped", [TRAIN], tmp_path / "whole", max_steps=8,
                            eval_corpora=[HELDOUT], eval_every=4, save_every=2, seq_len=32, batch_size=4, lr=3e-3,
                            eval_docs=8)
    staging = tmp_path / ".killed.distill-staging"
    process = subprocess.Popen([sys.executable, "-m", "surgery", *map(str, base), "-o", str(tmp_path / "killed")],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env={**os.environ, "SURGERY_DISTILL_STEP_DELAY": "0.5"})
    deadline = time.monotonic() + 300
    while not (staging / "checkpoint-4").exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    assert (staging / "checkpoint-4").exists(), process.communicate()[1][-2000:]
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (tmp_path / "killed").exists()
    (staging / ".checkpoint-6.partial").mkdir()  # what a kill during a save leaves: ignored
    result = run_cli([*base, "--resume", "-o", tmp_path / "killed"])
    resumed = json.loads(result.stdout)
    assert resumed["loss"] == whole["loss"] and resumed["eval"] == whole["eval"]
    assert (tmp_path / "killed" / "model.safetensors").read_bytes() == (tmp_path / "whole" / "model.safetensors").read_bytes()
    assert not staging.exists() and leftovers(tmp_path) == []


def test_refusals_are_one_line_and_leave_nothing(models, tmp_path):
    (tmp_path / "exists").mkdir()
    other = tmp_path / "other-vocab"
    config = transformers.LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=4, num_key_value_heads=2)
    transformers.LlamaForCausalLM(config).save_pretrained(other)
    for path in (TOKENIZERS / "bpe-bytelevel-llama3").iterdir():
        shutil.copy(path, other / path.name)
    common = ["--corpus", TRAIN, "--max-steps", "1", "--seq-len", "16", "--batch-size", "2"]
    cases = [
        (["distill", tmp_path / "missing", models / "dropped", *common, "-o", tmp_path / "o"], "missing"),
        (["distill", models / "teacher", other, *common, "-o", tmp_path / "o"], "no trim record"),
        (["distill", models / "teacher", models / "dropped", *common, "--seq-len", "1", "-o", tmp_path / "o"],
         "--seq-len 1"),
        (["distill", models / "teacher", models / "dropped", *common, "--batch-size", "3", "--grad-accum", "2",
          "-o", tmp_path / "o"], "divisible"),
        (["distill", models / "teacher", models / "dropped", *common, "-o", tmp_path / "exists"], "already exists"),
    ]
    for args, message in cases:
        result = CliRunner().invoke(cli, [str(a) for a in args])
        assert result.exit_code in (1, 2) and message in result.output, (args, result.output)
        assert "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exists", "other-vocab"]


def test_refusals_under_a_launcher_exit_every_rank(models, tmp_path):
    done = launch(["distill", models / "teacher", models / "dropped", "--corpus", TRAIN, "--max-steps", "1",
                   "--seq-len", "16", "--batch-size", "3", "-o", tmp_path / "o"], "torchrun", 2)
    assert done.returncode != 0
    assert done.stderr.count("Error: --batch-size 3") == 1 and "Traceback (most recent call last)" not in \
        done.stderr.split("Error:")[0]
