"""--drop-reserved: reserved placeholder tokens (Llama-3 <|reserved_special_token_N|>, Gemma <unusedN>, tekken
<SPECIAL_N>) are kept by default, and on request only those that a template, config or post-processor names."""

from __future__ import annotations

import json
import shutil

import pytest
import tokenizers
from conftest import CORPUS, TOKENIZERS, run_cli, tokenizer_checkpoint

from surgery.tokenizer import TokenizerFiles

RESERVED = [f"<|reserved_special_token_{n}|>" for n in range(10)]


@pytest.fixture
def llama3_with_placeholders(tmp_path):
    """Ten placeholders: the chat template uses number 3, config.json names number 5 as its pad token."""
    root = tmp_path / "tokenizer"
    shutil.copytree(TOKENIZERS / "bpe-bytelevel-llama3", root)
    tok = tokenizers.Tokenizer.from_file(str(root / "tokenizer.json"))
    tok.add_special_tokens([tokenizers.AddedToken(t, special=True, normalized=False) for t in RESERVED])
    tok.save(str(root / "tokenizer.json"))
    ids = {t: tok.token_to_id(t) for t in RESERVED}
    config = json.loads((root / "tokenizer_config.json").read_text())
    config["chat_template"] = "{% for m in messages %}<|reserved_special_token_3|>{{ m['content'] }}{% endfor %}"
    (root / "tokenizer_config.json").write_text(json.dumps(config))
    rebuilt = tokenizer_checkpoint(root, tmp_path / "ckpt")
    model_config = json.loads((rebuilt / "config.json").read_text())
    (rebuilt / "config.json").write_text(json.dumps({**model_config, "pad_token_id": ids[RESERVED[5]]}))
    return rebuilt, ids


def test_reserved_ids_are_the_unnamed_placeholders(llama3_with_placeholders):
    root, ids = llama3_with_placeholders
    reserved = TokenizerFiles.load(root).reserved_ids()
    # number 3 is named by the chat template; number 5 by config.json, which keeps it by its own rule
    assert reserved == {ids[t] for t in RESERVED} - {ids[RESERVED[3]]}


def test_trim_keeps_them_by_default_and_drops_them_on_request(llama3_with_placeholders, tmp_path):
    root, ids = llama3_with_placeholders
    keep = tmp_path / "ids.txt"
    keep.write_text("\n".join(str(i) for i in range(300, 400)) + "\n")
    run_cli(["trim", root, "--keep", keep, "-o", tmp_path / "all", "-q"])
    kept = set(json.loads((tmp_path / "all" / "surgery_trim.json").read_text())["old_ids"])
    assert set(ids.values()) <= kept
    run_cli(["trim", root, "--keep", keep, "-o", tmp_path / "dropped", "-q", "--drop-reserved"])
    kept = json.loads((tmp_path / "dropped" / "surgery_trim.json").read_text())["old_ids"]
    assert {t for t, i in ids.items() if i in kept} == {RESERVED[3], RESERVED[5]}
    new_config = json.loads((tmp_path / "dropped" / "config.json").read_text())
    assert kept[new_config["pad_token_id"]] == ids[RESERVED[5]]
    out_tok = tokenizers.Tokenizer.from_file(str(tmp_path / "dropped" / "tokenizer.json"))
    assert out_tok.token_to_id(RESERVED[3]) == kept.index(ids[RESERVED[3]]) and out_tok.token_to_id(RESERVED[0]) is None
    run_cli(["verify", root, tmp_path / "dropped", "-q"])


def test_keep_stats_counts_their_rows_and_the_flag_frees_them(llama3_with_placeholders, tmp_path):
    root, ids = llama3_with_placeholders
    ids_file = tmp_path / "ids.txt"
    result = run_cli(["keep", root, "--corpus", CORPUS / "train.txt", "--size", "400", "-o", ids_file, "--stats"])
    assert ("reserved placeholder tokens: 8 rows (e.g. <|reserved_special_token_0|>) that no template or config "
            "names; --drop-reserved frees them") in result.stderr
    figures = json.loads(run_cli(["keep", root, "--corpus", CORPUS / "train.txt", "--size", "400", "-o", ids_file,
                                  "--drop-reserved", "--json", "-q"]).stdout)
    assert figures["reserved_rows"] == 0 and figures["kept"] == 400  # number 5 stays, named by config.json
    listed = {int(line) for line in ids_file.read_text().splitlines() if not line.startswith("#")}
    assert len(listed) == 400 and listed & set(ids.values()) == {ids[RESERVED[3]], ids[RESERVED[5]]}
