"""The tokenizer files taken together: detection, cross-file agreement, side files rewritten."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import TOKENIZERS

from surgery.errors import CheckpointError
from surgery.tokenizer import TokenizerFiles
from surgery.verbs.keep_list import build_old_to_new


def copy_tokenizer(kind, tmp_path):
    root = tmp_path / kind
    shutil.copytree(TOKENIZERS / kind, root)
    return root


def test_kinds_are_named(tmp_path):
    assert TokenizerFiles.load(copy_tokenizer("bpe-bytelevel-gpt2", tmp_path)).kind() == "tokenizer.json BPE byte-level"
    assert TokenizerFiles.load(copy_tokenizer("sp-bpe-llama", tmp_path)).kind() == "tokenizer.json BPE byte_fallback"
    sp_only = copy_tokenizer("sp-unigram-t5", tmp_path)
    (sp_only / "tokenizer.json").unlink()
    files = TokenizerFiles.load(sp_only)
    assert files.kind() == "SentencePiece Unigram"
    assert files.token_to_id()["<extra_id_0>"] == 609  # sentinels from added_tokens_decoder


def test_fairseq_offset_is_detected_and_kept(tmp_path):
    files = TokenizerFiles.load(copy_tokenizer("sp-unigram-xlmr", tmp_path))
    piece_ids = files.piece_to_model_id()
    assert piece_ids[:3] == [3, 0, 2]  # <unk> <s> </s> at fairseq's fixed ids
    assert all(model_id == index + 1 for index, model_id in enumerate(piece_ids) if index >= 3)


def test_disagreeing_files_are_refused(tmp_path):
    root = copy_tokenizer("sp-unigram-xlmr", tmp_path)
    data = json.loads((root / "tokenizer.json").read_text())
    vocab = data["model"]["vocab"]
    vocab[10], vocab[11] = vocab[11], vocab[10]  # two pieces swapped: offsets no longer constant
    (root / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="pieces map to tokenizer.json ids at different offsets"):
        TokenizerFiles.load(root)
    vocab[10][0] = "not-a-piece"
    (root / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=r"piece .* is not in tokenizer.json \(1 pieces missing\)"):
        TokenizerFiles.load(root)


def test_side_files_follow_tokenizer_json(tmp_path):
    root = copy_tokenizer("bpe-bytelevel-gpt2", tmp_path)
    files = TokenizerFiles.load(root)
    kept = np.array(sorted(set(range(0, 700, 3)) | set(range(256))))
    out, _ = files.rewrite(build_old_to_new(kept, files.size()))
    new_json = json.loads(out["tokenizer.json"])
    assert json.loads(out["vocab.json"]) == new_json["model"]["vocab"]
    merges_txt = out["merges.txt"].decode().splitlines()
    assert merges_txt[0].startswith("#version")
    assert [line.split(" ") for line in merges_txt[1:]] == [list(m) if isinstance(m, list) else m.split(" ")
                                                           for m in new_json["model"]["merges"]]
    bert = copy_tokenizer("wordpiece-bert", tmp_path)
    files = TokenizerFiles.load(bert)
    kept = np.array(sorted(set(range(0, 600, 2)) | {1, 2, 3}))
    out, _ = files.rewrite(build_old_to_new(kept, files.size()))
    vocab = json.loads(out["tokenizer.json"])["model"]["vocab"]
    assert out["vocab.txt"].decode().splitlines() == sorted(vocab, key=vocab.get)


def test_named_specials_and_chat_template_tokens_are_required(tmp_path):
    root = copy_tokenizer("bpe-bytelevel-llama3", tmp_path)
    files = TokenizerFiles.load(root)
    token_to_id = files.token_to_id()
    required = files.named_special_ids()
    for token in ("<|begin_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>"):
        assert token_to_id[token] in required


def test_added_tokens_in_a_separate_chat_template_file_are_required(tmp_path):
    root = copy_tokenizer("bpe-bytelevel-llama3", tmp_path)
    data = json.loads((root / "tokenizer.json").read_text())
    new_id = max(a["id"] for a in data["added_tokens"]) + 1
    data["added_tokens"].append({"id": new_id, "content": "<tool_call>", "special": False, "single_word": False,
                                 "lstrip": False, "rstrip": False, "normalized": False})
    (root / "tokenizer.json").write_text(json.dumps(data))
    assert new_id not in TokenizerFiles.load(root).named_special_ids()
    (root / "chat_template.jinja").write_text("{% if tools %}<tool_call>{% endif %}")
    assert new_id in TokenizerFiles.load(root).named_special_ids()
