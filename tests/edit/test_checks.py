"""trim verifies its output before moving it into place: a wrong byte means exit 3 and no output."""

from __future__ import annotations

import json

from conftest import KEEP, leftovers

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
    from surgery.verbs import vocab as plan_module

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
