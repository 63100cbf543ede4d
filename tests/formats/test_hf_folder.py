"""Checkpoint.open: single and sharded layouts, and every disagreement between index and shards."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import FIXTURES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from surgery.errors import CheckpointError
from surgery.formats.hf_folder import Checkpoint, load_json


def test_single_and_sharded(copy_fixture):
    single = Checkpoint.open(copy_fixture("llama-untied"))
    assert single.indexes == () and [s.path.name for s in single.shards] == ["model.safetensors"]
    sharded = Checkpoint.open(copy_fixture("qwen-tied-sharded"))
    assert [index.name for index in sharded.indexes] == ["model.safetensors.index.json"]
    assert len(sharded.shards) == 2 and "model.norm.weight" in sharded.tensors()


def test_index_disagreements_are_named_separately(copy_fixture):
    root = copy_fixture("qwen-tied-sharded")
    index = json.loads((root / "model.safetensors.index.json").read_text())
    shard1 = "model-00001-of-00002.safetensors"

    def expect(weight_map, message):
        (root / "model.safetensors.index.json").write_text(json.dumps({**index, "weight_map": weight_map}))
        with pytest.raises(CheckpointError) as info:
            Checkpoint.open(root)
        assert str(info.value) == message

    expect({**index["weight_map"], "x": "gone.safetensors"},
           "model.safetensors.index.json: names missing shard file(s): gone.safetensors")
    expect({**index["weight_map"], "x": shard1},
           f"model.safetensors.index.json: 1 tensor(s) listed but in no shard, e.g. 'x' (index says {shard1})")
    expect({k: v for k, v in index["weight_map"].items() if k != "model.norm.weight"},
           "model.safetensors.index.json: 1 tensor(s) in shards but not in the index, e.g. 'model.norm.weight' "
           "(in model-00002-of-00002.safetensors)")
    (root / "model.safetensors.index.json").write_text("[]")
    with pytest.raises(CheckpointError, match="no 'weight_map' object"):
        Checkpoint.open(root)


def test_several_shards_without_an_index(copy_fixture):
    root = copy_fixture("qwen-tied-sharded")
    (root / "model.safetensors.index.json").unlink()
    with pytest.raises(CheckpointError, match="2 .safetensors files but no model.safetensors.index.json"):
        Checkpoint.open(root)


def test_load_json_errors(tmp_path):
    with pytest.raises(CheckpointError, match="file not found"):
        load_json(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text('{"a": }')
    with pytest.raises(CheckpointError, match=r"bad.json: not valid JSON \(line 1: Expecting value\)"):
        load_json(tmp_path / "bad.json")


def test_native_layout_refusals(copy_fixture):
    root = copy_fixture("llama-untied")
    shutil.copy(root / "model.safetensors", root / "consolidated-00001-of-00002.safetensors")
    shutil.copy(root / "model.safetensors", root / "consolidated-00002-of-00002.safetensors")
    with pytest.raises(CheckpointError) as info:
        Checkpoint.open(root)
    assert str(info.value) == (f"{root}: 2 .safetensors files but no consolidated.safetensors.index.json to say how "
                               "they fit together")
    (root / "consolidated-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError) as info:
        Checkpoint.open(root)  # the same names in both layouts cannot be told apart
    assert str(info.value).startswith("model.safetensors: tensor '") and "is also in consolidated-00001" in str(info.value)
    (root / "model.safetensors").unlink()
    (root / "config.json").unlink()
    with pytest.raises(CheckpointError) as info:
        Checkpoint.open(root)
    assert str(info.value) == f"{root}: consolidated-00001-of-00002.safetensors but no params.json or config.json"


def test_a_tokenizer_file_that_cannot_be_rewritten_is_refused(copy_fixture, tmp_path):
    from conftest import KEEP, run_cli

    root = copy_fixture("llama-untied")
    (root / "qwen.tiktoken").write_text("IQ== 0\n")
    result = run_cli(["trim", root, "--keep", KEEP / "basic.txt", "-o", tmp_path / "out"], 1)
    assert result.stderr.startswith("Error: qwen.tiktoken: a tokenizer file surgery does not rewrite; copied, it would "
                                    "no longer match the trimmed vocabulary")
    assert not (tmp_path / "out").exists()



JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(), st.text(max_size=40),
              st.sampled_from(["model-00001-of-00002.safetensors", "../x.safetensors", "/etc/passwd",
                               "model.norm.weight", ""])),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=40), inner, max_size=3)),
    max_leaves=8)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.lists(st.sampled_from(["metadata", "weight_map", "total_size", "model.norm.weight",
                                      "model.embed_tokens.weight", "new.tensor"]), max_size=2),
       value=JSON_VALUES, raw=st.one_of(st.none(), st.binary(max_size=60)))
def test_fuzzed_split_index_opens_or_raises_one_line(copy_fixture, tmp_path, path, value, raw):
    """The index of a sharded folder with any entry replaced by any JSON value (or by random bytes): the folder
    opens, or one CheckpointError of one line; nothing is read outside the folder."""
    root = tmp_path / "qwen-tied-sharded"
    if not root.exists():
        copy_fixture("qwen-tied-sharded")
    index_path = root / "model.safetensors.index.json"
    original = (FIXTURES / "qwen-tied-sharded" / "model.safetensors.index.json").read_bytes()
    if raw is not None:
        index_path.write_bytes(raw)
    else:
        index = json.loads(original)
        node = index
        for key in path[:-1]:
            node = node.setdefault(key, {}) if isinstance(node, dict) else node
        if isinstance(node, dict):
            node[path[-1] if path else "weight_map"] = value
        index_path.write_text(json.dumps(index))
    try:
        checkpoint = Checkpoint.open(root)
        assert all(shard.path.parent == root for shard in checkpoint.shards)
    except CheckpointError as e:
        assert str(e) and "\n" not in str(e)
    finally:
        index_path.write_bytes(original)
