"""Memory does not grow with the checkpoint: two synthetic checkpoints with the real Qwen vocabulary, one three
times the other, trim in a subprocess with nearly the same peak RSS, far below either size."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from synthetic import SHAPES, write_checkpoint  # noqa: E402

SMALL = SHAPES["tiny"]  # 151,936 x 1,024 bf16 embedding, ~330 MB
LARGE = replace(SMALL, hidden=3072, intermediate=3072)  # ~1 GB


def peak_rss(src: Path, keep: Path, out: Path) -> int:
    rss_file = out.parent / f"{out.name}.rss"
    subprocess.run(["/usr/bin/time", "-f", "%M", "-o", str(rss_file), sys.executable, "-m", "surgery", "trim",
                    str(src), "--keep", str(keep), "-o", str(out), "-q"], check=True)
    return int(rss_file.read_text().split()[-1]) * 1024


@pytest.mark.skipif(not Path("/usr/bin/time").exists(), reason="needs GNU time")
def test_peak_rss_is_flat_in_checkpoint_size(tmp_path, monkeypatch):
    import synthetic

    keep = tmp_path / "ids.txt"
    keep.write_text("\n".join(str(i) for i in range(30_000)))
    results = {}
    for name, shape in (("small", SMALL), ("large", LARGE)):
        monkeypatch.setitem(synthetic.SHAPES, name, shape)
        src = write_checkpoint(name, tmp_path / name)
        nbytes = sum(p.stat().st_size for p in src.glob("*.safetensors"))
        results[name] = (nbytes, peak_rss(src, keep, tmp_path / f"{name}-out"))
    (small_size, small_rss), (large_size, large_rss) = results["small"], results["large"]
    assert large_size > 2.5 * small_size
    assert large_rss < small_rss + 24 * 2**20, results  # tripling the weights adds (almost) nothing
    assert large_rss < large_size / 4 and large_rss < 512 * 2**20, results


@pytest.mark.skipif(not Path("/usr/bin/time").exists(), reason="needs GNU time")
def test_gguf_peak_rss_is_flat_in_file_size(tmp_path, monkeypatch):
    """The same for GGUF files: the real Qwen vocabulary and merges in the metadata, BF16 tensors."""
    import synthetic
    from synthetic_gguf import write_gguf

    keep = tmp_path / "ids.txt"
    keep.write_text("\n".join(str(i) for i in range(30_000)))
    results = {}
    for name, shape in (("small", SMALL), ("large", LARGE)):
        monkeypatch.setitem(synthetic.SHAPES, name, shape)
        src = write_gguf(name, "bf16", tmp_path / f"{name}.gguf")
        results[name] = (src.stat().st_size, peak_rss(src, keep, tmp_path / f"{name}-out.gguf"))
    (small_size, small_rss), (large_size, large_rss) = results["small"], results["large"]
    assert large_size > 2.5 * small_size
    assert large_rss < small_rss + 24 * 2**20, results
    assert large_rss < large_size / 4 and large_rss < 512 * 2**20, results
