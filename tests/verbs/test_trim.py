"""plan_trim is pure: it reads headers, configs and tokenizer files, never tensor bytes."""

from __future__ import annotations

import json
import os

import numpy as np
from conftest import KEEP, make_plan

from surgery.formats.hf_folder import Checkpoint
from surgery.model.vocab_tensors import find_vocab_tensors
from surgery.tokenizer import TokenizerFiles
from surgery.verbs.keep_list import KeepList
from surgery.verbs.trim import plan_trim


def zero_tensor_data(root):
    """Replace every shard's data by a hole of the same size: same headers, no tensor bytes."""
    for shard in root.glob("*.safetensors"):
        size = shard.stat().st_size
        header_end = 8 + int.from_bytes(shard.read_bytes()[:8], "little")
        with open(shard, "r+b") as f:
            f.truncate(header_end)
            f.truncate(size)


def test_plan_does_not_depend_on_tensor_bytes(copy_fixture):
    for name in ("qwen-tied-sharded", "t5-sentencepiece", "bart-logits-bias"):
        root = copy_fixture(name)
        before = make_plan(root).to_json()
        zero_tensor_data(root)
        assert make_plan(root).to_json() == before


def test_plan_opens_no_tensor_data(copy_fixture, monkeypatch):
    root = copy_fixture("llama-untied")
    ckpt = Checkpoint.open(root)
    vocab = find_vocab_tensors(ckpt)
    tokenizer = TokenizerFiles.load(root)
    keep = KeepList.load(KEEP / "basic.txt", vocab.n_rows)

    def refuse(*args, **kwargs):
        raise AssertionError("plan read tensor bytes")

    monkeypatch.setattr(np, "memmap", refuse)
    monkeypatch.setattr(os, "pread", refuse)
    monkeypatch.setattr(os, "preadv", refuse)
    plan = plan_trim(ckpt, vocab, tokenizer, keep)
    assert plan.new_rows == len(plan.kept_ids)


def test_plan_json_is_complete(copy_fixture):
    plan = make_plan(copy_fixture("llama-untied"), pad_to_multiple_of=64).to_json()
    assert json.loads(json.dumps(plan)) == plan
    assert plan["new_vocab_rows"] % 64 == 0 and plan["new_vocab_rows"] >= plan["kept"]
    assert plan["kept"] == plan["user_ids"] + sum(plan["added_by_rule"].values())
    # ids 0..255 are the byte alphabet, kept whole: bos 0 and suppress_tokens 5..7 keep their ids
    assert [(p["key"], p["old"], p["new"]) for p in plan["config_patches"] if p["file"] == "generation_config.json"] == [
        ("eos_token_id", [1, 702], [1, plan["kept"] - 1])]
    assert plan["rewritten_files"] == ["config.json", "generation_config.json", "tokenizer.json"]
    assert plan["copied_files"] == ["tokenizer_config.json"]


def test_other_weight_formats_are_not_carried(copy_fixture):
    root = copy_fixture("llama-untied")
    (root / "pytorch_model.bin").write_bytes(b"never opened")
    (root / "README.md").write_text("model card")
    (root / "original").mkdir()
    (root / "original" / "consolidated.00.pth").write_bytes(b"never opened")
    (root / "1_Pooling").mkdir()
    (root / "1_Pooling" / "config.json").write_text("{}")
    plan = make_plan(root)
    assert plan.skipped == ("original", "pytorch_model.bin")
    assert "README.md" in plan.copied and "1_Pooling" in plan.copied
    assert any("not carried" in line for line in plan.describe().splitlines())


def test_whisper_timestamp_block_stays_whole_and_last(copy_fixture):
    root = copy_fixture("llama-untied")
    generation = json.loads((root / "generation_config.json").read_text())
    generation["no_timestamps_token_id"] = 650
    (root / "generation_config.json").write_text(json.dumps(generation))
    plan = make_plan(root)
    kept = plan.kept_ids.tolist()
    assert kept[-53:] == list(range(650, 703))
    assert plan.addition_counts()["whisper timestamps"] == 53 - 2  # 650 and 702 are config ids, kept already
    patched = json.loads(plan.files["generation_config.json"])
    assert patched["no_timestamps_token_id"] == len(kept) - 53


def test_record_says_where_every_kept_id_came_from(copy_fixture):
    root = copy_fixture("llama-untied")
    record = make_plan(root).record()
    requested = set(KeepList.load(KEEP / "basic.txt", 703).ids)
    added = [i for ids in record["added_ids_by_rule"].values() for i in ids]
    assert len(added) == len(set(added)) and not set(added) & requested  # each id has one reason
    assert sorted(requested | set(added)) == record["old_ids"]
    assert {rule: len(ids) for rule, ids in record["added_ids_by_rule"].items()} == {
        rule: n for rule, n in record["added_by_rule"].items() if n}
