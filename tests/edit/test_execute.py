"""apply_plan writes the planned bytes: gathered rows in order, copies byte for byte, index totals."""

from __future__ import annotations

import json

import numpy as np
from conftest import make_plan
from safetensors.numpy import load_file

from surgery.edit.execute import apply_plan
from surgery.formats.safetensors import read_header, read_rows


def test_rows_are_gathered_in_kept_order(copy_fixture, tmp_path):
    root = copy_fixture("llama-untied")
    plan = make_plan(root, pad_to_multiple_of=64)
    apply_plan(plan, tmp_path / "out")
    old = load_file(root / "model.safetensors")
    new = load_file(tmp_path / "out" / "model.safetensors")
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        np.testing.assert_array_equal(new[name], old[name][plan.row_source])
        # padding rows repeat the pad source row exactly
        np.testing.assert_array_equal(new[name][len(plan.kept_ids):], np.broadcast_to(
            old[name][plan.pad_source], new[name][len(plan.kept_ids):].shape))
    for name in old:
        if name not in ("model.embed_tokens.weight", "lm_head.weight"):
            assert new[name].tobytes() == old[name].tobytes()


def test_vocab_on_axis_1_and_f16(copy_fixture, tmp_path):
    root = copy_fixture("bart-logits-bias")
    plan = make_plan(root)
    apply_plan(plan, tmp_path / "out")
    old = load_file(root / "model.safetensors")
    new = load_file(tmp_path / "out" / "model.safetensors")
    np.testing.assert_array_equal(new["final_logits_bias"], old["final_logits_bias"][:, plan.kept_ids])
    assert new["final_logits_bias"].dtype == np.float16


def test_bf16_sharded_output_and_index(copy_fixture, tmp_path):
    root = copy_fixture("qwen-tied-sharded")
    plan = make_plan(root)
    apply_plan(plan, tmp_path / "out")
    entry = read_header(tmp_path / "out" / "model-00001-of-00002.safetensors").entry("model.embed_tokens.weight")
    source = read_header(root / "model-00001-of-00002.safetensors").entry("model.embed_tokens.weight")
    assert entry.dtype == "BF16" and entry.shape == (len(plan.kept_ids), 8)
    assert np.array_equal(read_rows(entry), read_rows(source)[plan.kept_ids])
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == plan.totals()["bytes_after"]
    assert set(index["weight_map"]) == {a.name for a in plan.tensor_actions()}
    record = json.loads((tmp_path / "out" / "surgery_trim.json").read_text())
    assert record["old_ids"] == plan.kept_ids.tolist()


def test_the_files_are_checked_while_the_shards_are_written(copy_fixture, tmp_path, monkeypatch):
    """A trim's tokenizer and config checks run in the main thread while worker threads copy the shards: a shard
    write that waits for them finishes only because they ran beside it."""
    import threading

    from surgery.edit import execute
    from surgery.verbs.trim import TrimPlan

    checked = threading.Event()
    real_write, real_check = execute._write_one, TrimPlan.check_files
    waited = []

    def write_after_the_check(*args):
        waited.append(checked.wait(timeout=30))
        real_write(*args)

    def check_then_signal(self, out):
        passed = real_check(self, out)
        checked.set()
        return passed

    monkeypatch.setattr(execute, "_write_one", write_after_the_check)
    monkeypatch.setattr(TrimPlan, "check_files", check_then_signal)
    plan = make_plan(copy_fixture("qwen-tied-sharded"))
    apply_plan(plan, tmp_path / "out")
    assert waited and all(waited)
    assert sorted(p.name for p in (tmp_path / "out").glob("*.safetensors")) == sorted(s.name for s in plan.shards)
