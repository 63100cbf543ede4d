"""Shared test helpers: fixture copies, the CLI runner, and tiny checkpoints built around fixture tokenizers."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from surgery.cli import cli

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
TOKENIZERS = FIXTURES / "tokenizers"
CORPUS = FIXTURES / "corpus"
KEEP = FIXTURES / "keep"


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def copy_fixture(tmp_path):
    def copy(name: str) -> Path:
        target = tmp_path / name
        shutil.copytree(FIXTURES / name, target)
        return target

    return copy


def run_cli(args: list[str], exit_code: int = 0):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == exit_code, (result.exit_code, result.stderr, result.exception)
    return result


def corpus_lines(name: str) -> list[str]:
    return [line for line in (CORPUS / name).read_text(encoding="utf-8").splitlines() if line.strip()]


def write_keep(path: Path, ids) -> Path:
    path.write_text("\n".join(str(int(i)) for i in sorted(set(ids))) + "\n")
    return path


def tokenizer_checkpoint(kind: str | Path, root: Path, *, extra_rows: int = 0) -> Path:
    """A minimal checkpoint around a tokenizer (a fixture kind, or a folder): config.json and a random F32 embedding."""
    from surgery.formats.safetensors import ShardWriter, TensorSpec, write_all

    root.mkdir(parents=True)
    for path in (kind if isinstance(kind, Path) else TOKENIZERS / kind).iterdir():
        shutil.copy(path, root / path.name)
    from surgery.tokenizer import TokenizerFiles

    n_rows = TokenizerFiles.load(root).size() + extra_rows
    (root / "config.json").write_text(json.dumps({"vocab_size": n_rows, "model_type": "test"}))
    embed = np.random.default_rng(0).standard_normal((n_rows, 4)).astype(np.float32)
    writer = ShardWriter(root / "model.safetensors", {"format": "pt"})
    writer.add(TensorSpec("model.embed_tokens.weight", "F32", embed.shape))
    writer.write_header()
    writer.write_tensor("model.embed_tokens.weight", lambda fd: write_all(fd, embed.tobytes()))
    writer.close()
    return root


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def leftovers(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if ".partial-" in p.name or ".replaced-" in p.name]


def make_plan(root, keep=KEEP / "basic.txt", **options):
    """The vocabulary trim plan of a checkpoint folder, as trim makes it."""
    from surgery.formats.hf_folder import Checkpoint
    from surgery.model.vocab_tensors import find_vocab_tensors
    from surgery.tokenizer import TokenizerFiles
    from surgery.verbs.keep_list import KeepList
    from surgery.verbs.vocab import plan_trim

    ckpt = Checkpoint.open(root)
    vocab = find_vocab_tensors(ckpt)
    return plan_trim(ckpt, vocab, TokenizerFiles.load(root), KeepList.load(keep, vocab.n_rows), **options)
