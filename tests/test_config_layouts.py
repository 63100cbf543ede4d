"""Configs as vendors ship them, with sizes left to their class defaults: the layouts of the released Gemma-3 4B
(`text_config` without vocab_size, layer types from the default sliding-window pattern) and LLaVA-1.5 (a
`text_config` that names neither layers nor heads), with tiny weights. Every verb writes the sizes it changes where
the config class reads them; the outputs load in transformers and run images through the vision tower."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import TOKENIZERS, run_cli, write_keep

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

# google/gemma-3-4b-it config.json, with the sizes of its text and vision configs made tiny (the keys it leaves
# out stay out: text_config.vocab_size, layer_types, sliding_window_pattern)
GEMMA3_LAYOUT = {
    "architectures": ["Gemma3ForConditionalGeneration"], "boi_token_index": 255999, "eoi_token_index": 256000,
    "eos_token_id": [1, 106], "image_token_index": 262144, "initializer_range": 0.02, "mm_tokens_per_image": 4,
    "model_type": "gemma3",
    "text_config": {"head_dim": 8, "hidden_size": 16, "intermediate_size": 32, "model_type": "gemma3_text",
                    "num_attention_heads": 2, "num_hidden_layers": 7, "num_key_value_heads": 1,
                    "rope_scaling": {"factor": 8.0, "rope_type": "linear"}, "sliding_window": 4},
    "torch_dtype": "float32", "transformers_version": "4.50.0.dev0",
    "vision_config": {"hidden_size": 16, "image_size": 56, "intermediate_size": 32, "model_type": "siglip_vision_model",
                      "num_attention_heads": 2, "num_hidden_layers": 2, "patch_size": 14, "vision_use_head": False},
}
GEMMA3_ROWS = 262208  # Gemma3TextConfig's default vocab_size
GEMMA3_TOKENS = 262145  # ... of which the tokenizer names the first 262,145 (<image_soft_token> last)

# llava-hf/llava-1.5-7b-hf config.json, tiny: text_config names neither num_hidden_layers nor the heads (LlamaConfig
# defaults: 32 layers, 32 heads, kv heads = heads)
LLAVA_LAYOUT = {
    "architectures": ["LlavaForConditionalGeneration"], "ignore_index": -100, "image_token_index": 32000,
    "model_type": "llava", "pad_token_id": 32001, "projector_hidden_act": "gelu",
    "text_config": {"_name_or_path": "lmsys/vicuna-7b-v1.5", "architectures": ["LlamaForCausalLM"],
                    "hidden_size": 64, "intermediate_size": 32, "max_position_embeddings": 4096,
                    "model_type": "llama", "rms_norm_eps": 1e-05, "torch_dtype": "float32", "vocab_size": 32064},
    "tie_word_embeddings": False, "torch_dtype": "float32",
    "vision_config": {"hidden_size": 16, "image_size": 28, "intermediate_size": 32, "model_type": "clip_vision_model",
                      "num_attention_heads": 2, "num_hidden_layers": 2, "patch_size": 14, "projection_dim": 16,
                      "vocab_size": 32000},
    "vision_feature_layer": -2, "vision_feature_select_strategy": "default", "vocab_size": 32064,
}


def gemma3_tokenizer(root: Path) -> None:
    """A byte-level BPE tokenizer of Gemma-3's length: the fixture's tokens, fillers, and Gemma's specials at
    their ids (<start_of_image> 255999, <end_of_image> 256000, <image_soft_token> 262144)."""
    tokenizer = json.loads((TOKENIZERS / "bpe-bytelevel-llama3" / "tokenizer.json").read_text())
    vocab = tokenizer["model"]["vocab"]
    specials = {255999: "<start_of_image>", 256000: "<end_of_image>",
                GEMMA3_TOKENS - 1: "<image_soft_token>"}
    taken = set(vocab.values()) | {t["id"] for t in tokenizer["added_tokens"]}
    for token_id in range(GEMMA3_TOKENS):
        if token_id in specials:
            vocab[specials[token_id]] = token_id  # as in Gemma's tokenizer.json: in the model vocab and added
            tokenizer["added_tokens"].append({"id": token_id, "content": specials[token_id], "single_word": False,
                                              "lstrip": False, "rstrip": False, "normalized": False,
                                              "special": True})
        elif token_id not in taken:
            vocab[f"filler{token_id}"] = token_id
    for token in tokenizer["added_tokens"]:
        vocab.setdefault(token["content"], token["id"])
    (root / "tokenizer.json").write_text(json.dumps(tokenizer))
    (root / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"}))


def build(layout: dict, config_class: str, model_class: str, root: Path):
    """The model transformers builds from the layout, saved, with the layout itself as config.json."""
    config = getattr(transformers, config_class).from_dict(json.loads(json.dumps(layout)))
    torch.manual_seed(0)
    model = getattr(transformers, model_class)(config).eval()
    model.save_pretrained(root)
    (root / "config.json").write_text(json.dumps(layout, indent=2))
    reloaded = getattr(transformers, model_class).from_pretrained(root, dtype=torch.float32).eval()
    return reloaded


def gemma3_inputs(ids: list[int], image: int, boi: int, eoi: int):
    """Text, then one image (its 4 soft tokens between boi and eoi), then text; pixel values; token types."""
    input_ids = torch.tensor([ids[:3] + [boi] + [image] * 4 + [eoi] + ids[3:]])
    token_type_ids = (input_ids == image).long()
    pixels = torch.randn(1, 3, 56, 56, generator=torch.Generator().manual_seed(1))
    return dict(input_ids=input_ids, pixel_values=pixels, token_type_ids=token_type_ids)


def run(model, inputs):
    with torch.no_grad():
        return model(**inputs, use_cache=False).logits


def test_gemma3_without_vocab_size_trims_and_runs_images(tmp_path):
    src = tmp_path / "gemma3"
    original = build(GEMMA3_LAYOUT, "Gemma3Config", "Gemma3ForConditionalGeneration", src)
    gemma3_tokenizer(src)
    assert original.config.text_config.vocab_size == GEMMA3_ROWS
    kept_text = list(range(2, 300))
    keep = write_keep(tmp_path / "keep.txt", kept_text)
    out = tmp_path / "out"
    run_cli(["trim", src, "--keep", keep, "-o", out, "-q"])
    config = json.loads((out / "config.json").read_text())
    record = json.loads((out / "surgery_trim.json").read_text())
    old_ids = record["old_ids"]
    assert "vocab_size" not in config and config["text_config"]["vocab_size"] == len(old_ids)
    assert set(config) == set(GEMMA3_LAYOUT) and set(config["text_config"]) == {*GEMMA3_LAYOUT["text_config"],
                                                                                "vocab_size"}
    new_id = {old: new for new, old in enumerate(old_ids)}
    assert config["image_token_index"] == new_id[262144] and config["boi_token_index"] == new_id[255999]
    trimmed = transformers.Gemma3ForConditionalGeneration.from_pretrained(out, dtype=torch.float32).eval()
    text = [5, 17, 40, 41, 99, 150, 151, 201, 299]
    before = run(original, gemma3_inputs(text, 262144, 255999, 256000))
    after = run(trimmed, gemma3_inputs([new_id[i] for i in text], new_id[262144], new_id[255999], new_id[256000]))
    torch.testing.assert_close(after[..., : len(old_ids)], before[..., old_ids], rtol=1e-5, atol=1e-5)


def test_gemma3_drop_layers_writes_the_layer_types_its_default_pattern_gave(tmp_path):
    src = tmp_path / "gemma3"
    original = build(GEMMA3_LAYOUT, "Gemma3Config", "Gemma3ForConditionalGeneration", src)
    gemma3_tokenizer(src)
    types = original.config.text_config.layer_types
    assert types[5] == "full_attention" and types.count("full_attention") == 1  # (i + 1) % 6 == 0
    out = tmp_path / "out"
    run_cli(["drop-layers", src, "--drop", "0,2", "-o", out, "-q"])
    config = json.loads((out / "config.json").read_text())
    kept = [1, 3, 4, 5, 6]
    assert config["text_config"]["num_hidden_layers"] == 5
    assert config["text_config"]["layer_types"] == [types[i] for i in kept]
    layers = original.model.language_model.layers
    original.model.language_model.layers = torch.nn.ModuleList([layers[i] for i in kept])
    original.config.text_config.num_hidden_layers = len(kept)
    original.config.text_config.layer_types = [types[i] for i in kept]
    dropped = transformers.Gemma3ForConditionalGeneration.from_pretrained(out, dtype=torch.float32).eval()
    inputs = gemma3_inputs([5, 17, 40, 41, 99, 150, 151, 201, 299], 262144, 255999, 256000)
    torch.testing.assert_close(run(dropped, inputs), run(original, inputs), rtol=0, atol=0)


def llava_inputs():
    ids = torch.tensor([[1, 5, 9, 32000, 32000, 32000, 32000, 40, 41, 42, 43, 44]])
    pixels = torch.randn(1, 3, 28, 28, generator=torch.Generator().manual_seed(1))
    return dict(input_ids=ids, pixel_values=pixels)


def test_llava_drop_layers_reads_and_writes_the_default_layer_count(tmp_path):
    src = tmp_path / "llava"
    original = build(LLAVA_LAYOUT, "LlavaConfig", "LlavaForConditionalGeneration", src)
    for path in (TOKENIZERS / "sp-bpe-llama").iterdir():
        shutil.copy(path, src / path.name)
    assert original.config.text_config.num_hidden_layers == 32
    out = tmp_path / "out"
    run_cli(["drop-layers", src, "--tail", "28", "-o", out, "-q"])
    config = json.loads((out / "config.json").read_text())
    assert config["text_config"]["num_hidden_layers"] == 4
    assert "num_attention_heads" not in config["text_config"]  # unchanged sizes stay as the source spelled them
    kept = json.loads((out / "surgery_drop_layers.json").read_text())["kept_layers"]
    assert kept == [0, 1, 2, 31]  # --tail keeps the last layer (Minitron)
    layers = original.model.language_model.layers
    original.model.language_model.layers = torch.nn.ModuleList([layers[i] for i in kept])
    original.config.text_config.num_hidden_layers = 4
    dropped = transformers.LlavaForConditionalGeneration.from_pretrained(out, dtype=torch.float32).eval()
    torch.testing.assert_close(run(dropped, llava_inputs()), run(original, llava_inputs()), rtol=0, atol=0)


def test_prune_writes_the_intermediate_size_the_source_left_to_its_default(tmp_path):
    """A Llama config without intermediate_size (LlamaConfig's 11008) and without num_key_value_heads."""
    src = tmp_path / "llama"
    layout = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 16, "num_hidden_layers": 2,
              "num_attention_heads": 2, "vocab_size": 800, "torch_dtype": "float32"}
    original = build(layout, "LlamaConfig", "LlamaForCausalLM", src)
    assert original.config.intermediate_size == 11008
    scores = torch.rand(2, 11008, generator=torch.Generator().manual_seed(0))
    (tmp_path / "imp.json").write_text(json.dumps({"format": "surgery-importance/1", "mlp": scores.tolist()}))
    out = tmp_path / "out"
    run_cli(["prune", src, "--importance", tmp_path / "imp.json", "--intermediate-size", "64", "-o", out, "-q"])
    config = json.loads((out / "config.json").read_text())
    assert config["intermediate_size"] == 64 and "num_key_value_heads" not in config
    kept = [sorted(torch.argsort(-scores[i], stable=True)[:64].tolist()) for i in range(2)]
    with torch.no_grad():
        for i, layer in enumerate(original.model.layers):
            mask = torch.ones(11008, dtype=torch.bool)
            mask[kept[i]] = False
            layer.mlp.down_proj.weight[:, mask] = 0
    pruned = transformers.LlamaForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ids = torch.randint(3, 700, (2, 10), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(run(pruned, dict(input_ids=ids)), run(original, dict(input_ids=ids)),
                               rtol=1e-5, atol=1e-6)
