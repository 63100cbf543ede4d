"""prune for GGUF files: the same cuts as for a folder, under llama.cpp's tensor names, where no quantized block
is cut. Rows of any type are whole blocks; a column cut splits the blocks of a quantized row, so it is refused
(F32, F16 and BF16 columns are single elements). Experts are stored merged (`ffn_*_exps`, experts outermost),
so expert pruning takes whole expert slabs of any type.

Metadata: `{arch}.feed_forward_length`, `{arch}.attention.head_count` (scalars or per-layer arrays),
`{arch}.embedding_length`, `{arch}.expert_count`, and `{arch}.attention.key_length` / `value_length` written
explicitly when heads or hidden channels are cut (llama.cpp otherwise derives them as n_embd / n_head).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from surgery.dtypes import columns_cuttable
from surgery.errors import CheckpointError, InputError, VerifyError
from surgery.formats.gguf import (
    ARRAY,
    UINT32,
    GgufFile,
    KeyValue,
    read_gguf,
)
from surgery.verbs.layers_gguf import gguf_block_count
from surgery.verbs.vocab_gguf import GgufAction, GgufEdit
from surgery.verbs.width import Cut, decide_cut, fused_qkv_rows, head_rows

RECORD_KEY = "surgery.prune_record"
BLOCK = re.compile(r"^blk\.(?P<index>\d+)\.(?P<rest>.+)$")
NORMS = ("attn_norm.weight", "ffn_norm.weight", "post_attention_norm.weight", "post_ffw_norm.weight",
         "attn_post_norm.weight", "ffn_post_norm.weight")
INPUT_PROJECTIONS = ("attn_q.weight", "attn_k.weight", "attn_v.weight", "attn_qkv.weight", "ffn_gate.weight",
                     "ffn_up.weight", "ffn_gate_inp.weight", "ffn_gate_exps.weight", "ffn_up_exps.weight",
                     "ffn_gate_shexp.weight", "ffn_up_shexp.weight")


def _text_view(gguf: GgufFile, arch: str) -> dict:
    """The sizes the cut needs, named as in a Hugging Face config."""
    n_heads = gguf.integer(f"{arch}.attention.head_count")
    hidden = gguf.integer(f"{arch}.embedding_length")
    if not n_heads or not hidden:
        raise CheckpointError(f"{gguf.path.name}: no {arch}.attention.head_count or {arch}.embedding_length in its "
                              "metadata")
    text = {"num_hidden_layers": gguf.integer(f"{arch}.block_count"), "hidden_size": hidden,
            "intermediate_size": gguf.integer(f"{arch}.feed_forward_length"), "num_attention_heads": n_heads,
            "num_key_value_heads": gguf.integer(f"{arch}.attention.head_count_kv") or n_heads,
            "head_dim": gguf.integer(f"{arch}.attention.key_length") or hidden // n_heads}
    if gguf.integer(f"{arch}.expert_count"):
        text["num_experts"] = gguf.integer(f"{arch}.expert_count")
        text["num_experts_per_tok"] = gguf.integer(f"{arch}.expert_used_count") or 1
    return text


def gguf_take(name: str, shape: tuple[int, ...], cut: Cut, text: dict, arch: str):
    """(rows, cols) of a tensor in numpy order (rows: the outermost axis)."""
    match = BLOCK.match(name)
    layer = int(match["index"]) if match else None
    rest = match["rest"] if match else name
    rows = cols = None
    head_dim = text["head_dim"]
    if layer is not None and cut.experts is not None and rest in (
            "ffn_gate_inp.weight", "ffn_gate_exps.weight", "ffn_up_exps.weight", "ffn_down_exps.weight",
            "exp_probs_b.bias"):
        rows = cut.experts[layer]
    if layer is not None and cut.mlp is not None:
        neurons = cut.mlp[layer]
        if rest == "ffn_up.weight" and arch == "phi3":  # phi3: gate and up fused in ffn_up
            rows = np.concatenate([neurons, text["intermediate_size"] + neurons])
        elif rest in ("ffn_gate.weight", "ffn_up.weight", "ffn_gate.bias", "ffn_up.bias"):
            rows = neurons
        elif rest == "ffn_down.weight":
            cols = neurons
    if layer is not None and cut.heads is not None:
        q_rows = head_rows(cut.heads[layer], head_dim)
        n_heads, n_kv = text["num_attention_heads"], text["num_key_value_heads"]
        if rest in ("attn_q.weight", "attn_q.bias"):
            rows = q_rows
        elif rest == "attn_qkv.weight":
            rows = fused_qkv_rows(q_rows, n_heads, n_kv, head_dim)
        elif rest == "attn_output.weight":
            cols = q_rows
        elif rest == "attn_q_norm.weight" and shape[0] == n_heads * head_dim:
            rows = q_rows
    if cut.hidden is not None:
        if rest in NORMS or name == "output_norm.weight":
            rows = cut.hidden
        elif rest in ("attn_output.weight", "ffn_down.weight", "ffn_down_shexp.weight", "attn_output.bias",
                      "ffn_down.bias"):
            rows = cut.hidden
        elif rest in INPUT_PROJECTIONS or name in ("token_embd.weight", "output.weight"):
            cols = cut.hidden
        elif rest == "ffn_down_exps.weight":
            raise CheckpointError(f"'{name}': hidden channels of merged experts are not supported")
    return rows, cols


@dataclass(frozen=True, slots=True)
class GgufPrunePlan(GgufEdit):
    src: Path
    parts: tuple[GgufFile, ...]
    cut: Cut
    actions: tuple[GgufAction, ...]
    kvs: tuple[tuple[KeyValue, ...], ...]  # per part
    row_source = None
    record_key: ClassVar[str] = RECORD_KEY

    def record(self) -> dict:
        as_lists = lambda units: None if units is None else [u.tolist() for u in units]  # noqa: E731
        return {"source": str(self.src), "sizes": self.cut.sizes, "kept_mlp": as_lists(self.cut.mlp),
                "kept_heads": as_lists(self.cut.heads), "kept_experts": as_lists(self.cut.experts),
                "kept_hidden": None if self.cut.hidden is None else self.cut.hidden.tolist()}

    def to_json(self) -> dict:
        return {"source": str(self.src), "sizes": self.cut.sizes, **self.totals(),
                "tensors": [{"name": a.name, "old_shape": list(a.tensor.shape), "new_shape": list(reversed(a.new_ne))}
                            for a in self.actions if a.rows is not None or a.cols is not None]}

    def describe(self) -> str:
        return "\n".join([f"source: {self.src}", "sizes: " + ", ".join(f"{k} = {v}" for k, v in self.cut.sizes.items()),
                          f"tensors cut: {sum(1 for a in self.actions if a.rows is not None or a.cols is not None)}"])

    def check_output(self, targets: list[Path]) -> None:
        """Reopen the parts: every tensor with its planned shape and type."""
        try:
            written = {t.name: t for target in targets for t in read_gguf(target).tensors}
        except CheckpointError as e:
            raise VerifyError(f"output {e}") from e
        for action in self.actions:
            got = written.get(action.name)
            if got is None or got.ne != action.new_ne or got.ggml_type != action.tensor.ggml_type:
                raise VerifyError(f"output: tensor '{action.name}' is missing or has the wrong shape")


def plan_gguf_prune(parts: list[GgufFile], importance: dict, importance_name: str, **sizes) -> GgufPrunePlan:
    first = parts[0]
    arch = str(first.get("general.architecture") or "")
    gguf_block_count(first, parts)  # an integer naming the blocks the tensors hold
    text = _text_view(first, arch)
    if sizes.get("moe_intermediate_size") or sizes.get("shared_expert_intermediate_size"):
        raise InputError(f"{first.path.name}: pruning expert neurons of a GGUF file is not supported (its experts "
                         "are merged); prune the Hugging Face checkpoint, then convert")
    return plan_gguf_cut(parts, decide_cut(text, importance, importance_name, **sizes))


def plan_gguf_cut(parts: list[GgufFile], cut: Cut) -> GgufPrunePlan:
    """The plan of a decided cut (also replayed from a record by `surgery verify`)."""
    first = parts[0]
    arch = str(first.get("general.architecture") or "")
    text = _text_view(first, arch)
    actions = []
    for index, part in enumerate(parts):
        for tensor in part.tensors:
            rows, cols = gguf_take(tensor.name, tensor.shape, cut, text, arch)
            new_ne = list(tensor.ne)
            if rows is not None:
                new_ne[-1] = len(rows)
            if cols is not None:
                if not columns_cuttable(tensor.ggml_type) or len(tensor.ne) != 2:
                    raise InputError(f"{tensor.path.name}: cutting columns of '{tensor.name}' ({tensor.dtype}) would "
                                     "cut inside its quantized blocks; prune the unquantized model, then quantize")
                new_ne[0] = len(cols)
            actions.append(GgufAction(index, tensor, tuple(new_ne), None, rows=rows, cols=cols))
    values = {f"{arch}.embedding_length": cut.sizes.get("hidden_size"),
              f"{arch}.feed_forward_length": cut.sizes.get("intermediate_size"),
              f"{arch}.attention.head_count": cut.sizes.get("num_attention_heads"),
              f"{arch}.expert_count": cut.sizes.get("num_experts")}
    kvs = []
    for kv in first.kvs.values():
        kv = KeyValue(kv.key, kv.type, kv.value, kv.subtype)
        if values.get(kv.key) is not None:
            kv.value = (np.full(len(kv.value), values[kv.key], kv.value.dtype) if kv.type == ARRAY else values[kv.key])
        kvs.append(kv)
    if "head_dim" in cut.sizes:
        present = {kv.key for kv in kvs}
        kvs += [KeyValue(f"{arch}.attention.{key}", UINT32, cut.sizes["head_dim"]) for key in ("key_length",
                                                                                          "value_length")
                if f"{arch}.attention.{key}" not in present]
    return GgufPrunePlan(first.path, tuple(parts), cut, tuple(actions),
                         (tuple(kvs), *(tuple(part.kvs.values()) for part in parts[1:])))

