"""surgery verify: passes on good outputs, and names each kind of corruption."""

from __future__ import annotations

import json

import pytest
from conftest import CORPUS, KEEP, run_cli

from surgery.formats.safetensors import read_header


@pytest.fixture
def trimmed(copy_fixture, tmp_path):
    src = copy_fixture("llama-untied")
    out = tmp_path / "out"
    run_cli(["trim", src, "--keep", KEEP / "basic.txt", "-o", out, "-q"])
    return src, out


def verify(src, out, exit_code):
    return run_cli(["verify", src, out, "--corpus", CORPUS / "heldout.txt", "--corpus", CORPUS / "ood.txt", "--json"],
                   exit_code=exit_code)


def test_verify_passes_on_a_good_output(trimmed):
    src, out = trimmed
    report = json.loads(verify(src, out, 0).stdout)
    assert report["ok"] is True
    checks = {c["check"]: c for c in report["checks"]}
    assert set(checks) == {"tensors", "config.json", "generation_config.json", "tokenizer layout", "merges",
                           "corpus encoding", "corpus decoding"}
    assert "0 decode differently" in checks["corpus decoding"]["detail"]


def flip_byte(path, position):
    raw = bytearray(path.read_bytes())
    raw[position] ^= 0x01
    path.write_bytes(bytes(raw))


def test_verify_finds_a_changed_row(trimmed):
    src, out = trimmed
    entry = read_header(out / "model.safetensors").entry("lm_head.weight")
    flip_byte(out / "model.safetensors", entry.begin + 5 * entry.row_nbytes() + 1)
    result = verify(src, out, 3)
    assert "'lm_head.weight' new row 5 differs from source row" in result.stderr
    assert result.stderr.splitlines()[-1] == f"Error: {out}: 1 check(s) failed: tensors"


def test_verify_finds_a_changed_tensor(trimmed):
    src, out = trimmed
    entry = read_header(out / "model.safetensors").entry("model.norm.weight")
    flip_byte(out / "model.safetensors", entry.begin)
    assert "'model.norm.weight' differs from its source" in verify(src, out, 3).stderr


def test_verify_finds_a_wrong_id_field(trimmed):
    src, out = trimmed
    config = json.loads((out / "config.json").read_text())
    config["bos_token_id"] += 1
    (out / "config.json").write_text(json.dumps(config))
    result = verify(src, out, 3)
    assert "FAIL config.json: 1 id field(s) wrong" in result.stderr
    assert "bos_token_id: was" in result.stderr


def test_verify_finds_a_dropped_merge(trimmed):
    src, out = trimmed
    data = json.loads((out / "tokenizer.json").read_text())
    dropped = data["model"]["merges"].pop(3)
    (out / "tokenizer.json").write_text(json.dumps(data))
    result = verify(src, out, 3)
    assert "FAIL merges:" in result.stderr and f"missing {tuple(dropped)}" in result.stderr


def test_verify_without_trim_record_matches_by_token(trimmed):
    src, out = trimmed
    (out / "surgery_trim.json").unlink()
    assert json.loads(verify(src, out, 0).stdout)["ok"] is True


@pytest.mark.parametrize("fixture", ["qwen-tied-sharded", "t5-sentencepiece", "bart-logits-bias", "llava-text-config"])
def test_verify_passes_on_every_layout_with_padding(fixture, copy_fixture, tmp_path):
    src = copy_fixture(fixture)
    out = tmp_path / "out"
    run_cli(["trim", src, "--keep", KEEP / "basic.txt", "-o", out, "--pad-to-multiple-of", "64", "-q"])
    report = json.loads(run_cli(["verify", src, out, "--json", "-q"]).stdout)
    assert report["ok"] is True, report
    assert "vocab rows equal their source rows" in report["checks"][0]["detail"]


def test_verify_corpus_on_a_sentencepiece_only_checkpoint(copy_fixture, tmp_path):
    src = copy_fixture("t5-sentencepiece")
    (src / "tokenizer.json").unlink()
    out = tmp_path / "out"
    run_cli(["trim", src, "--keep", KEEP / "basic.txt", "-o", out, "-q"])
    report = json.loads(run_cli(["verify", src, out, "--corpus", CORPUS / "heldout.txt", "--json", "-q"]).stdout)
    checks = {c["check"]: c for c in report["checks"]}
    assert report["ok"] and checks["corpus encoding"]["detail"].endswith("0 encode differently")
    assert "300 documents" in checks["corpus encoding"]["detail"]
