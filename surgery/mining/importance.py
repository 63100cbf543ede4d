"""importance: Minitron's activation-based scores on a calibration corpus (the optional extra: torch and
transformers, `pip install 'surgery[importance]'`). The only module that loads a model class.

One forward pass per batch with hooks, no gradients, activations in float32 (Model-Optimizer,
modelopt/torch/nas/plugins/megatron.py; ../shared/PRUNING.md). Per sequence, |x| is averaged over its tokens;
over the corpus, those means are combined as an L2 norm (square, sum, square root at the end):
- "mlp": the input of down_proj (act(gate) * up), one score per neuron;
- "heads": the input of o_proj, then an L2 over head_dim: one score per query head;
- "hidden": the outputs of every input_layernorm and post_attention_layernorm, summed over the norms;
- "layers": Block Influence, 1 - cos(layer input, layer output), averaged over tokens, summed over sequences.
- "input_rms": per 2-D linear weight of the layers (the candidates of `surgery factor`), the root mean square of
  each input channel over every real token: the diagonal that activation-aware factorization (--scaling) uses.
MoE models also get "experts" (each expert's routing probability), "experts_mlp" (each expert's act(gate) * up
over the tokens routed to it, recomputed from the fused weights) and "shared_expert_mlp" (Qwen2-MoE).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from surgery.errors import InputError
from surgery.mining.corpus import CorpusSpec, read_documents
from surgery.engine import import_torch, input_device, load_causal_lm, load_tokenizer, processes
from surgery.model.factor_targets import CANDIDATE, NOT_CANDIDATE
from surgery.mining.importance_file import IMPORTANCE_FORMAT


def compute_importance(src: Path, corpora: Iterable[CorpusSpec], *, max_docs: int | None = None,
                       field: str = "text", whole_files: bool = False, batch_size: int = 8, max_length: int = 512,
                       device: str = "cpu",
                       progress: Callable[[int, int], None] | None = None) -> dict:
    torch, _ = import_torch("importance")
    state_of_run = processes()
    model = load_causal_lm(src, "importance", device=device, dtype=torch.float32)
    tokenizer = load_tokenizer(src, "importance")
    device = input_device(model, device)
    if tokenizer.pad_token is None:  # batches are padded; the mask keeps padding out of every score
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    layers = model.model.layers
    config = model.config.get_text_config()
    n_heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_heads
    sums = {"mlp": [0.0] * len(layers), "heads": [0.0] * len(layers), "hidden": {}, "layers": np.zeros(len(layers)),
            "shared_expert_mlp": [0.0] * len(layers), "experts": [0.0] * len(layers),
            "experts_mlp": [None] * len(layers)}
    state: dict = {}

    def per_sequence(x):
        """mean of |x| over each sequence's real tokens: [batch, features]."""
        mask = state["mask"].to(x.dtype)
        x = x.reshape(*mask.shape, x.shape[-1])  # MoE blocks see the batch's tokens flattened
        return (x.abs() * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)

    def mlp_hook(index):
        def hook(module, args):
            sums["mlp"][index] = sums["mlp"][index] + (per_sequence(args[0].float()) ** 2).sum(0)
        return hook

    def heads_hook(index):
        def hook(module, args):
            means = per_sequence(args[0].float()).reshape(-1, n_heads, head_dim)
            sums["heads"][index] = sums["heads"][index] + (means.norm(dim=-1) ** 2).sum(0)
        return hook

    def norm_hook(name):
        def hook(module, args, output):
            sums["hidden"][name] = sums["hidden"].get(name, 0.0) + (per_sequence(output.float()) ** 2).sum(0)
        return hook

    def shared_hook(index):
        def hook(module, args):
            sums["shared_expert_mlp"][index] = sums["shared_expert_mlp"][index] + (
                per_sequence(args[0].float()) ** 2).sum(0)
        return hook

    def router_hook(index):
        def hook(module, args, output):
            logits = (output[0] if isinstance(output, tuple) else output).float()
            sums["experts"][index] = sums["experts"][index] + (per_sequence(logits.softmax(-1)) ** 2).sum(0)
        return hook

    def experts_hook(index):
        """Each expert's act(gate) * up on the tokens routed to it, recomputed from the fused weights."""
        def hook(module, args):
            hidden_states, top_k_index = args[0].float().reshape(-1, args[0].shape[-1]), args[1].reshape(-1, args[1].shape[-1])
            batch, length = state["mask"].shape
            valid = state["mask"].reshape(-1).bool()
            sequence = torch.arange(batch * length, device=hidden_states.device) // length
            scores = sums["experts_mlp"][index]
            for expert in range(module.gate_up_proj.shape[0]):
                routed = (top_k_index == expert).any(-1) & valid
                if not routed.any():
                    continue
                gate, up = torch.nn.functional.linear(hidden_states[routed], module.gate_up_proj[expert].float()).chunk(2, -1)
                values = (module.act_fn(gate) * up).abs()
                owners = sequence[routed]
                means = torch.zeros(batch, values.shape[-1]).index_add_(0, owners, values) / torch.bincount(
                    owners, minlength=batch).clamp(min=1)[:, None]
                scores[expert] = scores[expert] + (means ** 2).sum(0)
        return hook

    def layer_hook(index):
        def hook(module, args, kwargs, output):
            hidden_in = (args[0] if args else kwargs["hidden_states"]).float()
            hidden_out = (output[0] if isinstance(output, tuple) else output).float()
            cos = torch.nn.functional.cosine_similarity(hidden_in, hidden_out, dim=-1)
            mask = state["mask"].to(cos.dtype)
            sums["layers"][index] += float((((1 - cos) * mask).sum(1) / mask.sum(1)).sum())
        return hook

    input_sums: dict = {}

    def input_hook(name):
        def hook(module, args):
            x = args[0].float()
            mask = state["mask"].to(x.dtype).reshape(-1)
            flat = x.reshape(-1, x.shape[-1])
            input_sums[name] = input_sums.get(name, 0.0) + (flat ** 2 * mask[:, None]).sum(0)
        return hook

    handles = []
    for name, module in model.named_modules():
        if CANDIDATE.match(f"{name}.weight") and not NOT_CANDIDATE.search(name):
            handles.append(module.register_forward_pre_hook(input_hook(name)))
    for index, layer in enumerate(layers):
        if hasattr(layer.mlp, "down_proj"):  # dense MLPs
            handles.append(layer.mlp.down_proj.register_forward_pre_hook(mlp_hook(index)))
        if hasattr(layer.mlp, "shared_expert"):  # qwen2-moe
            handles.append(layer.mlp.shared_expert.down_proj.register_forward_pre_hook(shared_hook(index)))
        if hasattr(layer.mlp, "gate") and hasattr(layer.mlp, "experts"):  # MoE: the router and the experts
            handles.append(layer.mlp.gate.register_forward_hook(router_hook(index)))
            if hasattr(layer.mlp.experts, "gate_up_proj"):
                n_experts = layer.mlp.experts.gate_up_proj.shape[0]
                sums["experts_mlp"][index] = [0.0] * n_experts
                handles.append(layer.mlp.experts.register_forward_pre_hook(experts_hook(index)))
        handles.append(layer.self_attn.o_proj.register_forward_pre_hook(heads_hook(index)))
        for norm in ("input_layernorm", "post_attention_layernorm"):
            handles.append(getattr(layer, norm).register_forward_hook(norm_hook(f"{index}.{norm}")))
        handles.append(layer.register_forward_hook(layer_hook(index), with_kwargs=True))
    documents = tokens = 0
    batch_index = -1
    try:
        for spec in corpora:
            docs = itertools.islice((d for d in read_documents(spec, field=field, whole_files=whole_files)
                                     if d.strip()), spec.max_docs or max_docs)
            while batch := list(itertools.islice(docs, batch_size)):
                batch_index += 1
                if batch_index % state_of_run.count != state_of_run.index:  # another process's batch
                    continue
                encoded = tokenizer(batch, return_tensors="pt", padding=True, truncation=True, max_length=max_length)
                state["mask"] = encoded["attention_mask"].to(device)
                with torch.no_grad():
                    model(input_ids=encoded["input_ids"].to(device), attention_mask=state["mask"], use_cache=False)
                documents += len(batch)
                tokens += int(state["mask"].sum())
                if progress:
                    progress(len(batch), sum(len(d.encode()) for d in batch))
    finally:
        for handle in handles:
            handle.remove()
    local = {"documents": documents, "tokens": tokens, "sums": _numpy(sums), "inputs": _numpy(input_sums)}
    merged = functools.reduce(_add, state_of_run.gather(local))  # under a launcher: every process's sums
    state_of_run.finish()
    documents, tokens, sums, input_sums = merged["documents"], merged["tokens"], merged["sums"], merged["inputs"]
    if not documents:
        raise InputError("importance: the corpora hold no documents")
    as_list = lambda a: np.sqrt(a).tolist()  # noqa: E731
    hidden = sum(np.sqrt(v) for v in sums["hidden"].values())
    result = {"format": IMPORTANCE_FORMAT, "source": str(src), "documents": documents, "tokens": tokens,
              "layers": sums["layers"].tolist(), "heads": [as_list(v) for v in sums["heads"]],
              "hidden": hidden.tolist(),
              "input_rms": {name: np.sqrt(v / max(tokens, 1)).tolist() for name, v in input_sums.items()}}
    for key in ("mlp", "shared_expert_mlp", "experts"):  # present when every layer has the module
        if all(not isinstance(v, float) for v in sums[key]):
            result[key] = [as_list(v) for v in sums[key]]
    if all(v is not None and not any(isinstance(e, float) for e in v) for v in sums["experts_mlp"]):
        result["experts_mlp"] = [[as_list(e) for e in v] for v in sums["experts_mlp"]]
    return result


def _numpy(value):
    """Sums as float64 numpy arrays (tensors moved off their device), in the same nesting."""
    if isinstance(value, dict):
        return {k: _numpy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_numpy(v) for v in value]
    if hasattr(value, "detach"):
        return value.detach().double().cpu().numpy()
    return value


def _add(a, b):
    """Two processes' sums added (0.0: a hook that never fired there; None: no such module)."""
    if isinstance(a, dict):
        return {k: _add(a[k], b[k]) if k in a and k in b else a.get(k, b.get(k)) for k in {**a, **b}}
    if isinstance(a, list):
        return [_add(x, y) for x, y in zip(a, b)]
    if a is None or b is None:
        return a if b is None else b
    return a + b
