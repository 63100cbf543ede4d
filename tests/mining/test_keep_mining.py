"""surgery keep: exact sizes after trim, coverage recomputed independently, balance, every input form."""

from __future__ import annotations

import gzip
import json
from collections import Counter

import pytest
import tokenizers
from conftest import CORPUS, corpus_lines, run_cli


@pytest.fixture
def llama(copy_fixture):
    return copy_fixture("llama-untied")


def ids_in(path):
    return [int(line) for line in path.read_text().splitlines() if line and not line.startswith("#")]


@pytest.mark.parametrize("fixture,size", [("llama-untied", 320), ("llama-untied", 448), ("t5-sentencepiece", 256),
                                          ("qwen-tied-sharded", 384)])
def test_size_is_exact_after_trim(fixture, size, copy_fixture, tmp_path):
    src = copy_fixture(fixture)
    ids = tmp_path / "ids.txt"
    figures = json.loads(run_cli(["keep", src, "--corpus", CORPUS / "train.txt", "--size", size, "-o", ids,
                                  "--json", "-q"]).stdout)
    assert len(ids_in(ids)) == size
    result = json.loads(run_cli(["trim", src, "--keep", ids, "-o", tmp_path / "o", "--json", "-q"]).stdout)
    assert result["new_vocab_rows"] == size
    for key in ("params_before", "params_after", "bytes_before", "bytes_after"):
        assert figures[key] == result[key], key  # keep's savings are the trim's
    assert sum(result["added_by_rule"].values()) == 0  # the list is already the final set


def test_coverage_is_recomputed_independently(llama, tmp_path):
    ids = tmp_path / "ids.txt"
    figures = json.loads(run_cli(["keep", llama, "--corpus", CORPUS / "train.txt", "--coverage", "0.9", "-o", ids,
                                  "--json", "-q"]).stdout)
    tok = tokenizers.Tokenizer.from_file(str(llama / "tokenizer.json"))
    counts = Counter(i for enc in tok.encode_batch(corpus_lines("train.txt"), add_special_tokens=False) for i in enc.ids)
    total = sum(counts.values())
    kept = set(ids_in(ids))
    assert figures["tokens"] == total and figures["distinct_tokens"] == len(counts)
    assert figures["coverage"] == pytest.approx(sum(counts[i] for i in kept) / total)
    assert figures["coverage"] >= 0.9
    # the smallest prefix: the top-k frequent ids minus the last one would not reach 0.9
    ranked = sorted(counts, key=lambda i: (-counts[i], i))
    k = next(n for n in range(1, len(ranked) + 1) if sum(counts[i] for i in ranked[:n]) / total >= 0.9 - 1e-12)
    assert set(ranked[:k]) <= kept and not set(ranked[k:k + 1]) <= set(ranked[:k])


def test_top_k_and_min_count(llama, tmp_path):
    tok = tokenizers.Tokenizer.from_file(str(llama / "tokenizer.json"))
    counts = Counter(i for enc in tok.encode_batch(corpus_lines("train.txt"), add_special_tokens=False) for i in enc.ids)
    ids = tmp_path / "ids.txt"
    run_cli(["keep", llama, "--corpus", CORPUS / "train.txt", "--min-count", "50", "-o", ids, "-q"])
    assert {i for i, c in counts.items() if c >= 50} <= set(ids_in(ids))
    run_cli(["keep", llama, "--corpus", CORPUS / "train.txt", "--top-k", "10", "-o", ids, "-q"])
    top = sorted(counts, key=lambda i: (-counts[i], i))[:10]
    assert set(top) <= set(ids_in(ids))


def test_two_corpora_are_balanced_by_weight(llama, tmp_path):
    """A tiny corpus of weight 1 counts as much as a 100x larger one: its tokens make the cut."""
    tok = tokenizers.Tokenizer.from_file(str(llama / "tokenizer.json"))
    counts = Counter(i for enc in tok.encode_batch(corpus_lines("train.txt"), add_special_tokens=False) for i in enc.ids)
    rare = [i for i in range(256, 700) if counts[i] <= 1 and len(tok.decode([i]).strip()) >= 2
            and tok.encode(tok.decode([i]), add_special_tokens=False).ids == [i]][:4]
    assert len(rare) == 4
    small = tmp_path / "small.txt"
    small.write_text("".join(tok.decode([i]) + "\n" for i in rare))
    ids = tmp_path / "ids.txt"
    figures = json.loads(run_cli(["keep", llama, "--corpus", CORPUS / "train.txt", "--corpus", small, "--top-k", "40",
                                  "-o", ids, "--json", "-q"]).stdout)
    assert set(rare) <= set(ids_in(ids))
    assert {c["path"]: c["coverage"] for c in figures["corpora"]}[str(small)] == 1.0
    # weighted down to 0.001, the small corpus no longer wins places in the top 40
    run_cli(["keep", llama, "--corpus", CORPUS / "train.txt", "--corpus", f"{small}:0.001", "--top-k", "40",
             "-o", ids, "-q"])
    assert not set(rare) & set(ids_in(ids))


def test_every_input_form_counts_the_same(llama, tmp_path):
    lines = corpus_lines("heldout.txt")
    (tmp_path / "plain.txt").write_text("\n".join(lines) + "\n")
    with gzip.open(tmp_path / "plain.txt.gz", "wt") as f:
        f.write("\n".join(lines) + "\n")
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"body": line}) + "\n" for line in lines))
    with gzip.open(tmp_path / "docs.jsonl.gz", "wt") as f:
        f.write("".join(json.dumps({"body": line}) + "\n" for line in lines))
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "a.txt").write_text("\n".join(lines[:100]) + "\n")
    (folder / "b.txt.gz").write_bytes(gzip.compress(("\n".join(lines[100:]) + "\n").encode()))
    results = []
    for corpus, extra in [("plain.txt", []), ("plain.txt.gz", []), ("docs.jsonl", ["--field", "body"]),
                          ("docs.jsonl.gz", ["--field", "body"]), ("folder", [])]:
        out = json.loads(run_cli(["keep", llama, "--corpus", tmp_path / corpus, *extra, "--top-k", "100",
                                  "-o", tmp_path / "ids.txt", "--json", "-q"]).stdout)
        results.append((out["documents"], out["tokens"], (tmp_path / "ids.txt").read_text().split("\n", 4)[4]))
    stdin = run_cli_stdin(["keep", llama, "--corpus", "-", "--top-k", "100", "-o", tmp_path / "ids.txt", "--json", "-q"],
                          "\n".join(lines) + "\n")
    results.append((stdin["documents"], stdin["tokens"], (tmp_path / "ids.txt").read_text().split("\n", 4)[4]))
    assert len(set(results)) == 1 and results[0][0] == len(lines)


def run_cli_stdin(args, text):
    from click.testing import CliRunner

    from surgery.cli import cli

    result = CliRunner().invoke(cli, [str(a) for a in args], input=text)
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def test_max_docs_and_per_corpus_cap(llama, tmp_path):
    out = json.loads(run_cli(["keep", llama, "--corpus", CORPUS / "train.txt", "--max-docs", "10", "--top-k", "5",
                              "-o", tmp_path / "ids.txt", "--json", "-q"]).stdout)
    assert out["documents"] == 10
    out = json.loads(run_cli(["keep", llama, "--corpus", f"{CORPUS / 'train.txt'}:1:7", "--top-k", "5",
                              "-o", tmp_path / "ids.txt", "--json", "-q"]).stdout)
    assert out["documents"] == 7


def test_forced_ids_and_tokens_stay(llama, tmp_path):
    (tmp_path / "must.txt").write_text("600\n601\n")
    (tmp_path / "tokens.txt").write_text("<|start_header_id|>\n")
    ids = tmp_path / "ids.txt"
    run_cli(["keep", llama, "--corpus", CORPUS / "train.txt", "--top-k", "5", "--keep-ids", tmp_path / "must.txt",
             "--keep-tokens", tmp_path / "tokens.txt", "-o", ids, "-q"])
    tok = tokenizers.Tokenizer.from_file(str(llama / "tokenizer.json"))
    assert {600, 601, tok.token_to_id("<|start_header_id|>")} <= set(ids_in(ids))


def test_pad_to_multiple_of_chooses_a_round_size(llama, tmp_path):
    ids = tmp_path / "ids.txt"
    run_cli(["keep", llama, "--corpus", CORPUS / "train.txt", "--coverage", "0.8", "--pad-to-multiple-of", "64",
             "-o", ids, "-q"])
    assert len(ids_in(ids)) % 64 == 0


def test_keep_errors(llama, tmp_path):
    (tmp_path / "tokens.txt").write_text("<|start_header_id|>\nnot-a-token-xyz\n")
    result = run_cli(["keep", llama, "--corpus", CORPUS / "train.txt", "--top-k", "5", "--keep-tokens",
                      tmp_path / "tokens.txt", "-o", tmp_path / "ids.txt"], exit_code=2)
    assert result.stderr == "Error: tokens.txt:2: token 'not-a-token-xyz' is not in the tokenizer\n"
    result = run_cli(["keep", llama, "--corpus", CORPUS / "train.txt", "-o", tmp_path / "ids.txt"], exit_code=2)
    assert result.stderr == "Error: choose exactly one of --size, --coverage, --min-count, --top-k\n"
    result = run_cli(["keep", llama, "--corpus", tmp_path / "missing.txt", "--top-k", "3", "-o", tmp_path / "i"],
                     exit_code=2)
    assert result.stderr == f"Error: {tmp_path / 'missing.txt'}: corpus not found\n"
    result = run_cli(["keep", llama, "--corpus", CORPUS / "train.txt", "--size", "10", "-o", tmp_path / "i"],
                     exit_code=2)
    assert result.stderr.startswith("Error: --size 10 is below the ")
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"other": 1}\n')
    result = run_cli(["keep", llama, "--corpus", tmp_path / "bad.jsonl", "--top-k", "3", "-o", tmp_path / "i"],
                     exit_code=2)
    assert result.stderr.splitlines()[0] == "Error: bad.jsonl:2: no string field 'text'"
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    result = run_cli(["keep", llama, "--corpus", tmp_path / "latin1.txt", "--top-k", "3", "-o", tmp_path / "i"],
                     exit_code=2)
    assert result.stderr.startswith(f"Error: {tmp_path / 'latin1.txt'}: not UTF-8 text")


@pytest.fixture
def gemma3_layout(tmp_path):
    """tokenizer.json one id longer than the embedding, as Gemma-3 270M/1B ship (<image_soft_token>)."""
    from conftest import tokenizer_checkpoint

    root = tokenizer_checkpoint("bpe-bytelevel-gpt2", tmp_path / "gemma3")
    tok = tokenizers.Tokenizer.from_file(str(root / "tokenizer.json"))
    n_rows = tok.get_vocab_size(with_added_tokens=True)
    tok.add_special_tokens([tokenizers.AddedToken("<image_soft_token>", special=True, normalized=False)])
    tok.save(str(root / "tokenizer.json"))
    return root, n_rows


def test_keep_never_lists_a_token_without_a_row(gemma3_layout, tmp_path):
    root, n_rows = gemma3_layout
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(f"{line} <image_soft_token>\n" for line in corpus_lines("train.txt")[:200]))
    ids = tmp_path / "ids.txt"
    run_cli(["keep", root, "--corpus", corpus, "--min-count", "1", "-o", ids, "-q"])
    assert n_rows not in ids_in(ids) and max(ids_in(ids)) < n_rows
    run_cli(["keep", root, "--corpus", corpus, "--size", "300", "-o", ids, "-q"])
    assert len(ids_in(ids)) == 300 and n_rows not in ids_in(ids)
    result = json.loads(run_cli(["trim", root, "--keep", ids, "-o", tmp_path / "o", "--json", "-q"]).stdout)
    assert result["new_vocab_rows"] == 300
    record = json.loads((tmp_path / "o" / "surgery_trim.json").read_text())
    assert record["tokens_without_rows"] == {"old_ids": [n_rows], "new_ids": [300]}
    assert json.loads((tmp_path / "o" / "config.json").read_text())["vocab_size"] == 300
    out_tok = tokenizers.Tokenizer.from_file(str(tmp_path / "o" / "tokenizer.json"))
    assert out_tok.get_vocab_size(with_added_tokens=True) == 301 and out_tok.id_to_token(300) == "<image_soft_token>"
    run_cli(["verify", root, tmp_path / "o", "--corpus", corpus, "-q"])


def test_padding_with_tokens_without_rows_is_refused(gemma3_layout, tmp_path):
    root, n_rows = gemma3_layout
    ids = tmp_path / "ids.txt"
    ids.write_text("5\n")
    result = run_cli(["trim", root, "--keep", ids, "-o", tmp_path / "o", "--pad-to-multiple-of", "64"], 2)
    assert result.stderr.startswith("Error: --pad-to-multiple-of: the tokenizer has 1 token(s) without an embedding row")
    assert not (tmp_path / "o").exists()
