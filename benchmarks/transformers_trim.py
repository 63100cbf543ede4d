"""The baseline: trim the same rows with transformers (load the model, gather, save_pretrained).

    python benchmarks/transformers_trim.py SRC KEEP_IDS OUT

Tensors only: it does not rewrite the tokenizer, which `surgery trim` also does in its measured time.
"""

from __future__ import annotations

import sys

import torch
from transformers import AutoModelForCausalLM


def main() -> None:
    src, keep, out = sys.argv[1:4]
    kept = torch.tensor([int(line) for line in open(keep) if line.strip()])
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.bfloat16)
    embed = model.get_input_embeddings()
    new_embed = torch.nn.Embedding(len(kept), embed.weight.shape[1], dtype=embed.weight.dtype)
    new_embed.weight.data = embed.weight.data[kept].clone()
    model.set_input_embeddings(new_embed)
    head = model.get_output_embeddings()
    if head is not None and head.weight.data_ptr() != embed.weight.data_ptr():
        new_head = torch.nn.Linear(head.weight.shape[1], len(kept), bias=False, dtype=head.weight.dtype)
        new_head.weight.data = head.weight.data[kept].clone()
        model.set_output_embeddings(new_head)
    model.config.vocab_size = len(kept)
    model.tie_weights()
    model.save_pretrained(out)


if __name__ == "__main__":
    main()
