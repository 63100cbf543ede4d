"""The Python API directly: the same outputs as the CLI, byte for byte, and one error family."""

from __future__ import annotations

import hashlib
import json

import pytest
from conftest import CORPUS, KEEP, run_cli

import surgery
from surgery.errors import CheckpointError, InputError, SurgeryError


def tree(root):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_trim_from_ids_in_python_equals_the_cli(copy_fixture, tmp_path):
    src = copy_fixture("llama-untied")
    ids = [int(w) for line in (KEEP / "basic.txt").read_text().splitlines()
           for w in line.split("#")[0].replace(",", " ").split()]
    result = surgery.trim(src, ids, tmp_path / "api")
    cli = json.loads(run_cli(["trim", src, "--keep", KEEP / "basic.txt", "-o", tmp_path / "cli", "--json",
                              "-q"]).stdout)
    assert result.output == [tmp_path / "api"]
    assert {k: v for k, v in result.to_json().items() if k not in ("output", "seconds")} == {
        k: v for k, v in cli.items() if k not in ("output", "seconds")}
    assert tree(tmp_path / "api") == tree(tmp_path / "cli")


def test_prepare_is_the_dry_run(copy_fixture, tmp_path):
    src = copy_fixture("qwen-tied-sharded")
    job = surgery.prepare_trim(src, KEEP / "basic.txt", check_output=False)
    cli = json.loads(run_cli(["trim", src, "--keep", KEEP / "basic.txt", "--dry-run", "--json"]).stdout)
    assert job.to_json() == cli
    assert job.describe() == run_cli(["trim", src, "--keep", KEEP / "basic.txt", "--dry-run"]).stdout.rstrip("\n")
    assert not (src.parent / "qwen-tied-sharded-trimmed").exists()


def test_verify_inspect_and_keep(copy_fixture, tmp_path):
    src = copy_fixture("llama-untied")
    surgery.trim(src, KEEP / "basic.txt", tmp_path / "out")
    result = surgery.verify(src, tmp_path / "out", [CORPUS / "heldout.txt"])
    assert result.ok and result.failed == [] and result.to_json()["ok"]
    report, job = surgery.inspect(src)
    assert report == json.loads(run_cli(["inspect", src, "--json"]).stdout) and job is None
    mined = surgery.keep(src, [CORPUS / "train.txt"], tmp_path / "ids.txt", size=320)
    assert len(mined.ids) == 320 and (tmp_path / "ids.txt").read_text() == mined.ids_text()
    run_cli(["keep", src, "--corpus", CORPUS / "train.txt", "--size", "320", "-o", tmp_path / "cli.txt", "-q"])
    assert (tmp_path / "cli.txt").read_text() == mined.ids_text()


def test_a_failed_verification_says_so(copy_fixture, tmp_path):
    src = copy_fixture("llama-untied")
    surgery.trim(src, KEEP / "basic.txt", tmp_path / "out")
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    config["eos_token_id"] = 5
    (tmp_path / "out" / "config.json").write_text(json.dumps(config))
    result = surgery.verify(src, tmp_path / "out")
    assert not result.ok and result.failed == ["config.json"]


def test_one_error_family(copy_fixture, tmp_path):
    src = copy_fixture("llama-untied")
    with pytest.raises(InputError, match="id 99999 is out of range"):
        surgery.trim(src, [1, 99999], tmp_path / "out")
    with pytest.raises(InputError, match="'x' is not an integer token id"):
        surgery.trim(src, [1, "x"], tmp_path / "out")
    with pytest.raises(CheckpointError):
        surgery.trim(tmp_path / "missing", [1], tmp_path / "out")
    assert issubclass(surgery.InputError, SurgeryError) and not (tmp_path / "out").exists()


def test_drop_layers_in_python(tmp_path):
    transformers = pytest.importorskip("transformers")
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=4, num_attention_heads=2))
    model.save_pretrained(tmp_path / "src")
    result = surgery.drop_layers(tmp_path / "src", tmp_path / "out", tail=2)
    assert result.summary["kept_layers"] == [0, 3]
    assert json.loads((tmp_path / "out" / "config.json").read_text())["num_hidden_layers"] == 2


def count_header_reads(monkeypatch) -> list[str]:
    """Every safetensors header and GGUF file read from now on, by path."""
    import surgery.edit.gguf_edit as gguf_edit
    import surgery.formats.hf_folder as hf_folder

    reads = []
    for module, name in ((hf_folder, "read_header"), (gguf_edit, "read_gguf")):
        original = getattr(module, name)
        monkeypatch.setattr(module, name, lambda path, *a, original=original, **k: reads.append(str(path)) or
                            original(path, *a, **k))
    return reads


@pytest.mark.parametrize("kind", ["folder", "gguf"])
def test_an_opened_source_plans_many_trims_and_reads_nothing_again(kind, copy_fixture, tmp_path, monkeypatch):
    """A script that makes many variants opens the source once: headers, configs and tokenizer are not read again,
    and every output is byte-identical to a trim from the path."""
    from conftest import small_gguf

    import surgery.tokenizer as tokenizer_module

    src = copy_fixture("qwen-tied-sharded") if kind == "folder" else small_gguf(tmp_path / "m.gguf")
    opened = surgery.open_source(src)
    reads = count_header_reads(monkeypatch)
    original_load = tokenizer_module.TokenizerFiles.load
    monkeypatch.setattr(tokenizer_module.TokenizerFiles, "load", classmethod(
        lambda cls, root: reads.append(str(root)) or original_load.__func__(cls, root)))
    keeps = [range(40), range(3, 120, 2), [5, 7, 11, 13, 17, 19, 23]] if kind == "folder" else [
        range(10), range(100, 258), [1, 2, 256, 257]]
    surgery.prepare_trim(src, range(5), check_output=False)
    assert [path for path in reads if path.startswith(str(src))]  # the counter sees a plan from the path
    reads.clear()
    for i, keep in enumerate(keeps):
        name = f"a{i}" if kind == "folder" else f"a{i}.gguf"
        surgery.trim(opened, keep, tmp_path / name)
    assert not [path for path in reads if path.startswith(str(src))], reads  # the source was not read again
    monkeypatch.undo()
    for i, keep in enumerate(keeps):
        name = f"{i}" if kind == "folder" else f"{i}.gguf"
        surgery.trim(src, keep, tmp_path / f"b{name}")
        a, b = tmp_path / f"a{name}", tmp_path / f"b{name}"
        if kind == "folder":
            assert tree(a) == tree(b)
        else:
            assert a.read_bytes() == b.read_bytes()
    with pytest.raises(InputError, match="give them to open_source"):
        surgery.prepare_trim(opened, range(5), tmp_path / "c", vocab_tensors=("x",))


@pytest.mark.parametrize("kind", ["folder", "gguf"])
def test_an_opened_source_plans_many_cuts_and_reads_no_header_again(kind, tmp_path, monkeypatch):
    """drop-layers and prune take the same opened source as trim: their plans read no header again, and their
    outputs are byte-identical to cuts from the path."""
    from conftest import importance_file, tiny_folder, tiny_gguf

    src = tiny_folder(tmp_path / "src") if kind == "folder" else tiny_gguf(tmp_path / "src.gguf")
    imp = importance_file(tmp_path / "imp.json")
    suffix = "" if kind == "folder" else ".gguf"
    cuts = [("drop_layers", dict(drop="0")), ("drop_layers", dict(keep_layers="0,2")),
            ("prune", dict(importance=imp, intermediate_size=6)), ("prune", dict(importance=imp, hidden_size=4))]
    opened = surgery.open_source(src)
    reads = count_header_reads(monkeypatch)
    for i, (verb, options) in enumerate(cuts):
        getattr(surgery, verb)(opened, out=tmp_path / f"a{i}{suffix}", **options)
    assert not [path for path in reads if path.startswith(str(src))], reads
    monkeypatch.undo()
    for i, (verb, options) in enumerate(cuts):
        getattr(surgery, verb)(src, out=tmp_path / f"b{i}{suffix}", **options)
        a, b = tmp_path / f"a{i}{suffix}", tmp_path / f"b{i}{suffix}"
        if kind == "folder":
            assert {p.name: p.read_bytes() for p in a.iterdir()} == {p.name: p.read_bytes() for p in b.iterdir()}
        else:
            assert a.read_bytes() == b.read_bytes()


@pytest.mark.parametrize("kind", ["folder", "gguf"])
def test_an_opened_source_replays_each_token_once(kind, copy_fixture, tmp_path, monkeypatch):
    """Trims of one opened source share its closure tables and replays: the same keep list again replays no
    token, and its output is byte-identical."""
    from conftest import small_gguf

    import surgery.tokenizer.bpe as bpe

    src = copy_fixture("qwen-tied-sharded") if kind == "folder" else small_gguf(tmp_path / "m.gguf")
    keep = range(3, 120, 2) if kind == "folder" else [*range(100, 258)]
    opened = surgery.open_source(src)
    suffix = "" if kind == "folder" else ".gguf"
    surgery.trim(opened, keep, tmp_path / f"a{suffix}")
    replays = []
    real = bpe.merge_path
    monkeypatch.setattr(bpe, "merge_path", lambda symbols, rank: replays.append(symbols) or real(symbols, rank))
    surgery.trim(opened, keep, tmp_path / f"b{suffix}")
    assert not replays
    a, b = tmp_path / f"a{suffix}", tmp_path / f"b{suffix}"
    if kind == "folder":
        assert {p.name: p.read_bytes() for p in a.iterdir()} == {p.name: p.read_bytes() for p in b.iterdir()}
    else:
        assert a.read_bytes() == b.read_bytes()
    surgery.trim(src, keep, tmp_path / f"c{suffix}")  # from the path: replays again
    assert replays
