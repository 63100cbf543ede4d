"""GGUF files trimmed directly, proven in llama.cpp itself (llama-cpp-python built from its sdist).

Tiny models (n_embd 256, so that K- and IQ-quant rows are whole blocks) are built with transformers, converted
with llama.cpp's own converter, quantized with llama.cpp's own quantizer, trimmed by the CLI, and loaded by
llama.cpp: held-back text whose ids are all kept tokenizes to the mapped ids, out-of-domain text decodes as
the source decodes it, and the logits on the kept ids equal the source GGUF's.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tokenizers
from conftest import TOKENIZERS, corpus_lines, run_cli, write_keep

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
llama_cpp = pytest.importorskip("llama_cpp")
from llama_cpp_tools import convert, quantize  # noqa: E402

from surgery.formats.gguf import encode_header, read_gguf  # noqa: E402
from surgery.verbs.trim import RECORD_KEY  # noqa: E402

MODELS = {  # name: (config class, fixture tokenizer, tied, BPE pre-tokenizer name for the converter)
    "llama-spm": ("LlamaConfig", "sp-bpe-llama", False, None),
    "llama3-bpe": ("LlamaConfig", "bpe-bytelevel-llama3", False, "llama-bpe"),
    "qwen2-tied-bpe": ("Qwen2Config", "bpe-bytelevel-gpt2", True, "gpt-2"),
}
CASES = [  # (model, llama.cpp file type, type forced on token_embd and output)
    ("llama-spm", "F16", "F16"), ("llama-spm", "BF16", "BF16"), ("llama-spm", "Q8_0", "Q8_0"),
    ("llama-spm", "Q4_K_M", "Q4_K"), ("llama-spm", "Q6_K", "Q6_K"), ("llama-spm", "IQ4_XS", "IQ4_XS"),
    ("llama3-bpe", "F16", "F16"), ("llama3-bpe", "Q8_0", "Q8_0"), ("llama3-bpe", "Q4_K_M", "Q4_K"),
    ("llama3-bpe", "IQ4_NL", "IQ4_NL"), ("qwen2-tied-bpe", "F16", "F16"), ("qwen2-tied-bpe", "Q6_K", "Q6_K"),
]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("gguf")


def hf_model(name: str, root: Path, layers: int = 2) -> Path:
    config_class, tokenizer, tied, _ = MODELS[name]
    n_tokens = tokenizers.Tokenizer.from_file(str(TOKENIZERS / tokenizer / "tokenizer.json")).get_vocab_size(True)
    config = getattr(transformers, config_class)(
        vocab_size=n_tokens, hidden_size=256, intermediate_size=512, num_hidden_layers=layers, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=tied)
    torch.manual_seed(0)
    model = getattr(transformers, config_class.replace("Config", "ForCausalLM"))(config)
    model.save_pretrained(root)
    for path in (TOKENIZERS / tokenizer).iterdir():
        shutil.copy(path, root / path.name)
    return root


@pytest.fixture(scope="module")
def f32_ggufs(workdir) -> dict[str, Path]:
    """Each model converted once by llama.cpp's converter; the quantized types are made from these."""
    return {name: convert(hf_model(name, workdir / name), workdir / f"{name}-f32.gguf", "f32", MODELS[name][3])
            for name in MODELS}


def source_gguf(f32_ggufs, workdir, model: str, ftype: str, tensor_type: str) -> Path:
    path = workdir / f"{model}-{ftype}.gguf"
    if not path.exists():
        quantize(f32_ggufs[model], path, ftype, tensor_type, tensor_type)
    return path


def keep_list(model: str, path: Path) -> Path:
    tok = tokenizers.Tokenizer.from_file(str(TOKENIZERS / MODELS[model][1] / "tokenizer.json"))
    from collections import Counter

    counts = Counter(i for e in tok.encode_batch(corpus_lines("train.txt")[:300], add_special_tokens=False)
                     for i in e.ids)
    return write_keep(path, [i for i, _ in counts.most_common(tok.get_vocab_size(True) // 2)])


def record_of(path: Path) -> dict:
    return json.loads(read_gguf(path).get(RECORD_KEY))


def llama(path: Path):
    return llama_cpp.Llama(model_path=str(path), logits_all=True, n_ctx=256, verbose=False)


def assert_same_behaviour(src: Path, out: Path, record: dict) -> int:
    """llama.cpp on both files: mapped tokens, same decoding, same logits on kept ids. Returns texts compared."""
    old_ids = record["old_ids"]
    old_to_new = {old: new for new, old in enumerate(old_ids)}
    source, trimmed = llama(src), llama(out)
    assert trimmed.n_vocab() == record["new_vocab_rows"]
    compared = []
    for line in corpus_lines("heldout.txt"):
        ids = source.tokenize(line.encode(), add_bos=True, special=False)
        if all(i in old_to_new for i in ids):
            assert trimmed.tokenize(line.encode(), add_bos=True, special=False) == [old_to_new[i] for i in ids], line
            compared.append(ids)
    assert len(compared) >= 10
    for line in corpus_lines("ood.txt"):  # bytes are kept: text outside the kept tokens still round-trips
        assert trimmed.detokenize(trimmed.tokenize(line.encode(), add_bos=False)) == source.detokenize(
            source.tokenize(line.encode(), add_bos=False)), line
    for ids in compared[:3]:
        source.reset()
        source.eval(ids)
        trimmed.reset()
        trimmed.eval([old_to_new[i] for i in ids])
        expected = np.array(source.scores[: len(ids)])[:, old_ids]
        got = np.array(trimmed.scores[: len(ids)])[:, : len(old_ids)]
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)
        assert np.array_equal(got.argmax(-1), expected.argmax(-1))
    return len(compared)


@pytest.mark.parametrize("model,ftype,tensor_type", CASES, ids=lambda v: str(v))
def test_trimmed_gguf_behaves_the_same_in_llama_cpp(model, ftype, tensor_type, f32_ggufs, workdir, tmp_path):
    src = source_gguf(f32_ggufs, workdir, model, ftype, tensor_type)
    keep = keep_list(model, tmp_path / "ids.txt")
    out = tmp_path / "out.gguf"
    plan = json.loads(run_cli(["trim", src, "--keep", keep, "--dry-run", "--json"]).stdout)
    assert plan["tied"] == MODELS[model][2]
    assert {t["name"]: t["dtype"] for t in plan["tensors"]}["token_embd.weight"] == tensor_type
    run_cli(["trim", src, "--keep", keep, "-o", out, "-q"])
    record = record_of(out)
    assert record["new_vocab_rows"] < record["old_vocab_rows"]
    source_types = {t.name: t.dtype for t in read_gguf(src).tensors}
    assert {t.name: t.dtype for t in read_gguf(out).tensors} == source_types  # nothing requantized
    assert_same_behaviour(src, out, record)
    run_cli(["verify", src, out, "-q"])


def test_split_gguf_in_and_out(workdir, tmp_path):
    src_dir = workdir / "llama3-bpe"
    first = convert(src_dir, tmp_path / "split.gguf", "f16", MODELS["llama3-bpe"][3], "--split-max-tensors", "7")
    parts = sorted(tmp_path.glob("split-*-of-*.gguf"))
    assert len(parts) == 3, parts
    keep = keep_list("llama3-bpe", tmp_path / "ids.txt")
    run_cli(["trim", parts[0], "--keep", keep, "-o", tmp_path / "small.gguf", "-q"])
    written = sorted(tmp_path.glob("small-*-of-*.gguf"))
    assert [p.name for p in written] == [f"small-0000{i}-of-00003.gguf" for i in (1, 2, 3)]
    assert [len(read_gguf(p).tensors) for p in written] == [len(read_gguf(p).tensors) for p in parts]
    assert not first.exists()
    assert_same_behaviour(parts[0], written[0], record_of(written[0]))
    run_cli(["verify", parts[0], written[0], "-q"])


def test_padding_rows_in_gguf(f32_ggufs, workdir, tmp_path):
    src = source_gguf(f32_ggufs, workdir, "llama-spm", "Q8_0", "Q8_0")
    out = tmp_path / "out.gguf"
    run_cli(["trim", src, "--keep", keep_list("llama-spm", tmp_path / "ids.txt"), "-o", out, "-q",
             "--pad-to-multiple-of", "64"])
    record = record_of(out)
    n_kept, n_rows = record["kept"], record["new_vocab_rows"]
    assert n_rows % 64 == 0 and n_rows > n_kept
    tokens = read_gguf(out).get("tokenizer.ggml.tokens")
    assert len(tokens) == n_rows and tokens[n_kept] == f"[PAD{n_kept}]"
    trimmed = llama(out)
    trimmed.eval([1, 5, 9, 20])
    logits = np.array(trimmed.scores[:4])
    source_row = record["old_ids"].index(record["padding_row_source_id"])
    assert np.array_equal(logits[:, n_kept:], np.repeat(logits[:, source_row : source_row + 1], n_rows - n_kept, 1))
    assert int(logits.argmax(-1).max()) < n_kept


def rewrite(src: Path, dst: Path, mutate) -> Path:
    """Copy a GGUF with its metadata changed by `mutate(kvs)`; tensor data copied as is."""
    gguf = read_gguf(src)
    kvs = list(gguf.kvs.values())
    mutate({kv.key: kv for kv in kvs})
    infos = [(t.name, t.ne, t.ggml_type, t.begin - gguf.header_nbytes) for t in gguf.tensors]
    raw = src.read_bytes()
    dst.write_bytes(encode_header(gguf.version, kvs, infos, gguf.alignment) + raw[gguf.header_nbytes:])
    return dst


def test_verify_catches_a_damaged_row_tensor_id_and_merge(f32_ggufs, workdir, tmp_path):
    src = source_gguf(f32_ggufs, workdir, "llama3-bpe", "Q8_0", "Q8_0")
    out = tmp_path / "out.gguf"
    run_cli(["trim", src, "--keep", keep_list("llama3-bpe", tmp_path / "ids.txt"), "-o", out, "-q"])
    tensors = {t.name: t for t in read_gguf(out).tensors}

    def flipped(position: int) -> Path:
        damaged = tmp_path / "damaged.gguf"
        raw = bytearray(out.read_bytes())
        raw[position] ^= 0xFF
        damaged.write_bytes(bytes(raw))
        return damaged

    embed, attn = tensors["token_embd.weight"], tensors["blk.0.attn_q.weight"]
    for damaged, failing in [
        (flipped(embed.begin + 5 * embed.row_nbytes() + 3), "tensors"),
        (flipped(attn.begin + 100), "tensors"),
        (rewrite(out, tmp_path / "id.gguf", lambda kvs: setattr(kvs["tokenizer.ggml.eos_token_id"], "value", 7)),
         "token id keys"),
        (rewrite(out, tmp_path / "merge.gguf", lambda kvs: kvs["tokenizer.ggml.merges"].value.pop(3)), "merges"),
    ]:
        result = run_cli(["verify", src, damaged], 3)
        assert f"FAIL {failing}" in result.stderr, result.stderr


def test_gguf_refusals(f32_ggufs, workdir, tmp_path):
    src = source_gguf(f32_ggufs, workdir, "llama-spm", "F16", "F16")
    keep = keep_list("llama-spm", tmp_path / "ids.txt")
    result = run_cli(["trim", src, "--keep", keep, "-o", tmp_path / "out.bin"], 2)
    assert result.stderr.startswith("Error: ") and "a GGUF output must end in .gguf" in result.stderr
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + bytes(100))
    result = run_cli(["trim", bad, "--keep", keep, "-o", tmp_path / "o.gguf"], 1)
    assert result.stderr == "Error: bad.gguf: GGUF version 0 is not supported (2, 3)\n"
    too_far = tmp_path / "far.txt"
    too_far.write_text("900\n")
    result = run_cli(["trim", src, "--keep", too_far, "-o", tmp_path / "o.gguf"], 2)
    assert "id 900 is out of range (vocab has 800 ids: 0..799)" in result.stderr
    assert not list(tmp_path.glob("*o.gguf*")) and not list(tmp_path.glob(".o.gguf*"))


def test_keep_on_a_gguf_with_the_models_hf_tokenizer(f32_ggufs, workdir, tmp_path):
    src = source_gguf(f32_ggufs, workdir, "llama3-bpe", "Q4_K_M", "Q4_K")
    ids = tmp_path / "ids.txt"
    corpus = Path(__file__).parent.parent / "fixtures" / "corpus" / "train.txt"
    result = run_cli(["keep", src, "--corpus", corpus, "--size", "300", "-o", ids, "--json", "-q",
                      "--tokenizer", TOKENIZERS / "bpe-bytelevel-llama3"])
    figures = json.loads(result.stdout)
    listed = [int(line) for line in ids.read_text().splitlines() if not line.startswith("#")]
    assert len(listed) == 300 == figures["kept"]
    out = tmp_path / "out.gguf"
    summary = json.loads(run_cli(["trim", src, "--keep", ids, "-o", out, "--json", "-q"]).stdout)
    assert summary["new_vocab_rows"] == 300 and sum(summary["added_by_rule"].values()) == 0
    assert figures["bytes_after"] == summary["bytes_after"]  # keep's savings are the trim's, quantized too
    result = run_cli(["keep", src, "--corpus", corpus, "--size", "300", "-o", ids,
                      "--tokenizer", TOKENIZERS / "sp-bpe-llama"], 2)
    assert "not the same vocabulary" in result.stderr
    result = run_cli(["keep", src, "--corpus", corpus, "--size", "300", "-o", ids], 2)
    assert "this GGUF embeds none (tokenizer.huggingface.json)" in result.stderr and "--tokenizer DIR" in result.stderr


def test_drop_layers_on_a_gguf_equals_converting_the_pruned_checkpoint(tmp_path):
    """llama.cpp gives the same logits for a GGUF whose layers surgery dropped and for the GGUF converted from
    the Hugging Face checkpoint whose layers surgery dropped."""
    hf = hf_model("llama3-bpe", tmp_path / "hf", layers=4)
    gguf = convert(hf, tmp_path / "full.gguf", "f16", MODELS["llama3-bpe"][3])
    run_cli(["drop-layers", gguf, "--drop", "1-2", "-o", tmp_path / "dropped.gguf", "-q"])
    run_cli(["drop-layers", hf, "--drop", "1-2", "-o", tmp_path / "hf-dropped", "-q"])
    reference = convert(tmp_path / "hf-dropped", tmp_path / "reference.gguf", "f16", MODELS["llama3-bpe"][3])
    dropped = read_gguf(tmp_path / "dropped.gguf")
    assert dropped.get("llama.block_count") == 2
    assert sorted(t.name for t in dropped.tensors) == sorted(t.name for t in read_gguf(reference).tensors)
    ids = [1, 50, 200, 300, 17, 99, 4, 250]
    logits = []
    for path in (tmp_path / "dropped.gguf", reference):
        model = llama(path)
        model.eval(ids)
        logits.append(np.array(model.scores[: len(ids)]))
    np.testing.assert_array_equal(logits[0], logits[1])
    full = llama(gguf)
    full.eval(ids)
    assert not np.allclose(np.array(full.scores[: len(ids)]), logits[0])  # the layers mattered


@pytest.mark.parametrize("option,value", [("--intermediate-size", "320"), ("--num-attention-heads", "2"),
                                          ("--hidden-size", "192")])
def test_prune_on_a_gguf_equals_converting_the_pruned_checkpoint(option, value, tmp_path):
    """llama.cpp gives the same logits for a GGUF pruned by surgery and for the GGUF converted from the Hugging
    Face checkpoint pruned by surgery, with the same importance file."""
    hf = hf_model("llama3-bpe", tmp_path / "hf")
    gguf = convert(hf, tmp_path / "full.gguf", "f16", MODELS["llama3-bpe"][3])
    rng = np.random.default_rng(3)
    imp = tmp_path / "imp.json"
    imp.write_text(json.dumps({"format": "surgery-importance/1", "mlp": rng.random((2, 512)).tolist(),
                               "heads": rng.random((2, 4)).tolist(), "hidden": rng.random(256).tolist()}))
    run_cli(["prune", gguf, "--importance", imp, option, value, "-o", tmp_path / "pruned.gguf", "-q"])
    run_cli(["prune", hf, "--importance", imp, option, value, "-o", tmp_path / "hf-pruned", "-q"])
    reference = convert(tmp_path / "hf-pruned", tmp_path / "reference.gguf", "f16", MODELS["llama3-bpe"][3])
    ids = [1, 50, 200, 300, 17, 99, 4, 250]
    logits = []
    for path in (tmp_path / "pruned.gguf", reference):
        model = llama(path)
        model.eval(ids)
        logits.append(np.array(model.scores[: len(ids)]))
    np.testing.assert_allclose(logits[0], logits[1], rtol=0, atol=1e-5)


def test_prune_refuses_to_cut_quantized_blocks(f32_ggufs, workdir, tmp_path):
    src = source_gguf(f32_ggufs, workdir, "llama-spm", "Q8_0", "Q8_0")
    imp = tmp_path / "imp.json"
    imp.write_text(json.dumps({"format": "surgery-importance/1", "mlp": np.ones((2, 512)).tolist()}))
    result = run_cli(["prune", src, "--importance", imp, "--intermediate-size", "256", "-o", tmp_path / "o.gguf"], 2)
    assert "cutting columns of 'blk.0.ffn_down.weight' (Q8_0) would cut inside its quantized blocks" in result.stderr


def test_gguf_metadata_kept_patched_and_dropped(f32_ggufs, workdir, tmp_path):
    """tokenizer.ggml.model, .pre, chat_template and general.* unchanged; vocab_size, suppress_tokens patched;
    an embedded tokenizer.huggingface.json (it would describe the old vocabulary) dropped with a note."""
    from surgery.formats.gguf import ARRAY, INT32, STRING, UINT32, KeyValue

    base = source_gguf(f32_ggufs, workdir, "llama3-bpe", "F16", "F16")

    def add(kvs):
        kvs["tokenizer.chat_template"] = KeyValue("tokenizer.chat_template", STRING, "{{ '<|eot_id|>' }}")
        kvs["llama.vocab_size"] = KeyValue("llama.vocab_size", UINT32, 703)
        kvs["tokenizer.ggml.suppress_tokens"] = KeyValue("tokenizer.ggml.suppress_tokens", ARRAY,
                                                         np.array([5, 650, 700], np.int32), INT32)
        kvs["tokenizer.huggingface.json"] = KeyValue("tokenizer.huggingface.json", STRING, "{}")

    def rewrite_adding(src, dst):
        gguf = read_gguf(src)
        kvs = dict(gguf.kvs)
        add(kvs)
        infos = [(t.name, t.ne, t.ggml_type, t.begin - gguf.header_nbytes) for t in gguf.tensors]
        raw = src.read_bytes()
        dst.write_bytes(encode_header(gguf.version, list(kvs.values()), infos, gguf.alignment) + raw[gguf.header_nbytes:])
        return dst

    src = rewrite_adding(base, tmp_path / "src.gguf")
    ids = tmp_path / "ids.txt"
    ids.write_text("\n".join(str(i) for i in range(0, 300)) + "\n")
    result = run_cli(["trim", src, "--keep", ids, "-o", tmp_path / "out.gguf"])
    assert "note: tokenizer.huggingface.json dropped: it describes the untrimmed vocabulary" in result.stderr
    old, new = read_gguf(src), read_gguf(tmp_path / "out.gguf")
    record = record_of(tmp_path / "out.gguf")
    for key in ("tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.chat_template", "general.architecture",
                "general.name"):
        assert new.get(key) == old.get(key), key
    assert new.get("llama.vocab_size") == record["new_vocab_rows"]
    old_to_new = {old: new for new, old in enumerate(record["old_ids"])}
    assert 650 not in old_to_new  # a removed id is dropped from the list, kept ones renumbered
    assert new.get("tokenizer.ggml.suppress_tokens").tolist() == [5, old_to_new[700]]
    assert "tokenizer.huggingface.json" not in new.kvs
    assert 702 in record["old_ids"]  # <|eot_id|>, named by the chat template and the eos id


def test_a_wrong_row_is_caught_before_the_rename(f32_ggufs, workdir, tmp_path, monkeypatch):
    import surgery.edit.execute as execute

    src = source_gguf(f32_ggufs, workdir, "llama-spm", "Q8_0", "Q8_0")
    real = execute.gather_rows
    monkeypatch.setattr(execute, "gather_rows", lambda fd_in, fd_out, entry, action, rows: real(
        fd_in, fd_out, entry, action, rows[::-1].copy()))
    result = run_cli(["trim", src, "--keep", keep_list("llama-spm", tmp_path / "ids.txt"), "-o", tmp_path / "o.gguf"], 3)
    assert result.stderr.splitlines()[-1] == ("Error: output: 'output.weight' differs from its source 'output.weight' "
                                              "(output row 0)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ids.txt"]  # no output, no partial file
