"""Mistral folders hold two layouts: the Hugging Face one and the native one (consolidated.safetensors,
params.json, tekken.json or tokenizer.model.v*). Both are trimmed together and proven with their own clients:
transformers for the HF side, mistral-common for tekken.json, row bytes for consolidated.safetensors.

The tekken file is a real one, shipped inside mistral-common (131,072 ids, 1,000 special tokens); its
tokenizer.json is made from it by transformers' own converter, as Mistral's repositories are.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import tokenizers
from conftest import TOKENIZERS, corpus_lines, run_cli, write_keep
from safetensors.numpy import load_file, save_file

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
mistral_common = pytest.importorskip("mistral_common")
from mistral_common.tokens.tokenizers.tekken import Tekkenizer  # noqa: E402

TEKKEN_SOURCE = Path(mistral_common.__file__).parent / "data" / "tekken_240911.json"
VOCAB = 131072
NATIVE_NAMES = {"model.embed_tokens.weight": "tok_embeddings.weight", "lm_head.weight": "output.weight",
                "model.norm.weight": "norm.weight"}
LAYER_NAMES = {"self_attn.q_proj": "attention.wq", "self_attn.k_proj": "attention.wk", "self_attn.v_proj": "attention.wv",
               "self_attn.o_proj": "attention.wo", "mlp.gate_proj": "feed_forward.w1", "mlp.down_proj": "feed_forward.w2",
               "mlp.up_proj": "feed_forward.w3", "input_layernorm": "attention_norm",
               "post_attention_layernorm": "ffn_norm"}
PARAMS = {"dim": 16, "n_layers": 1, "head_dim": 8, "hidden_dim": 32, "n_heads": 2, "n_kv_heads": 1,
          "norm_eps": 1e-05, "vocab_size": VOCAB, "rope_theta": 1000000.0}


def native_name(hf_name: str) -> str:
    if hf_name in NATIVE_NAMES:
        return NATIVE_NAMES[hf_name]
    layer, rest = hf_name.removeprefix("model.layers.").split(".", 1)
    module, suffix = rest.rsplit(".", 1)
    return f"layers.{layer}.{LAYER_NAMES[module]}.{suffix}"


@pytest.fixture(scope="module")
def mistral_folder(tmp_path_factory) -> Path:
    """A Mistral repository in miniature: sharded HF files, consolidated.safetensors, params.json, tekken.json."""
    from transformers.integrations.mistral.tokenizer import MistralConverter

    root = tmp_path_factory.mktemp("mistral") / "src"
    config = transformers.MistralConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=1, head_dim=8,
                                        tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    model = transformers.MistralForCausalLM(config).eval()
    model.save_pretrained(root, max_shard_size="6MB")  # the embedding and the head in shards of their own
    assert (root / "model.safetensors.index.json").exists()
    hf_tensors = {}
    for shard in root.glob("model-*.safetensors"):
        hf_tensors |= load_file(shard)
    save_file({native_name(k): v for k, v in hf_tensors.items()}, root / "consolidated.safetensors")
    (root / "params.json").write_text(json.dumps(PARAMS, indent=2))
    shutil.copy(TEKKEN_SOURCE, root / "tekken.json")
    MistralConverter(str(TEKKEN_SOURCE)).converted().save(str(root / "tokenizer.json"))
    return root


@pytest.fixture(scope="module")
def keep_list(mistral_folder, tmp_path_factory) -> Path:
    """The ids of the 1,500 most frequent tokens of the training text, by mistral-common's own tokenizer."""
    tekken = Tekkenizer.from_file(str(mistral_folder / "tekken.json"))
    counts = Counter(i for line in corpus_lines("train.txt") for i in tekken.encode(line, bos=False, eos=False))
    return write_keep(tmp_path_factory.mktemp("keep") / "ids.txt", [i for i, _ in counts.most_common(1500)])


@pytest.fixture(scope="module")
def trimmed(mistral_folder, keep_list, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("out") / "mistral-trimmed"
    run_cli(["trim", mistral_folder, "--keep", keep_list, "-o", out, "-q"])
    return out, json.loads((out / "surgery_trim.json").read_text())


def test_both_layouts_are_trimmed_and_nothing_keeps_the_old_length(mistral_folder, trimmed):
    out, record = trimmed
    rows = record["new_vocab_rows"]
    assert 1500 < rows < 20000
    for shard in [*out.glob("*.safetensors")]:
        for name, tensor in load_file(shard).items():
            assert VOCAB not in tensor.shape, (shard.name, name)
    native_src, native_out = load_file(mistral_folder / "consolidated.safetensors"), load_file(out / "consolidated.safetensors")
    old_ids = np.array(record["old_ids"])
    for name in ("tok_embeddings.weight", "output.weight"):
        assert np.array_equal(native_out[name], native_src[name][old_ids]), name
    for name in native_src.keys() - {"tok_embeddings.weight", "output.weight"}:
        assert np.array_equal(native_out[name], native_src[name]), name
    assert json.loads((out / "params.json").read_text()) == {**PARAMS, "vocab_size": rows}
    assert json.loads((out / "config.json").read_text())["vocab_size"] == rows
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {p.name for p in out.glob("model-*.safetensors")}
    run_cli(["verify", mistral_folder, out, "--corpus", Path(__file__).parent.parent / "fixtures/corpus/heldout.txt",
             "-q"])


def test_mistral_common_encodes_to_the_mapped_ids(mistral_folder, trimmed):
    out, record = trimmed
    old_to_new = {old: new for new, old in enumerate(record["old_ids"])}
    source, target = Tekkenizer.from_file(str(mistral_folder / "tekken.json")), Tekkenizer.from_file(str(out / "tekken.json"))
    hf_trimmed = tokenizers.Tokenizer.from_file(str(out / "tokenizer.json"))
    assert target.n_words == record["new_vocab_rows"] == hf_trimmed.get_vocab_size(with_added_tokens=True)
    assert target.num_special_tokens == 1000  # every special token is kept by default
    compared = 0
    for line in corpus_lines("heldout.txt"):
        ids = source.encode(line, bos=True, eos=True)
        if all(i in old_to_new for i in ids):
            compared += 1
            mapped = [old_to_new[i] for i in ids]
            assert target.encode(line, bos=True, eos=True) == mapped, line
            assert hf_trimmed.encode(line, add_special_tokens=False).ids == mapped[1:-1], line
    assert compared >= 20
    for line in corpus_lines("ood.txt"):  # bytes are kept: anything still round-trips
        assert target.decode(target.encode(line, bos=False, eos=False)) == source.decode(
            source.encode(line, bos=False, eos=False))


def test_the_hf_side_gives_the_same_logits(mistral_folder, trimmed):
    out, record = trimmed
    old_ids = record["old_ids"]
    old_to_new = {old: new for new, old in enumerate(old_ids)}
    source_tok = tokenizers.Tokenizer.from_file(str(mistral_folder / "tokenizer.json"))
    original = transformers.MistralForCausalLM.from_pretrained(mistral_folder, dtype=torch.float32).eval()
    small = transformers.MistralForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    texts = [ids for ids in (source_tok.encode(line).ids for line in corpus_lines("heldout.txt")[:80])
             if len(ids) > 3 and all(i in old_to_new for i in ids)][:5]
    assert len(texts) >= 3
    for ids in texts:
        with torch.no_grad():
            expected = original(input_ids=torch.tensor([ids])).logits[..., old_ids]
            got = small(input_ids=torch.tensor([[old_to_new[i] for i in ids]])).logits
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-5)


def test_native_layout_alone_sharded(mistral_folder, keep_list, tmp_path):
    """No config.json, no tokenizer.json: consolidated shards with their index, params.json, tekken.json."""
    src = tmp_path / "native"
    src.mkdir()
    tensors = load_file(mistral_folder / "consolidated.safetensors")
    names = sorted(tensors)
    halves = {"consolidated-00001-of-00002.safetensors": names[: len(names) // 2],
              "consolidated-00002-of-00002.safetensors": names[len(names) // 2:]}
    for shard, shard_names in halves.items():
        save_file({n: tensors[n] for n in shard_names}, src / shard)
    (src / "consolidated.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {n: shard for shard, ns in halves.items() for n in ns}}))
    shutil.copy(mistral_folder / "params.json", src / "params.json")
    shutil.copy(mistral_folder / "tekken.json", src / "tekken.json")
    out = tmp_path / "out"
    run_cli(["trim", src, "--keep", keep_list, "-o", out, "-q"])
    record = json.loads((out / "surgery_trim.json").read_text())
    assert sorted(p.name for p in out.iterdir()) == sorted([*halves, "consolidated.safetensors.index.json",
                                                            "params.json", "tekken.json", "surgery_trim.json"])
    trimmed_tensors = {}
    for shard in halves:
        trimmed_tensors |= load_file(out / shard)
    old_ids = np.array(record["old_ids"])
    assert np.array_equal(trimmed_tensors["output.weight"], tensors["output.weight"][old_ids])
    assert json.loads((out / "params.json").read_text())["vocab_size"] == len(old_ids)
    assert Tekkenizer.from_file(str(out / "tekken.json")).n_words == len(old_ids)
    index = json.loads((out / "consolidated.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == sum(t.nbytes for t in trimmed_tensors.values())


def test_versioned_sentencepiece_files_are_rewritten_too(tmp_path):
    """Mistral v0.3-style folders: tokenizer.model.v3 beside tokenizer.model and tokenizer.json."""
    import sentencepiece
    from conftest import tokenizer_checkpoint

    src = tokenizer_checkpoint("sp-bpe-llama", tmp_path / "src")
    shutil.copy(src / "tokenizer.model", src / "tokenizer.model.v3")
    keep = write_keep(tmp_path / "ids.txt", range(3, 200))
    run_cli(["trim", src, "--keep", keep, "-o", tmp_path / "out", "-q"])
    assert (tmp_path / "out" / "tokenizer.model.v3").read_bytes() == (tmp_path / "out" / "tokenizer.model").read_bytes()
    processor = sentencepiece.SentencePieceProcessor(model_file=str(tmp_path / "out" / "tokenizer.model.v3"))
    record = json.loads((tmp_path / "out" / "surgery_trim.json").read_text())
    assert processor.get_piece_size() == len(record["old_ids"])
    (src / "tokenizer.model.v3").write_bytes((TOKENIZERS / "sp-unigram-t5" / "spiece.model").read_bytes())
    result = run_cli(["trim", src, "--keep", keep, "-o", tmp_path / "out2"], 1)
    assert result.stderr.startswith("Error: tokenizer.model.v3: its pieces differ from tokenizer.model")


def test_tekken_that_disagrees_with_tokenizer_json_is_refused(mistral_folder, keep_list, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(mistral_folder, src)
    data = json.loads((src / "tekken.json").read_text())
    data["vocab"][500]["token_bytes"], data["vocab"][501]["token_bytes"] = (data["vocab"][501]["token_bytes"],
                                                                            data["vocab"][500]["token_bytes"])
    (src / "tekken.json").write_text(json.dumps(data))
    result = run_cli(["trim", src, "--keep", keep_list, "-o", tmp_path / "out"], 1)
    assert result.stderr.startswith("Error: tekken.json: id 1500 is ")
    assert "the two tokenizer files disagree" in result.stderr
    assert not (tmp_path / "out").exists()


def test_drop_reserved_frees_the_special_fillers(mistral_folder, keep_list, tmp_path):
    """tekken's <SPECIAL_20>..<SPECIAL_999> fillers take 980 rows; --drop-reserved frees them."""
    out = tmp_path / "out"
    run_cli(["trim", mistral_folder, "--keep", keep_list, "-o", out, "-q", "--drop-reserved"])
    record = json.loads((out / "surgery_trim.json").read_text())
    target = Tekkenizer.from_file(str(out / "tekken.json"))
    assert target.num_special_tokens == 20 and target.n_words == record["new_vocab_rows"]
    assert [target.id_to_piece(i) for i in range(3)] == ["<unk>", "<s>", "</s>"]
    source = Tekkenizer.from_file(str(mistral_folder / "tekken.json"))
    old_to_new = {old: new for new, old in enumerate(record["old_ids"])}
    lines = [line for line in corpus_lines("heldout.txt")
             if all(i in old_to_new for i in source.encode(line, bos=True, eos=True))]
    assert lines
    for line in lines:
        assert target.encode(line, bos=True, eos=True) == [old_to_new[i] for i in source.encode(line, bos=True, eos=True)]
    run_cli(["verify", mistral_folder, out, "-q"])
