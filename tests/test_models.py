"""End to end with a real client: tiny random transformers models, trimmed by the CLI, logits compared.

For each architecture: build the model from its config (offline), save_pretrained, trim with
`surgery trim`, load both with from_pretrained, and check that on held-back text whose ids are all kept
the trimmed tokenizer gives the mapped ids and the trimmed model gives the same logits on the kept ids
(hidden states for bare encoders).
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import tokenizers
from conftest import TOKENIZERS, corpus_lines, run_cli, write_keep

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TINY = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
            num_key_value_heads=1, max_position_embeddings=128)


@dataclass(frozen=True)
class Arch:
    name: str
    config: str  # transformers config class
    model: str  # transformers model class
    tokenizer: str  # fixture tokenizer
    kwargs: dict = field(default_factory=dict)
    dtype: str = "float32"
    extra_rows: int = 0  # embedding rows past the tokenizer (Qwen, T5 style)
    shard_size: str | None = None  # save sharded
    expect_tied: bool | None = None
    seq2seq: bool = False
    encoder_only: bool = False  # compare hidden states, no vocab logits
    overrides: dict = field(default_factory=dict)  # set after construction (T5 configs force tying in __init__)
    audio: bool = False  # whisper: the encoder reads input_features, the decoder the ids


ARCHS = [
    Arch("llama", "LlamaConfig", "LlamaForCausalLM", "sp-bpe-llama", TINY | dict(tie_word_embeddings=False),
         expect_tied=False),
    Arch("mistral-bf16", "MistralConfig", "MistralForCausalLM", "sp-bpe-llama",
         TINY | dict(tie_word_embeddings=False, head_dim=8), dtype="bfloat16", expect_tied=False),
    Arch("qwen2-tied-sharded-padded", "Qwen2Config", "Qwen2ForCausalLM", "bpe-bytelevel-gpt2",
         TINY | dict(tie_word_embeddings=True), extra_rows=60, shard_size="20KB", expect_tied=True),
    Arch("qwen3", "Qwen3Config", "Qwen3ForCausalLM", "bpe-bytelevel-llama3",
         TINY | dict(tie_word_embeddings=False, head_dim=8), expect_tied=False),
    Arch("gemma", "GemmaConfig", "GemmaForCausalLM", "sp-bpe-llama", TINY | dict(head_dim=8), expect_tied=True),
    Arch("gemma2-bf16", "Gemma2Config", "Gemma2ForCausalLM", "sp-bpe-llama", TINY | dict(head_dim=8),
         dtype="bfloat16", expect_tied=True),
    Arch("phi3", "Phi3Config", "Phi3ForCausalLM", "sp-bpe-llama",
         TINY | dict(tie_word_embeddings=False, pad_token_id=0), expect_tied=False),
    Arch("smollm-llama-tied", "LlamaConfig", "LlamaForCausalLM", "bpe-bytelevel-gpt2",
         TINY | dict(tie_word_embeddings=True), expect_tied=True),
    Arch("gpt2", "GPT2Config", "GPT2LMHeadModel", "bpe-bytelevel-gpt2",
         dict(n_embd=16, n_layer=1, n_head=2, n_positions=128, bos_token_id=0, eos_token_id=0), expect_tied=True),
    Arch("gpt-neox", "GPTNeoXConfig", "GPTNeoXForCausalLM", "bpe-bytelevel-gpt2",
         TINY | dict(tie_word_embeddings=False, bos_token_id=0, eos_token_id=0), expect_tied=False),
    Arch("bert-mlm", "BertConfig", "BertForMaskedLM", "wordpiece-bert",
         dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
              max_position_embeddings=128, pad_token_id=0), expect_tied=True),
    Arch("bert-encoder", "BertConfig", "BertModel", "wordpiece-bert",
         dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
              max_position_embeddings=128, pad_token_id=0), encoder_only=True),
    Arch("xlm-roberta-mlm", "XLMRobertaConfig", "XLMRobertaForMaskedLM", "sp-unigram-xlmr",
         dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
              max_position_embeddings=130, pad_token_id=1, bos_token_id=0, eos_token_id=2), expect_tied=True),
    Arch("t5-tied", "T5Config", "T5ForConditionalGeneration", "sp-unigram-t5",
         dict(d_model=16, d_ff=32, d_kv=8, num_layers=1, num_heads=2, decoder_start_token_id=0, pad_token_id=0,
              eos_token_id=1), extra_rows=6, seq2seq=True, expect_tied=True),
    Arch("mt5-untied", "MT5Config", "MT5ForConditionalGeneration", "sp-unigram-t5",
         dict(d_model=16, d_ff=32, d_kv=8, num_layers=1, num_heads=2, decoder_start_token_id=0, pad_token_id=0,
              eos_token_id=1), extra_rows=6, seq2seq=True, expect_tied=False,
         overrides=dict(tie_word_embeddings=False)),
    Arch("bart", "BartConfig", "BartForConditionalGeneration", "bpe-bytelevel-gpt2",
         dict(d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
              encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=128, bos_token_id=0, eos_token_id=0,
              pad_token_id=0, decoder_start_token_id=0, forced_eos_token_id=0), seq2seq=True, expect_tied=True),
    Arch("whisper", "WhisperConfig", "WhisperForConditionalGeneration", "bpe-bytelevel-gpt2",
         dict(d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
              encoder_ffn_dim=32, decoder_ffn_dim=32, num_mel_bins=8, max_source_positions=16,
              max_target_positions=64, pad_token_id=0, bos_token_id=0, eos_token_id=0, decoder_start_token_id=0),
         seq2seq=True, audio=True, expect_tied=True),
    Arch("llava", "LlavaConfig", "LlavaForConditionalGeneration", "sp-bpe-llama",
         dict(vision_config=dict(model_type="clip_vision_model", hidden_size=16, intermediate_size=32,
                                 num_hidden_layers=1, num_attention_heads=2, image_size=28, patch_size=14),
              text_config=dict(model_type="llama", **TINY, tie_word_embeddings=False), image_token_index=5),
         expect_tied=False),
    Arch("gemma3-multimodal", "Gemma3Config", "Gemma3ForConditionalGeneration", "sp-bpe-llama",
         dict(text_config=dict(model_type="gemma3_text", **TINY | dict(head_dim=8), sliding_window=16),
              vision_config=dict(model_type="siglip_vision_model", hidden_size=16, intermediate_size=32,
                                 num_hidden_layers=1, num_attention_heads=2, image_size=28, patch_size=14),
              mm_tokens_per_image=4, image_token_index=5, boi_token_index=6, eoi_token_index=7),
         expect_tied=True),
    # Gemma-3n: a per-layer token table covering only the first vocab_size_per_layer_input ids (800 tokens here)
    Arch("gemma3n-per-layer-table", "Gemma3nTextConfig", "Gemma3nForCausalLM", "sp-bpe-llama",
         dict(vocab_size_per_layer_input=700, hidden_size=16, hidden_size_per_layer_input=4, intermediate_size=32,
              num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=8, sliding_window=16,
              layer_types=["sliding_attention", "full_attention"], activation_sparsity_pattern=[0.0, 0.0],
              num_kv_shared_layers=0, altup_num_inputs=2, laurel_rank=4, max_position_embeddings=128),
         expect_tied=True),
]


def build(arch: Arch, root: Path) -> tuple[Path, int]:
    """Save a tiny random model with its tokenizer; return the folder and the tokenizer size."""
    tok_dir = TOKENIZERS / arch.tokenizer
    n_tokens = tokenizers.Tokenizer.from_file(str(tok_dir / "tokenizer.json")).get_vocab_size(with_added_tokens=True)
    if "text_config" in arch.kwargs:  # multimodal: the vocabulary lives in the text config
        kwargs = {**arch.kwargs, "text_config": {**arch.kwargs["text_config"], "vocab_size": n_tokens}}
        config = getattr(transformers, arch.config)(**kwargs)
    else:
        config = getattr(transformers, arch.config)(vocab_size=n_tokens + arch.extra_rows, **arch.kwargs)
    for key, value in arch.overrides.items():
        setattr(config, key, value)
    torch.manual_seed(0)
    model = getattr(transformers, arch.model)(config).eval()
    with torch.no_grad():  # untrained biases are zero; make them count
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.normal_()
    model = model.to(getattr(torch, arch.dtype))
    kwargs = {"max_shard_size": arch.shard_size} if arch.shard_size else {}
    model.save_pretrained(root, **kwargs)
    for path in tok_dir.iterdir():
        shutil.copy(path, root / path.name)
    return root, n_tokens


def keep_ids(tok_dir: Path, share: float = 0.5) -> list[int]:
    tok = tokenizers.Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    lines = corpus_lines("train.txt")[:300]
    counts = Counter(i for enc in tok.encode_batch(lines, add_special_tokens=False) for i in enc.ids)
    return [i for i, _ in counts.most_common(int(tok.get_vocab_size(True) * share))]


def original_per_layer_rows(src: Path) -> int:
    return json.loads((src / "config.json").read_text())["vocab_size_per_layer_input"]


def kept_texts(original_tok, old_to_new: dict[int, int], limit: int = 6) -> list[tuple[str, list[int]]]:
    """Held-back texts whose original ids (specials included) are all kept, with those ids."""
    found = []
    for line in corpus_lines("heldout.txt"):
        words = line.split()
        for i in range(0, max(len(words) - 5, 1), 3):
            text = " ".join(words[i : i + 6])
            ids = original_tok(text).input_ids
            if len(ids) >= 3 and all(t in old_to_new for t in ids):
                found.append((text, ids))
                if len(found) == limit:
                    return found
    return found


@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: a.name)
def test_trimmed_model_gives_the_same_logits(arch, tmp_path):
    src, n_tokens = build(arch, tmp_path / "src")
    keep = write_keep(tmp_path / "ids.txt", keep_ids(TOKENIZERS / arch.tokenizer))
    out = tmp_path / "out"
    result = run_cli(["trim", src, "--keep", keep, "-o", out, "--json", "-q"])
    summary = json.loads(result.stdout)
    record = json.loads((out / "surgery_trim.json").read_text())
    old_ids = record["old_ids"]
    old_to_new = {old: new for new, old in enumerate(old_ids)}
    assert summary["new_vocab_rows"] == len(old_ids) < n_tokens

    load = dict(dtype=torch.float32)
    original = getattr(transformers, arch.model).from_pretrained(src, **load).eval()
    trimmed = getattr(transformers, arch.model).from_pretrained(out, **load).eval()
    assert trimmed.config.get_text_config().vocab_size == len(old_ids)
    assert trimmed.get_input_embeddings().weight.shape[0] == len(old_ids)
    if hasattr(trimmed.config, "vocab_size_per_layer_input"):  # gemma-3n: the kept ids below the table's length
        below = sum(1 for i in old_ids if i < original_per_layer_rows(src))
        assert trimmed.config.vocab_size_per_layer_input == below < original_per_layer_rows(src)
        assert trimmed.model.embed_tokens_per_layer.weight.shape[0] == below
    if arch.expect_tied is not None:
        head_tensors = [t["name"] for t in json.loads(run_cli(
            ["trim", src, "--keep", keep, "--dry-run", "--json"]).stdout)["tensors"] if t["role"] == "head"]
        assert (not head_tensors) == arch.expect_tied

    original_tok = transformers.AutoTokenizer.from_pretrained(src)
    trimmed_tok = transformers.AutoTokenizer.from_pretrained(out)
    texts = kept_texts(original_tok, old_to_new)
    assert len(texts) >= 3, "too few held-back texts fully kept"
    kept_index = torch.tensor(old_ids)
    for text, ids in texts:
        new_ids = [old_to_new[t] for t in ids]
        assert trimmed_tok(text).input_ids == new_ids, text
        old_in, new_in = torch.tensor([ids]), torch.tensor([new_ids])
        with torch.no_grad():
            if arch.audio:
                features = torch.randn(1, original.config.num_mel_bins, 2 * original.config.max_source_positions,
                                       generator=torch.Generator().manual_seed(0))
                old_out = original(input_features=features, decoder_input_ids=old_in)
                new_out = trimmed(input_features=features, decoder_input_ids=new_in)
            elif arch.seq2seq:
                start = original.config.decoder_start_token_id
                old_out = original(input_ids=old_in, decoder_input_ids=torch.tensor([[start] + ids[:-1]]))
                new_out = trimmed(input_ids=new_in, decoder_input_ids=torch.tensor([[old_to_new[start]] + new_ids[:-1]]))
            else:
                old_out, new_out = original(input_ids=old_in), trimmed(input_ids=new_in)
        if arch.encoder_only:
            torch.testing.assert_close(new_out.last_hidden_state, old_out.last_hidden_state, rtol=0, atol=1e-6)
            continue
        old_logits = old_out.logits[..., kept_index]
        assert new_out.logits.shape[-1] == len(old_ids)
        torch.testing.assert_close(new_out.logits, old_logits, rtol=1e-6, atol=1e-5)
        # the argmax over the kept columns of the original is a new id already
        assert torch.equal(new_out.logits.argmax(-1), old_logits.argmax(-1))


def test_trimmed_tokenizer_matches_in_transformers(tmp_path):
    """The mapped ids of the original tokenizer are what the trimmed tokenizer itself produces."""
    arch = ARCHS[0]
    src, _ = build(arch, tmp_path / "src")
    keep = write_keep(tmp_path / "ids.txt", keep_ids(TOKENIZERS / arch.tokenizer))
    run_cli(["trim", src, "--keep", keep, "-o", tmp_path / "out", "-q"])
    old_ids = json.loads((tmp_path / "out" / "surgery_trim.json").read_text())["old_ids"]
    old_to_new = {old: new for new, old in enumerate(old_ids)}
    original_tok = transformers.AutoTokenizer.from_pretrained(src)
    trimmed_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
    lines = [line for line in corpus_lines("heldout.txt") if all(t in old_to_new for t in original_tok(line).input_ids)]
    assert lines
    for line in lines:
        assert trimmed_tok(line).input_ids == [old_to_new[t] for t in original_tok(line).input_ids]


def test_padding_rows_are_never_the_argmax(tmp_path):
    """--pad-to-multiple-of: padding rows copy a kept token's row, so they tie with it and lose every argmax."""
    arch = next(a for a in ARCHS if a.name == "llama")
    src, _ = build(arch, tmp_path / "src")
    keep = write_keep(tmp_path / "ids.txt", keep_ids(TOKENIZERS / arch.tokenizer))
    out = tmp_path / "out"
    run_cli(["trim", src, "--keep", keep, "-o", out, "--pad-to-multiple-of", "128", "-q"])
    record = json.loads((out / "surgery_trim.json").read_text())
    n_kept, n_rows = len(record["old_ids"]), record["new_vocab_rows"]
    assert n_rows % 128 == 0 and n_rows > n_kept
    model = transformers.LlamaForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    source = record["old_ids"].index(record["padding_row_source_id"])
    torch.manual_seed(0)
    with torch.no_grad():
        logits = model(input_ids=torch.randint(0, n_kept, (4, 32))).logits
    assert logits.shape[-1] == n_rows
    assert int(logits.argmax(-1).max()) < n_kept
    torch.testing.assert_close(logits[..., n_kept:], logits[..., source : source + 1].expand(-1, -1, n_rows - n_kept))


def test_tokens_without_rows_stay_tokens_without_rows(tmp_path):
    """Gemma-3 270M/1B: tokenizer.json has one id more than the embedding (<image_soft_token>). It stays a
    token without a row, after the kept rows; the model and the text around it behave as before."""
    arch = Arch("gemma3-text", "Gemma3TextConfig", "Gemma3ForCausalLM", "sp-bpe-llama",
                TINY | dict(head_dim=8, sliding_window=16))
    src, n_rows = build(arch, tmp_path / "src")
    tok = tokenizers.Tokenizer.from_file(str(src / "tokenizer.json"))
    tok.add_special_tokens([tokenizers.AddedToken("<image_soft_token>", special=True, normalized=False)])
    tok.save(str(src / "tokenizer.json"))
    config = json.loads((src / "tokenizer_config.json").read_text())
    config["added_tokens_decoder"] = {str(n_rows): {"content": "<image_soft_token>", "special": True, "lstrip": False,
                                                   "rstrip": False, "normalized": False, "single_word": False}}
    (src / "tokenizer_config.json").write_text(json.dumps(config))
    keep = write_keep(tmp_path / "ids.txt", keep_ids(TOKENIZERS / arch.tokenizer) + [n_rows])  # its id is accepted
    out = tmp_path / "out"
    run_cli(["trim", src, "--keep", keep, "-o", out, "-q"])
    record = json.loads((out / "surgery_trim.json").read_text())
    n_kept = len(record["old_ids"])
    assert record["tokens_without_rows"] == {"old_ids": [n_rows], "new_ids": [n_kept]}
    assert n_rows not in record["old_ids"] and record["new_vocab_rows"] == n_kept
    trimmed = transformers.Gemma3ForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert trimmed.config.vocab_size == n_kept == trimmed.get_input_embeddings().weight.shape[0]

    original_tok = transformers.AutoTokenizer.from_pretrained(src)
    trimmed_tok = transformers.AutoTokenizer.from_pretrained(out)
    assert len(trimmed_tok) == n_kept + 1 and len(original_tok) == n_rows + 1  # longer than the rows by one, as before
    assert trimmed_tok.convert_ids_to_tokens(n_kept) == "<image_soft_token>"
    old_to_new = {old: new for new, old in enumerate(record["old_ids"] + [n_rows])}
    texts = kept_texts(original_tok, old_to_new)
    assert len(texts) >= 3
    original = transformers.Gemma3ForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    with_token = [original_tok(f"{text} <image_soft_token> {text}").input_ids for text, _ in texts]
    assert all(n_rows in ids for ids in with_token)
    compared = [ids for ids in with_token if all(i in old_to_new for i in ids)]
    assert compared
    for (text, _), old_ids in zip(texts, with_token):
        if old_ids in compared:
            assert trimmed_tok(f"{text} <image_soft_token> {text}").input_ids == [old_to_new[i] for i in old_ids]
    for text, ids in texts:
        new_ids = [old_to_new[i] for i in ids]
        with torch.no_grad():
            old_logits = original(input_ids=torch.tensor([ids])).logits[..., record["old_ids"]]
            new_logits = trimmed(input_ids=torch.tensor([new_ids])).logits
        torch.testing.assert_close(new_logits, old_logits, rtol=1e-6, atol=1e-5)


def test_multi_token_prediction_layer_is_trimmed_with_the_model(tmp_path):
    """DeepSeek-V3 / GLM-4.5 store an MTP layer at index num_hidden_layers with its own embedding and head;
    vLLM and SGLang read it for speculative decoding, so it must lose the same rows as the main ones."""
    from safetensors.numpy import load_file, save_file

    arch = Arch("deepseek-v3", "DeepseekV3Config", "DeepseekV3ForCausalLM", "sp-bpe-llama",
                dict(hidden_size=16, intermediate_size=32, moe_intermediate_size=8, num_hidden_layers=2,
                     num_attention_heads=2, num_key_value_heads=2, n_routed_experts=4, n_shared_experts=1,
                     num_experts_per_tok=2, first_k_dense_replace=1, kv_lora_rank=8, q_lora_rank=8,
                     qk_rope_head_dim=4, qk_nope_head_dim=4, v_head_dim=8, n_group=1, topk_group=1,
                     max_position_embeddings=128, tie_word_embeddings=False))
    src, n_tokens = build(arch, tmp_path / "src")
    tensors = load_file(src / "model.safetensors")
    rng = np.random.default_rng(1)
    mtp = {"model.layers.2.embed_tokens.weight": (n_tokens, 16), "model.layers.2.shared_head.head.weight": (n_tokens, 16),
           "model.layers.2.shared_head.norm.weight": (16,), "model.layers.2.eh_proj.weight": (16, 32),
           "model.layers.2.enorm.weight": (16,), "model.layers.2.hnorm.weight": (16,)}
    tensors |= {name: rng.standard_normal(shape).astype(np.float32) for name, shape in mtp.items()}
    save_file(tensors, src / "model.safetensors", metadata={"format": "pt"})
    keep = write_keep(tmp_path / "ids.txt", keep_ids(TOKENIZERS / arch.tokenizer))
    out = tmp_path / "out"
    run_cli(["trim", src, "--keep", keep, "-o", out, "-q"])
    old_ids = json.loads((out / "surgery_trim.json").read_text())["old_ids"]
    trimmed_tensors = load_file(out / "model.safetensors")
    for name in ("model.layers.2.embed_tokens.weight", "model.layers.2.shared_head.head.weight"):
        assert np.array_equal(trimmed_tensors[name], tensors[name][old_ids]), name
    assert all(n_tokens not in t.shape for t in trimmed_tensors.values())
    original = transformers.DeepseekV3ForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    trimmed = transformers.DeepseekV3ForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    old_to_new = {old: new for new, old in enumerate(old_ids)}
    texts = kept_texts(transformers.AutoTokenizer.from_pretrained(src), old_to_new)
    assert len(texts) >= 3
    for _, ids in texts:
        with torch.no_grad():
            expected = original(input_ids=torch.tensor([ids])).logits[..., old_ids]
            got = trimmed(input_ids=torch.tensor([[old_to_new[i] for i in ids]])).logits
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-5)


def test_hidden_size_equal_to_vocab_size_is_refused_then_trimmed_when_declared(tmp_path):
    """No guessing: every projection of this model has an axis of the vocabulary's length."""
    n_tokens = tokenizers.Tokenizer.from_file(str(TOKENIZERS / "sp-bpe-llama" / "tokenizer.json")).get_vocab_size(True)
    arch = Arch("llama-wide", "LlamaConfig", "LlamaForCausalLM", "sp-bpe-llama",
                TINY | dict(hidden_size=n_tokens, num_attention_heads=n_tokens // 8, head_dim=8, num_key_value_heads=1,
                            tie_word_embeddings=False))
    src, _ = build(arch, tmp_path / "src")
    keep = write_keep(tmp_path / "ids.txt", keep_ids(TOKENIZERS / arch.tokenizer))
    out = tmp_path / "out"
    for command in (["trim", src, "--keep", keep, "-o", out], ["inspect", src]):
        result = run_cli(command, 1)
        assert result.stderr.startswith(f"Error: 10 tensor(s) outside the vocabulary tensors have an axis of the "
                                        f"vocabulary's length {n_tokens}: 'model.layers.0.input_layernorm.weight'")
        assert "--not-vocab-tensor 'model.layers.*' --not-vocab-tensor 'model.norm.weight'" in result.stderr
    assert not out.exists()
    run_cli(["trim", src, "--keep", keep, "-o", out, "-q", "--not-vocab-tensor", "model.layers.*",
             "--not-vocab-tensor", "model.norm.weight"])
    old_ids = json.loads((out / "surgery_trim.json").read_text())["old_ids"]
    original = transformers.LlamaForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    trimmed = transformers.LlamaForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert trimmed.model.layers[0].self_attn.q_proj.weight.shape == (n_tokens, n_tokens)  # untouched
    ids = [i for i in old_ids[:12]]
    with torch.no_grad():
        expected = original(input_ids=torch.tensor([ids])).logits[..., old_ids]
        got = trimmed(input_ids=torch.tensor([list(range(12))])).logits
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-5)
