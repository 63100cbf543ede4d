"""Every verb checks its output before moving it into place: a wrong byte means exit 3 and no output. Trim has
its own checks besides (tokenizer, config ids); drop-layers and prune, on folders and GGUF files, go through the
one checker (edit/checks.slice_problem) and are caught here with one wrong row or column."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from conftest import KEEP, importance_file, leftovers, run_cli, tiny_folder, tiny_gguf

from surgery.cli import cli
from surgery.edit import execute


def test_corrupted_rows_are_caught_before_the_rename(runner, copy_fixture, tmp_path, monkeypatch):
    real_gather = execute.gather_rows

    def wrong_rows(fd_in, fd_out, entry, action, row_source):
        real_gather(fd_in, fd_out, entry, action, row_source[::-1].copy())

    monkeypatch.setattr(execute, "gather_rows", wrong_rows)
    src = copy_fixture("llama-untied")
    out = tmp_path / "out"
    result = runner.invoke(cli, ["trim", str(src), "--keep", str(KEEP / "basic.txt"), "-o", str(out), "-q"])
    assert result.exit_code == 3
    assert result.stderr == ("Error: output model.safetensors: rows of 'lm_head.weight' differ from their source "
                             "rows\n")
    assert not out.exists() and not leftovers(tmp_path)


def test_a_tokenizer_that_names_wrong_tokens_is_caught(runner, copy_fixture, tmp_path, monkeypatch):
    from surgery.tokenizer.hf_json import HfTokenizerJson

    real_rewrite = HfTokenizerJson.rewrite

    def swapped(self, old_to_new):
        text, dropped = real_rewrite(self, old_to_new)
        data = json.loads(text)
        first, second = list(data["model"]["vocab"])[:2]
        vocab = data["model"]["vocab"]
        vocab[first], vocab[second] = vocab[second], vocab[first]
        return json.dumps(data), dropped

    monkeypatch.setattr(HfTokenizerJson, "rewrite", swapped)
    src = copy_fixture("llama-untied")
    result = runner.invoke(cli, ["trim", str(src), "--keep", str(KEEP / "basic.txt"), "-o", str(tmp_path / "o")])
    assert result.exit_code == 3
    assert result.stderr.splitlines()[-1].startswith("Error: output tokenizer.json: new id 0 is ")
    assert not (tmp_path / "o").exists()


def test_a_config_id_that_names_another_token_is_caught(runner, copy_fixture, tmp_path, monkeypatch):
    from surgery.verbs import trim as plan_module

    real_patch = plan_module.patch_config

    def off_by_one(file, config, old_to_new, new_vocab_size):
        new, patches = real_patch(file, config, old_to_new, new_vocab_size)
        if file == "config.json":
            new["eos_token_id"] = [i + 1 for i in new["eos_token_id"]]
        return new, patches

    monkeypatch.setattr(plan_module, "patch_config", off_by_one)
    src = copy_fixture("llama-untied")
    result = runner.invoke(cli, ["trim", str(src), "--keep", str(KEEP / "basic.txt"), "-o", str(tmp_path / "o"), "-q"])
    assert result.exit_code == 3
    assert result.stderr.startswith("Error: output config.json: eos_token_id: was ")
    assert not (tmp_path / "o").exists()


# ---- drop-layers and prune, both containers -----------------------------------------------------------------

def first_copy_corrupted(monkeypatch):
    """The first tensor the executor copies gets one wrong byte in its first row."""
    calls = []

    def corrupt(fd_in, fd_out, begin, nbytes, progress):
        data = bytearray(os.pread(fd_in, nbytes, begin))
        if not calls:
            data[0] ^= 0xFF
        calls.append(nbytes)
        execute.write_all(fd_out, data)
        progress(nbytes)

    monkeypatch.setattr(execute, "copy_range", corrupt)


def columns_reversed(monkeypatch):
    """Every cut tensor gets its kept columns (or rows) in reverse order."""
    real = execute.take_rows_cols

    def reversed_take(fd_in, fd_out, entry, rows, cols):
        if cols is not None:
            cols = cols[::-1].copy()
        elif rows is not None:
            rows = rows[::-1].copy()
        real(fd_in, fd_out, entry, rows, cols)

    monkeypatch.setattr(execute, "take_rows_cols", reversed_take)


@pytest.mark.parametrize("container", ["folder", "gguf"])
@pytest.mark.parametrize("verb", ["drop-layers", "prune-mlp", "prune-hidden"])
def test_a_wrong_row_or_column_of_a_cut_is_caught_before_the_rename(verb, container, tmp_path, monkeypatch):
    src = tiny_folder(tmp_path / "src") if container == "folder" else tiny_gguf(tmp_path / "src.gguf")
    out = tmp_path / ("out" if container == "folder" else "out.gguf")
    if verb == "drop-layers":
        args = ["drop-layers", src, "--drop", "1"]
        first_copy_corrupted(monkeypatch)
    else:
        option = ["--intermediate-size", "6"] if verb == "prune-mlp" else ["--hidden-size", "6"]
        args = ["prune", src, "--importance", importance_file(tmp_path / "imp.json"), *option]
        columns_reversed(monkeypatch)
    result = run_cli([*args, "-o", out], 3)
    assert result.stderr.splitlines()[-1].startswith("Error: output: '")
    assert "differs from its source" in result.stderr
    assert not out.exists() and not leftovers(tmp_path)


@pytest.mark.parametrize("container", ["folder", "gguf"])
@pytest.mark.parametrize("verb", ["drop-layers", "prune-mlp", "prune-hidden"])
def test_the_same_cuts_pass_their_checks_and_verify(verb, container, tmp_path):
    """The control: unpatched, every one of those cuts is written, checked and proved by `surgery verify`."""
    src = tiny_folder(tmp_path / "src") if container == "folder" else tiny_gguf(tmp_path / "src.gguf")
    out = tmp_path / ("out" if container == "folder" else "out.gguf")
    if verb == "drop-layers":
        args = ["drop-layers", src, "--drop", "1"]
    else:
        option = ["--intermediate-size", "6"] if verb == "prune-mlp" else ["--hidden-size", "6"]
        args = ["prune", src, "--importance", importance_file(tmp_path / "imp.json"), *option]
    run_cli([*args, "-o", out, "-q"])
    result = run_cli(["verify", src, out])
    assert "ok   tensors:" in result.stderr


def test_a_wrong_row_of_a_gguf_trim_is_caught_without_llama_cpp(tmp_path, monkeypatch):
    """The GGUF trim through the same checker, on a file our writer makes: rows gathered in the wrong order."""
    from conftest import small_gguf

    real_gather = execute.gather_rows
    monkeypatch.setattr(execute, "gather_rows", lambda fd_in, fd_out, entry, action, rows: real_gather(
        fd_in, fd_out, entry, action, rows[::-1].copy()))
    src, out = small_gguf(tmp_path / "m.gguf"), tmp_path / "o.gguf"
    (tmp_path / "ids.txt").write_text("\n".join(map(str, [*range(0, 200, 3), 256, 257])))
    result = run_cli(["trim", src, "--keep", tmp_path / "ids.txt", "-o", out], 3)
    assert result.stderr.splitlines()[-1].startswith("Error: output: 'token_embd.weight' differs from its source")
    assert not out.exists() and not leftovers(tmp_path)


def test_a_folder_trim_plan_describes_its_gathers_to_the_checker(copy_fixture):
    """A trim plan's slices: each vocabulary tensor gathered along its first axis by the plan's row source."""
    from conftest import make_plan

    plan = make_plan(copy_fixture("llama-untied"))
    slices = {p.name: p for p in plan.slices()}
    gathered = [a for a in plan.tensor_actions() if a.action == "gather"]
    assert gathered and all(np.array_equal(slices[a.name].rows, plan.rows_for(a)) for a in gathered if a.axis == 0)
