"""Computed outputs (edit/compute.py) and multi-output staging (edit/staging.py): one preparation per group for
all outputs, copies byte for byte, indexes rebuilt; a failed check leaves no output and no partial folder."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import leftovers
from safetensors.numpy import load_file, save_file

from surgery.edit.compute import Output, OutputShard, write_outputs
from surgery.edit.ops import Compute, Copy
from surgery.edit.staging import write_folders
from surgery.errors import VerifyError
from surgery.formats.hf_folder import Checkpoint


def source(tmp_path):
    root = tmp_path / "src"
    root.mkdir()
    rng = np.random.default_rng(0)
    save_file({"a.weight": rng.standard_normal((4, 3)).astype(np.float32),
               "b.weight": rng.standard_normal((5, 2)).astype(np.float32)}, root / "model.safetensors")
    (root / "config.json").write_text("{}")
    return Checkpoint.open(root)


def outputs(ckpt, scales):
    entries = {e.name: e for e in ckpt.shards[0].entries}
    result = []
    for scale in scales:
        ops = (Copy("a.weight", entries["a.weight"], "a"),
               Compute("b.double", "BF16", (5, 2), "b", lambda value, s=scale: value * s),
               Compute("b.weight", "F16", (5, 2), "b", lambda value: value))
        result.append(Output((OutputShard("model.safetensors", {"format": "pt"}, ops),), {"config.json": b"{}\n"},
                             (), None))
    return result


def test_each_group_is_prepared_once_for_every_output(tmp_path):
    ckpt = source(tmp_path)
    prepared = []
    b = load_file(ckpt.root / "model.safetensors")["b.weight"]

    def prepare(key):
        prepared.append(key)
        return b

    targets = [tmp_path / "one", tmp_path / "two"]
    write_outputs(ckpt.root, outputs(ckpt, [2.0, 3.0]), targets, prepare, lambda n: None)
    assert prepared == ["b"]
    src = load_file(ckpt.root / "model.safetensors")
    for target, scale in zip(targets, (2.0, 3.0)):
        import torch
        from safetensors.torch import load_file as load_torch

        out = load_torch(target / "model.safetensors")
        assert out["a.weight"].numpy().tobytes() == src["a.weight"].tobytes()
        assert out["b.double"].dtype == torch.bfloat16 and torch.equal(out["b.double"],
                                                                        torch.from_numpy(b * scale).bfloat16())
        assert out["b.weight"].dtype == torch.float16
        assert json.loads((target / "config.json").read_text()) == {}


def test_a_failed_check_leaves_nothing(tmp_path):
    ckpt = source(tmp_path)
    b = load_file(ckpt.root / "model.safetensors")["b.weight"]
    outs = [tmp_path / "one", tmp_path / "two"]

    def check(partials):
        assert all(p.exists() for p in partials)
        raise VerifyError("output: wrong")

    with pytest.raises(VerifyError):
        write_folders(outs, lambda partials: write_outputs(ckpt.root, outputs(ckpt, [1.0, 2.0]), partials,
                                                           lambda key: b, lambda n: None), check)
    assert leftovers(tmp_path) == [] and not any(o.exists() for o in outs)
