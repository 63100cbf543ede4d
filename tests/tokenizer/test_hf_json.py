"""tokenizer.json rewrites on hand-built tokenizers, each pitfall of ../shared/TOKENIZERS.md reproduced."""

from __future__ import annotations

import json

import numpy as np
import tokenizers

from surgery.tokenizer.hf_json import HfTokenizerJson
from surgery.verbs.keep_list import build_old_to_new


def unigram_json(pieces: list[tuple[str, float]], unk_id: int) -> str:
    return json.dumps({"version": "1.0", "added_tokens": [], "normalizer": None, "pre_tokenizer": None,
                       "post_processor": None, "decoder": None, "truncation": None, "padding": None,
                       "model": {"type": "Unigram", "unk_id": unk_id, "vocab": [list(p) for p in pieces],
                                 "byte_fallback": False}})


def trim(text: str, keep: set[int], *, with_support: bool = True) -> tuple[tokenizers.Tokenizer, np.ndarray]:
    tok = HfTokenizerJson.parse("tokenizer.json", text)
    kept = set(keep) | tok.special_ids()
    if with_support:
        kept |= tok.closure_ids(kept)
    kept_ids = np.array(sorted(kept))
    new_text, _ = tok.rewrite(build_old_to_new(kept_ids, tok.size()))
    return tokenizers.Tokenizer.from_str(new_text), kept_ids


COUNTER_EXAMPLE = [("<unk>", 0.0), ("a", -1), ("b", -20), ("c", -20), ("d", -40), ("ab", -14), ("cd", -14), ("bc", -1)]


def test_unigram_counter_example_needs_single_characters():
    """pieces a b c d ab cd bc; keep ab cd a bc: 'abcd' must stay [ab, cd], not [a, bc, <unk>]."""
    text = unigram_json(COUNTER_EXAMPLE, 0)
    original = tokenizers.Tokenizer.from_str(text)
    assert original.encode("abcd").tokens == ["ab", "cd"]
    keep = {5, 6, 1, 7}
    trimmed, _ = trim(text, keep)
    assert trimmed.encode("abcd").tokens == ["ab", "cd"]
    naive, _ = trim(text, keep, with_support=False)
    assert [naive.id_to_token(i) for i in naive.encode("abcd").ids] == ["a", "bc", "<unk>"]


def test_unigram_unk_id_is_remapped():
    pieces = [("a", -1.0), ("b", -2.0), ("<unk>", 0.0), ("c", -3.0)]
    trimmed, kept_ids = trim(unigram_json(pieces, 2), {1, 3})
    data = json.loads(trimmed.to_str())
    assert kept_ids.tolist() == [1, 2, 3] and data["model"]["unk_id"] == 1
    assert [trimmed.id_to_token(i) for i in trimmed.encode("z").ids] == ["<unk>"]
    # the pitfall: an unk_id left at 2 silently turns unknown text into the real piece "c"
    data["model"]["unk_id"] = 2
    stale = tokenizers.Tokenizer.from_str(json.dumps(data))
    assert [stale.id_to_token(i) for i in stale.encode("z").ids] == ["c"]


def bpe_json(vocab: list[str], merges: list, **model) -> str:
    return json.dumps({"version": "1.0", "added_tokens": [], "normalizer": None, "pre_tokenizer": None,
                       "post_processor": None, "decoder": None, "truncation": None, "padding": None,
                       "model": {"type": "BPE", "vocab": {t: i for i, t in enumerate(vocab)}, "merges": merges,
                                 "dropout": None, "unk_token": None, **model}})


def test_bpe_merges_need_inputs_and_result_and_keep_their_form():
    vocab = ["r", "e", "t", "u", "n", "re", "ret", "ur", "urn", "return"]
    for merges in (["r e", "re t", "u r", "ur n", "ret urn"], [["r", "e"], ["re", "t"], ["u", "r"], ["ur", "n"],
                                                                   ["ret", "urn"]]):
        text = bpe_json(vocab, merges)
        tok = HfTokenizerJson.parse("tokenizer.json", text)
        assert tok.closure_ids({9}) == {0, 1, 2, 3, 4, 5, 6, 7, 8, 9}
        trimmed, _ = trim(text, {9})
        assert trimmed.encode("return").tokens == ["return"]
        new = json.loads(trimmed.to_str())
        assert len(new["model"]["merges"]) == 5
        written = json.loads(tok.rewrite(build_old_to_new(np.arange(10), 10))[0])["model"]["merges"]
        assert written == merges  # strings stay strings, pairs stay pairs
        # without the closure "urn" is gone and "return" can no longer be built
        naive, _ = trim(text, {0, 1, 2, 3, 4, 9}, with_support=False)
        assert naive.encode("return").tokens != ["return"]


def test_continuing_subword_prefix_closure():
    vocab = ["a", "b", "##a", "##b", "ab", "##ab", "aba"]
    merges = ["a ##b", "##a ##b", "ab ##a"]
    tok = HfTokenizerJson.parse("tokenizer.json", bpe_json(vocab, merges, continuing_subword_prefix="##"))
    assert tok.closure_ids({6}) == {0, 3, 2, 4, 6}  # a, ##b, ##a, ab, aba
    assert tok.closure_ids({5}) == {2, 3, 5}


def test_tokens_no_merge_builds_are_skipped():
    tok = HfTokenizerJson.parse("tokenizer.json", bpe_json(["x", "y", "xy", "yx"], ["x y"], ignore_merges=True))
    assert tok.closure_ids({3}) == set()  # "yx" is a whole-word token only


def test_added_tokens_and_post_processor_are_renumbered():
    data = json.loads(bpe_json(["a", "b", "c", "<s>"], []))
    data["added_tokens"] = [{"id": 3, "content": "<s>", "special": True, "single_word": False, "lstrip": False,
                             "rstrip": False, "normalized": False},
                            {"id": 4, "content": "<tool>", "special": True, "single_word": False, "lstrip": False,
                             "rstrip": False, "normalized": False}]
    data["post_processor"] = {"type": "Sequence", "processors": [
        {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                                                  {"Sequence": {"id": "A", "type_id": 0}}],
         "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
         "special_tokens": {"<s>": {"id": "<s>", "ids": [3], "tokens": ["<s>"]}}}]}
    data["padding"] = {"strategy": "BatchLongest", "direction": "Right", "pad_to_multiple_of": None, "pad_id": 4,
                       "pad_type_id": 0, "pad_token": "<tool>"}
    tok = HfTokenizerJson.parse("tokenizer.json", json.dumps(data))
    assert tok.special_ids() == {3, 4}
    trimmed, kept_ids = trim(json.dumps(data), {2})
    assert kept_ids.tolist() == [2, 3, 4]
    new = json.loads(trimmed.to_str())
    assert new["post_processor"]["processors"][0]["special_tokens"]["<s>"]["ids"] == [1]
    assert new["padding"]["pad_id"] == 2
    assert [(a["content"], a["id"]) for a in new["added_tokens"]] == [("<s>", 1), ("<tool>", 2)]
    assert trimmed.encode("c").ids == [1, 0]


def test_roberta_and_bert_processing_ids_are_renumbered():
    for kind in ("RobertaProcessing", "BertProcessing"):
        data = json.loads(bpe_json(["<s>", "<pad>", "</s>", "a", "b", "c"], []))
        data["added_tokens"] = [{"id": i, "content": t, "special": True, "single_word": False, "lstrip": False,
                                 "rstrip": False, "normalized": False} for i, t in ((0, "<s>"), (2, "</s>"))]
        data["post_processor"] = {"type": kind, "sep": ["</s>", 2], "cls": ["<s>", 0]}
        if kind == "RobertaProcessing":
            data["post_processor"].update(trim_offsets=True, add_prefix_space=False)
        text = json.dumps(data)
        assert HfTokenizerJson.parse("tokenizer.json", text).special_ids() == {0, 2}
        trimmed, kept_ids = trim(text, {5})
        assert kept_ids.tolist() == [0, 2, 5]
        processor = json.loads(trimmed.to_str())["post_processor"]
        assert processor["sep"] == ["</s>", 1] and processor["cls"] == ["<s>", 0]
        assert trimmed.encode("c").ids == [0, 2, 1]
