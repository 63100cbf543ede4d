"""The CLI as a user meets it: output, exit codes, exact error lines, nothing lost, nothing half-written."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import CORPUS, FIXTURES, KEEP, leftovers, run_cli, snapshot

from surgery.cli import cli

SURGERY = [sys.executable, "-m", "surgery"]


def refuse(runner, src: Path, args: list, exit_code: int, message: str, out: Path | None = None) -> None:
    """Run trim, expect exactly one `Error:` line (plus an optional `Hint:`), the input untouched, no output."""
    before = snapshot(src)
    out = out or src.parent / "out"
    result = runner.invoke(cli, ["trim", str(src), *[str(a) for a in args], "-o", str(out)])
    assert result.exit_code == exit_code, (result.stderr, result.exception)
    lines = result.stderr.splitlines()
    assert lines[0] == f"Error: {message}"
    assert all(line.startswith("Hint: ") for line in lines[1:]) and len(lines) <= 2
    assert "Traceback" not in result.stderr
    assert snapshot(src) == before
    assert not leftovers(src.parent)
    if out.name == "out":
        assert not out.exists()


# ---- success paths ---------------------------------------------------------------------------------

def test_help_explains_with_an_example(runner):
    for args in (["--help"], ["trim", "--help"]):
        result = runner.invoke(cli, args)
        assert result.exit_code == 0
        assert "surgery trim ckpt/ --keep ids.txt -o ckpt-small/" in result.stdout


def test_trim_writes_output_and_summary(runner, copy_fixture, tmp_path):
    src = copy_fixture("llama-untied")
    before = snapshot(src)
    result = runner.invoke(cli, ["trim", str(src), "--keep", str(KEEP / "basic.txt"), "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.stderr
    assert "kept ids: 200 requested" in result.stderr and result.stdout == ""
    assert snapshot(src) == before
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    record = json.loads((tmp_path / "out" / "surgery_trim.json").read_text())
    assert config["vocab_size"] == record["new_vocab_rows"] == len(record["old_ids"])
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "config.json", "generation_config.json", "model.safetensors", "surgery_trim.json", "tokenizer.json",
        "tokenizer_config.json"]


def test_default_output_is_beside_the_checkpoint(copy_fixture):
    src = copy_fixture("llama-untied")
    run_cli(["trim", src, "--keep", KEEP / "basic.txt", "-q"])
    assert (src.parent / "llama-untied-trimmed" / "model.safetensors").exists()


def test_dry_run_json_writes_nothing(copy_fixture, tmp_path):
    src = copy_fixture("qwen-tied-sharded")
    result = subprocess.run([*SURGERY, "trim", str(src), "--keep", str(KEEP / "basic.txt"), "--dry-run", "--json"],
                            capture_output=True, text=True, check=True)
    checked = subprocess.run([sys.executable, "-m", "json.tool"], input=result.stdout, capture_output=True, text=True)
    assert checked.returncode == 0
    plan = json.loads(result.stdout)
    assert plan["tied"] is True and plan["new_vocab_rows"] == plan["kept"]
    assert [t["name"] for t in plan["tensors"]] == ["model.embed_tokens.weight"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["qwen-tied-sharded"]


def test_json_result_reports_sizes(copy_fixture, tmp_path):
    src = copy_fixture("t5-sentencepiece")
    result = run_cli(["trim", src, "--keep", KEEP / "basic.txt", "-o", tmp_path / "o", "--json", "-q"])
    summary = json.loads(result.stdout)
    assert summary["output"] == str(tmp_path / "o")
    assert summary["old_vocab_rows"] == 616
    assert set(summary["tensors"]) == {"shared.weight", "encoder.embed_tokens.weight", "decoder.embed_tokens.weight",
                                       "lm_head.weight"}
    assert summary["bytes_after"] < summary["bytes_before"]


def test_force_replaces_an_existing_output(copy_fixture, tmp_path):
    src = copy_fixture("llama-untied")
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    run_cli(["trim", src, "--keep", KEEP / "basic.txt", "-o", out, "--force", "-q"])
    assert not (out / "stale.txt").exists() and (out / "model.safetensors").exists()
    assert not leftovers(tmp_path)


def test_sharded_output_keeps_layout_and_index(copy_fixture, tmp_path):
    src = copy_fixture("qwen-tied-sharded")
    run_cli(["trim", src, "--keep", KEEP / "basic.txt", "-o", tmp_path / "o", "-q"])
    index = json.loads((tmp_path / "o" / "model.safetensors.index.json").read_text())
    shards = sorted(p.name for p in (tmp_path / "o").glob("*.safetensors"))
    assert shards == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    sizes = sum((tmp_path / "o" / s).stat().st_size for s in shards)
    assert index["metadata"]["total_size"] < sizes  # headers are not counted, as transformers does
    # the shard without vocab tensors is the same file
    assert (tmp_path / "o" / shards[1]).read_bytes() == (src / shards[1]).read_bytes()


def test_link_unchanged_hardlinks_untouched_shards(copy_fixture, tmp_path):
    src = copy_fixture("qwen-tied-sharded")
    run_cli(["trim", src, "--keep", KEEP / "basic.txt", "-o", tmp_path / "o", "--link-unchanged", "-q"])
    name = "model-00002-of-00002.safetensors"
    assert (tmp_path / "o" / name).stat().st_ino == (src / name).stat().st_ino
    assert (tmp_path / "o" / "model-00001-of-00002.safetensors").stat().st_ino != (
        src / "model-00001-of-00002.safetensors").stat().st_ino


def test_pad_to_multiple_of(copy_fixture, tmp_path):
    src = copy_fixture("llama-untied")
    result = run_cli(["trim", src, "--keep", KEEP / "basic.txt", "-o", tmp_path / "o", "--pad-to-multiple-of", "64",
                      "--json", "-q"])
    summary = json.loads(result.stdout)
    assert summary["new_vocab_rows"] % 64 == 0 and summary["new_vocab_rows"] > summary["kept"]
    assert json.loads((tmp_path / "o" / "config.json").read_text())["vocab_size"] == summary["new_vocab_rows"]


# ---- bad input: one line, an exit code, nothing touched ------------------------------------------------

def test_keep_list_errors(runner, copy_fixture, tmp_path):
    src = copy_fixture("llama-untied")
    refuse(runner, src, ["--keep", KEEP / "out-of-range.txt"], 2,
           "out-of-range.txt:3: id 100000 is out of range (vocab has 703 ids: 0..702)")
    refuse(runner, src, ["--keep", KEEP / "negative.txt"], 2, "negative.txt:2: id -4 is negative")
    refuse(runner, src, ["--keep", KEEP / "not-an-integer.txt"], 2,
           "not-an-integer.txt:3: 'three' is not an integer token id")
    refuse(runner, src, ["--keep", KEEP / "empty.txt"], 2, "empty.txt: keep list has no ids")
    refuse(runner, src, ["--keep", tmp_path / "nope.txt"], 2, f"{tmp_path / 'nope.txt'}: keep list not found")


def test_duplicate_ids_are_accepted_and_reported(runner, copy_fixture, tmp_path):
    src = copy_fixture("llama-untied")
    result = runner.invoke(cli, ["trim", str(src), "--keep", str(KEEP / "comments.txt"), "-o", str(tmp_path / "o")])
    assert result.exit_code == 0
    assert "note: comments.txt: 1 duplicate ids counted once" in result.stderr


def test_output_errors(runner, copy_fixture, tmp_path):
    src = copy_fixture("llama-untied")
    keep = ["--keep", KEEP / "basic.txt"]
    refuse(runner, src, keep, 2, f"{src}: output must not be CKPT or inside it (CKPT is never written to)", out=src)
    refuse(runner, src, keep, 2, f"{src / 'sub'}: output must not be CKPT or inside it (CKPT is never written to)",
           out=src / "sub")
    (tmp_path / "exists").mkdir()
    refuse(runner, src, keep, 2, f"{tmp_path / 'exists'}: already exists", out=tmp_path / "exists")


def test_checkpoint_errors(runner, copy_fixture, tmp_path):
    keep = ["--keep", KEEP / "basic.txt"]
    src = copy_fixture("llama-untied")
    (src / "config.json").write_text(json.dumps({"vocab_size": 999}))
    refuse(runner, src, keep, 1, "config.json: vocab_size is 999 but the embedding has 703 rows")
    (src / "config.json").unlink()
    refuse(runner, src, keep, 1, f"{src / 'config.json'}: file not found")
    (src / "config.json").write_text("{oops")
    refuse(runner, src, keep, 1, "config.json: not valid JSON (line 1: Expecting property name enclosed in double quotes)")


def test_pickle_only_checkpoint_is_refused_unopened(runner, tmp_path):
    src = tmp_path / "ckpt"
    src.mkdir()
    (src / "config.json").write_text("{}")
    (src / "pytorch_model.bin").write_bytes(b"\x80\x04 not to be unpickled")
    refuse(runner, src, ["--keep", KEEP / "basic.txt"], 1,
           f"{src}: only pickle weights (pytorch_model.bin); surgery never unpickles files")


def test_sharded_index_errors(runner, copy_fixture):
    keep = ["--keep", KEEP / "basic.txt"]
    src = copy_fixture("qwen-tied-sharded")
    index_path = src / "model.safetensors.index.json"
    good = json.loads(index_path.read_text())
    shard1, shard2 = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"

    def with_map(weight_map):
        index_path.write_text(json.dumps({**good, "weight_map": weight_map}))

    with_map({**good["weight_map"], "model.norm.weight": "../escape.safetensors"})
    refuse(runner, src, keep, 1, "model.safetensors.index.json: shard path '../escape.safetensors' leaves the checkpoint folder")
    with_map({**good["weight_map"], "model.norm.weight": "/etc/passwd"})
    refuse(runner, src, keep, 1, "model.safetensors.index.json: shard path '/etc/passwd' leaves the checkpoint folder")
    with_map({**good["weight_map"], "model.norm.weight": "model-00003-of-00003.safetensors"})
    refuse(runner, src, keep, 1, "model.safetensors.index.json: names missing shard file(s): model-00003-of-00003.safetensors")
    with_map({k: v for k, v in good["weight_map"].items() if v == shard1})
    refuse(runner, src, keep, 1, f"model.safetensors.index.json: shard file(s) not in the index: {shard2}")
    with_map({**good["weight_map"], "model.norm.weight": shard1})
    refuse(runner, src, keep, 1,
           f"model.safetensors.index.json: tensor 'model.norm.weight' is in {shard2} but the index says {shard1}")
    with_map({**good["weight_map"], "ghost.weight": shard1})
    refuse(runner, src, keep, 1, "model.safetensors.index.json: 1 tensor(s) listed but in no shard, e.g. 'ghost.weight' "
                                 f"(index says {shard1})")
    index_path.write_text(json.dumps(good))
    shutil.copy(src / shard1, src / "model-00003-of-00003.safetensors")
    with_map({**good["weight_map"]} | {"x": "model-00003-of-00003.safetensors"})
    refuse(runner, src, keep, 1, f"model.safetensors.index.json: tensor 'model.embed_tokens.weight' is in two shards: "
                                 f"{shard1} and model-00003-of-00003.safetensors")


def test_vocab_tensor_errors(runner, copy_fixture):
    keep = ["--keep", KEEP / "basic.txt"]
    src = copy_fixture("llama-untied")
    refuse(runner, src, [*keep, "--vocab-tensor", "nope.weight"], 2, "--vocab-tensor: no tensor 'nope.weight' in the checkpoint")
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**config, "vocab_size": 5}))
    raw = (src / "model.safetensors").read_bytes()
    (src / "model.safetensors").write_bytes(raw.replace(b"embed_tokens", b"tok_embeddin").replace(b"lm_head", b"lm_tail"))
    refuse(runner, src, keep, 1, "llama-untied: no vocabulary tensor found (config vocab_size 5; largest 2-D tensors: "
                                 "'lm_tail.weight' [703, 8], 'model.tok_embeddin.weight' [703, 8], "
                                 "'model.layers.0.mlp.down_proj.weight' [8, 16])")


def test_packed_dtype_vocab_tensor_is_refused(runner, tmp_path):
    """final_logits_bias [1, V] in F4: one vocab entry is half a byte, so its rows cannot be gathered as bytes."""
    from surgery.formats.safetensors import (
        ShardWriter,
        TensorSpec,
        read_header,
        read_rows,
        write_all,
    )

    src = tmp_path / "ckpt"
    shutil.copytree(Path(__file__).resolve().parent.parent / "fixtures" / "bart-logits-bias", src)
    entries = {e.name: e for e in read_header(src / "model.safetensors").entries}
    data = {name: read_rows(e).tobytes() for name, e in entries.items() if name != "final_logits_bias"}
    writer = ShardWriter(src / "model.safetensors")
    for name, e in entries.items():
        writer.add(TensorSpec(name, "F4", (1, 700)) if name == "final_logits_bias" else TensorSpec(name, e.dtype, e.shape))
    for spec in writer.write_header():
        writer.write_tensor(spec.name, lambda fd, n=spec.name: write_all(fd, data.get(n, bytes(350))))
    writer.close()
    refuse(runner, src, ["--keep", KEEP / "basic.txt"], 1,
           "model.safetensors: tensor 'final_logits_bias' has F4, a packed dtype, rows are not byte-addressable")


def test_tokenizer_errors(runner, copy_fixture):
    keep = ["--keep", KEEP / "basic.txt"]
    src = copy_fixture("llama-untied")
    good = (src / "tokenizer.json").read_text()
    (src / "tokenizer.json").write_text(good[:100])
    refuse(runner, src, keep, 1, "tokenizer.json: not valid JSON (line 7: Expecting value)")
    data = json.loads(good)
    data["model"]["type"] = "Ngram"
    (src / "tokenizer.json").write_text(json.dumps(data))
    refuse(runner, src, keep, 1,
           "tokenizer.json: tokenizer model type 'Ngram' is not supported (supported: BPE, WordPiece, WordLevel, Unigram)")
    (src / "tokenizer.json").unlink()
    refuse(runner, src, keep, 1, f"{src}: no tokenizer; need tokenizer.json, tekken.json or a SentencePiece model "
                                 "(tokenizer.model, spiece.model, sentencepiece.bpe.model, sentencepiece.model)")
    (src / "vocab.txt").write_text("[PAD]\n[UNK]\n")
    refuse(runner, src, keep, 1, f"{src}: only vocab.txt, which surgery does not rewrite alone; need tokenizer.json, "
                                 "tekken.json or a SentencePiece model (tokenizer.model, spiece.model, sentencepiece.bpe.model, "
                                 "sentencepiece.model)")
    (src / "tokenizer.json").write_bytes(b"\xff\xfe not utf-8")
    refuse(runner, src, keep, 1, "tokenizer.json: cannot read: 'utf-8' codec can't decode byte 0xff in position 0: "
                                 "invalid start byte")
    (src / "tokenizer.json").unlink()
    t5 = copy_fixture("t5-sentencepiece")
    (t5 / "spiece.model").write_bytes(b"\xff\xff garbage")
    refuse(runner, t5, keep, 1, "spiece.model: not a SentencePiece model (DecodeError)")


def test_debug_shows_a_traceback(runner, copy_fixture):
    src = copy_fixture("llama-untied")
    result = runner.invoke(cli, ["trim", str(src), "--keep", str(KEEP / "empty.txt"), "--debug"])
    assert result.exit_code == 1 and type(result.exception).__name__ == "InputError"


# ---- failures while writing ----------------------------------------------------------------------------

def big_checkpoint(root: Path, filler_nbytes: int = 300 * 2**20) -> Path:
    """llama-untied plus a large layer tensor in the same shard, so writing the output takes a moment."""
    from surgery.formats.safetensors import (
        ShardWriter,
        TensorSpec,
        read_header,
        read_rows,
        write_all,
    )

    source = Path(__file__).resolve().parent.parent / "fixtures" / "llama-untied"
    shutil.copytree(source, root, ignore=shutil.ignore_patterns("model.safetensors"))
    entries = read_header(source / "model.safetensors").entries
    writer = ShardWriter(root / "model.safetensors", {"format": "pt"})
    for entry in entries:
        writer.add(TensorSpec(entry.name, entry.dtype, entry.shape))
    writer.add(TensorSpec("model.layers.0.mlp.up_proj.weight", "U8", (filler_nbytes // 2**20, 2**20)))
    chunk = os.urandom(2**20)
    by_name = {e.name: e for e in entries}
    for spec in writer.write_header():
        if spec.name in by_name:
            writer.write_tensor(spec.name, lambda fd, e=by_name[spec.name]: write_all(fd, read_rows(e).tobytes()))
        else:
            writer.write_tensor(spec.name, lambda fd, n=spec.shape[0]: [write_all(fd, chunk) for _ in range(n)])
    writer.close()
    return root


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    return big_checkpoint(tmp_path_factory.mktemp("big") / "ckpt"), KEEP / "basic.txt"


def test_disk_full_leaves_nothing(big, tmp_path):
    src, keep = big
    before = snapshot(src)
    limit = "import resource, runpy, sys; resource.setrlimit(resource.RLIMIT_FSIZE, (50_000_000, 50_000_000)); "
    code = limit + "sys.argv = ['surgery'] + sys.argv[1:]; runpy.run_module('surgery', run_name='__main__')"
    result = subprocess.run([sys.executable, "-c", code, "trim", str(src), "--keep", str(keep), "-o",
                             str(tmp_path / "out")], capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == (
        "Error: writing model.safetensors: stopped by the file-size limit (File too large); nothing was written, "
        "the output folder was not created")
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists() and not leftovers(tmp_path)
    assert snapshot(src) == before


def test_killed_run_is_never_mistaken_for_output(big, tmp_path):
    src, keep = big
    out = tmp_path / "out"
    process = subprocess.Popen([*SURGERY, "trim", str(src), "--keep", str(keep), "-o", str(out), "-q"])
    deadline = time.monotonic() + 30
    while not leftovers(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not out.exists()  # only a .partial- folder may be left, never OUT
    run_cli(["trim", src, "--keep", keep, "-o", out, "-q"])
    assert (out / "surgery_trim.json").exists()
    assert not leftovers(tmp_path)  # the next run removed what the killed one left


def test_progress_bar_shows_bytes_and_rate(capsys):
    from surgery.cli.progress import progress_bar

    bar = progress_bar(3 * 2**30, quiet=False)
    bar.enabled = True  # as on a terminal
    with bar as update:
        update(2**30)
        update(2 * 2**30)
    err = capsys.readouterr().err
    assert "3.00 / 3.00 GiB  100.0%" in err and "MiB/s" in err and err.endswith("\n")
    assert progress_bar(10, quiet=True).enabled is False


def test_option_ranges_are_usage_errors(runner, copy_fixture, tmp_path):
    src = copy_fixture("llama-untied")
    for args in (["trim", src, "--keep", KEEP / "basic.txt", "--pad-to-multiple-of", "0"],
                 ["keep", src, "--corpus", KEEP / "basic.txt", "--coverage", "1.5", "-o", tmp_path / "i"],
                 ["keep", src, "--corpus", KEEP / "basic.txt", "--size", "-3", "-o", tmp_path / "i"]):
        result = runner.invoke(cli, [str(a) for a in args])
        assert result.exit_code == 2 and "Error: Invalid value for" in result.stderr
        assert "Traceback" not in result.stderr
    assert not (tmp_path / "i").exists() and not (src.parent / "llama-untied-trimmed").exists()


@pytest.mark.parametrize("link", [False, True])
def test_hugging_face_cache_snapshot_of_symlinks(tmp_path, link):
    """In ~/.cache/huggingface/hub every snapshot file is a relative symlink into blobs/."""
    source = Path(__file__).resolve().parent.parent / "fixtures" / "qwen-tied-sharded"
    blobs, snapshot = tmp_path / "blobs", tmp_path / "snapshots" / "abc123"
    blobs.mkdir()
    snapshot.mkdir(parents=True)
    for path in source.iterdir():
        shutil.copy(path, blobs / f"blob-{path.name}")
        (snapshot / path.name).symlink_to(Path("../..") / "blobs" / f"blob-{path.name}")
    out = tmp_path / "out"
    run_cli(["trim", snapshot, "--keep", KEEP / "basic.txt", "-o", out, "-q", *(["--link-unchanged"] if link else [])])
    assert not any(p.is_symlink() for p in out.iterdir())
    assert (out / "model-00002-of-00002.safetensors").read_bytes() == (source / "model-00002-of-00002.safetensors").read_bytes()
    assert json.loads(run_cli(["verify", snapshot, out, "--json", "-q"]).stdout)["ok"] is True


def test_full_disk_names_the_file_and_leaves_nothing(copy_fixture, tmp_path, monkeypatch):
    import errno

    import surgery.edit.execute

    src = copy_fixture("llama-untied")
    before = snapshot(src)

    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(surgery.edit.execute, "write_all", full)  # the gather of the vocabulary rows
    result = run_cli(["trim", src, "--keep", KEEP / "basic.txt", "-o", tmp_path / "out", "-q"], 1)
    assert result.stderr == ("Error: writing model.safetensors: stopped by a full disk or quota (No space left on "
                             "device); nothing was written, the output folder was not created\n")
    assert not (tmp_path / "out").exists() and not leftovers(tmp_path)
    assert snapshot(src) == before


def test_paths_that_are_not_files_or_folders(runner, copy_fixture, tmp_path):
    """A symlink loop, a pipe (which would block), a GGUF output naming a folder, a pipe inside the folder: one
    line each, nothing written, nothing left."""
    import os

    src = copy_fixture("llama-untied")
    keep = ["--keep", KEEP / "basic.txt"]
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    refuse(runner, tmp_path / "loop", keep, 1, f"{tmp_path / 'loop'}: cannot read: Too many levels of symbolic links")
    refuse(runner, src, keep, 2, f"{tmp_path / 'loop'}: cannot be used as the output: Too many levels of symbolic "
           "links", out=tmp_path / "loop")
    os.mkfifo(tmp_path / "pipe.gguf")
    refuse(runner, tmp_path / "pipe.gguf", keep, 1, f"{tmp_path / 'pipe.gguf'}: not a regular file or folder")
    (src / "config.json").unlink()
    os.mkfifo(src / "config.json")
    refuse(runner, src, keep, 1, f"{src / 'config.json'}: not a regular file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["llama-untied", "loop", "pipe.gguf"]


def test_split_gguf_names_refused_in_one_short_line(runner, tmp_path):
    first = tmp_path / "x-00001-of-99999.gguf"
    first.write_bytes(b"GGUF")
    result = runner.invoke(cli, ["trim", str(first), "--keep", str(KEEP / "basic.txt")])
    assert result.exit_code == 1
    assert result.stderr == ("Error: x-00001-of-99999.gguf: 99998 of 99999 split parts missing: x-00002-of-99999.gguf, "
                             "x-00003-of-99999.gguf, x-00004-of-99999.gguf and 99995 more\n")


def test_without_torch_the_model_verbs_say_so_and_factor_runs_on_numpy(tmp_path):
    """The run-time install has no torch: importance, compare and distill refuse in one line; factor and unfactor
    run their linear algebra on numpy."""
    import subprocess
    import sys

    src = FIXTURES / "llama-untied"
    block = ("import sys; sys.modules['torch'] = None; sys.modules['transformers'] = None; "
             "sys.argv[0] = 'surgery'; from surgery.cli import main; main()")
    corpus = CORPUS / "train.txt"

    def run(*args):
        return subprocess.run([sys.executable, "-c", block, *map(str, args)], capture_output=True, text=True,
                              timeout=120)

    factored = run("factor", src, "--param-ratio", "0.5", "-o", tmp_path / "f", "-q")
    assert factored.returncode == 0, factored.stderr
    assert run("unfactor", tmp_path / "f", "-o", tmp_path / "d", "-q").returncode == 0
    for args in (("importance", src, "--corpus", corpus, "-o", tmp_path / "i.json"),
                 ("compare", src, tmp_path / "f", "--corpus", corpus),
                 ("distill", src, tmp_path / "f", "--corpus", corpus, "-o", tmp_path / "o")):
        done = run(*args)
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
        assert done.stderr.startswith("Error: surgery ") and "pip install 'surgery[torch]'" in done.stderr
    assert not (tmp_path / "o").exists() and not (tmp_path / "i.json").exists()
