"""edit/sources: a folder and a GGUF file of the same model look the same to a verb (the same sizes, the same
decisions, the same records), and each builds its own container's edit."""

from __future__ import annotations

import json

import numpy as np
from conftest import H, HEAD_DIM, I, LAYERS, N_HEADS, importance_file, tiny_folder, tiny_gguf

from surgery.edit.sources import open_source
from surgery.verbs.drop_layers import plan_drop_layers
from surgery.verbs.prune import plan_prune


def test_both_containers_give_the_same_sizes(tmp_path):
    folder, gguf = open_source(tiny_folder(tmp_path / "src")), open_source(tiny_gguf(tmp_path / "src.gguf"))
    keys = ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads",
            "head_dim")
    assert [folder.dims()[k] for k in keys] == [gguf.dims()[k] for k in keys] == [LAYERS, H, I, N_HEADS, 1, HEAD_DIM]
    assert folder.n_layers() == gguf.n_layers() == LAYERS
    assert (folder.container, gguf.container, gguf.arch) == ("folder", "gguf", "llama")


def test_one_verb_decides_the_same_for_both_containers(tmp_path):
    folder, gguf = open_source(tiny_folder(tmp_path / "src")), open_source(tiny_gguf(tmp_path / "src.gguf"))
    importance = json.loads(importance_file(tmp_path / "imp.json").read_text())
    plans = [plan_prune(source, importance, "imp.json", intermediate_size=5, num_attention_heads=1, hidden_size=6)
             for source in (folder, gguf)]
    records = [{k: v for k, v in plan.record().items() if k != "source"} for plan in plans]
    assert records[0] == records[1] and records[0]["sizes"]["intermediate_size"] == 5
    # the same tensors are cut, to the same shapes, under each container's names
    assert len(plans[0].cut_tensors()) == len(plans[1].cut_tensors()) == 2 + LAYERS * 9
    layers = [plan_drop_layers(source, [0, 2]) for source in (folder, gguf)]
    assert layers[0].record()["dropped_layers"] == layers[1].record()["dropped_layers"] == [1]
    assert layers[0].describe().splitlines()[1] == layers[1].describe().splitlines()[1] == "layers: 3 -> 2 (dropped 1)"


def test_each_container_builds_its_own_edit(tmp_path):
    folder, gguf = open_source(tiny_folder(tmp_path / "src")), open_source(tiny_gguf(tmp_path / "src.gguf"))
    folder_plan, gguf_plan = plan_drop_layers(folder, [0, 2]), plan_drop_layers(gguf, [0, 2])
    assert [s.name for s in folder_plan.shards] == ["model.safetensors"] and folder_plan.shards[0].rewritten
    assert json.loads(folder_plan.files["config.json"])["num_hidden_layers"] == 2
    renamed = {a.source: a.name for a in folder_plan.tensor_actions() if a.source}
    assert renamed["model.layers.2.mlp.down_proj.weight"] == "model.layers.1.mlp.down_proj.weight"
    kvs = {kv.key: kv.value for kv in gguf_plan.part_kvs(0)}
    assert kvs["llama.block_count"] == 2 and json.loads(kvs["surgery.drop_layers_record"])["kept_layers"] == [0, 2]
    assert {a.tensor.name: a.name for a in gguf_plan.actions if a.new_name}["blk.2.ffn_down.weight"] == \
        "blk.1.ffn_down.weight"
    cuts = [s for s in plan_prune(gguf, json.loads(importance_file(tmp_path / "imp.json").read_text()), "imp.json",
                                  hidden_size=6).slices() if s.cols is not None]
    assert cuts and all(np.array_equal(s.cols, cuts[0].cols) for s in cuts)  # one set of hidden channels
