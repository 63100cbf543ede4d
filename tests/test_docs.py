"""Every command and option is in the README, and every command has help with an example."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest

from surgery.cli import cli

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


@pytest.mark.parametrize("name", sorted(cli.commands))
def test_command_is_documented(name, runner):
    command = cli.commands[name]
    assert f"surgery {name}" in README
    for param in command.params:
        if isinstance(param, click.Option):
            assert any(opt in README for opt in param.opts), f"{name} {param.opts} missing from README"
    result = runner.invoke(cli, [name, "--help"])
    assert result.exit_code == 0 and "Example:" in result.stdout


def test_readme_opens_with_the_two_commands():
    first_block = README.split("```bash", 1)[1].split("```", 1)[0]
    assert "surgery trim fixtures/" in first_block and "pytest" in first_block


def python_blocks() -> list[str]:
    return [block.split("```", 1)[0] for block in README.split("```python\n")[1:]]


def test_every_documented_function_is_reachable():
    import surgery
    from surgery import api

    public = [name for name in vars(api) if not name.startswith("_") and callable(getattr(api, name))
              and getattr(getattr(api, name), "__module__", "") == "surgery.api"
              and not isinstance(getattr(api, name), type) and name != "is_gguf"]
    assert public and all(getattr(surgery, name) is getattr(api, name) for name in public)
    assert set(public) <= set(surgery.__all__)
    for block in python_blocks():
        for name in set(re.findall(r"surgery\.(\w+)\(", block)):
            assert callable(getattr(surgery, name)), name


def test_readme_python_blocks_run_as_written(tmp_path, monkeypatch):
    """Each ```python block runs in a folder holding what it names: a tiny Llama in ckpt/, its Q4_K_M GGUF made
    by llama.cpp, and text corpora."""
    import shutil

    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from conftest import CORPUS, TOKENIZERS
    from llama_cpp_tools import convert, quantize

    config = transformers.LlamaConfig(vocab_size=703, hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                      bos_token_id=0, eos_token_id=1)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(tmp_path / "ckpt")
    for path in (TOKENIZERS / "bpe-bytelevel-llama3").iterdir():
        shutil.copy(path, tmp_path / "ckpt" / path.name)
    f32 = convert(tmp_path / "ckpt", tmp_path / "model-f32.gguf", "f32", "llama-bpe")
    quantize(f32, tmp_path / "model-Q4_K_M.gguf", "Q4_K_M")
    shutil.copy(CORPUS / "train.txt", tmp_path / "fr.txt")
    shutil.copy(CORPUS / "heldout.txt", tmp_path / "calib.txt")
    monkeypatch.chdir(tmp_path)
    blocks = python_blocks()
    assert blocks
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})
    for made in ("ids.txt", "ckpt-small", "model-Q4_K_M-trimmed.gguf", "ckpt-3", "imp.json", "ckpt-w"):
        assert (tmp_path / made).exists(), made
