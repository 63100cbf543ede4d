"""llama.cpp for the tests: its HF -> GGUF converter (vendored in the llama-cpp-python sdist) and its quantizer
and runtime (the llama-cpp-python bindings, built from that sdist by pip).

The sdist is fetched once with `pip download` (the registry is the only network here) into a cache folder and
extracted; nothing of llama.cpp is committed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

LLAMA_CPP_PYTHON = "0.3.36"  # the version in the test extra (pyproject.toml)
CACHE = Path(os.environ.get("SURGERY_TEST_CACHE", Path.home() / ".cache" / "surgery-tests"))

# Converter wrapper: with PRE set, name the BPE pre-tokenizer instead of hashing it (the fixture tokenizers are
# trained here, so llama.cpp's table of known hashes cannot know them; the runtime reads only the name).
CONVERT = r'''
import os, runpy, sys
vendor = sys.argv[1]
sys.path.insert(0, os.path.join(vendor, "gguf-py"))
sys.path.insert(0, vendor)
pre = os.environ.get("PRE")
if pre:
    import conversion.base as base
    for cls in list(vars(base).values()):
        if isinstance(cls, type) and "get_vocab_base_pre" in vars(cls):
            cls.get_vocab_base_pre = lambda self, tokenizer: pre
sys.argv = [os.path.join(vendor, "convert_hf_to_gguf.py"), *sys.argv[2:]]
runpy.run_path(sys.argv[0], run_name="__main__")
'''


def vendored_llama_cpp() -> Path:
    """The llama.cpp tree inside the llama-cpp-python sdist (downloaded and extracted once)."""
    root = CACHE / f"llama_cpp_python-{LLAMA_CPP_PYTHON}"
    vendor = root / "vendor" / "llama.cpp"
    if (vendor / "convert_hf_to_gguf.py").exists():
        return vendor
    CACHE.mkdir(parents=True, exist_ok=True)
    archive = CACHE / f"llama_cpp_python-{LLAMA_CPP_PYTHON}.tar.gz"
    if not archive.exists():
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-q",
                        f"llama-cpp-python=={LLAMA_CPP_PYTHON}", "-d", str(CACHE)], check=True)
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if "/vendor/llama.cpp/" in m.name and (
            "/gguf-py/" in m.name or "/conversion/" in m.name or m.name.endswith("/convert_hf_to_gguf.py"))]
        tar.extractall(CACHE, members=members, filter="data")
    return vendor


def convert(hf_dir: Path, out: Path, outtype: str = "f32", pre: str | None = None, *extra: str) -> Path:
    env = {**os.environ, **({"PRE": pre} if pre else {})}
    result = subprocess.run([sys.executable, "-c", CONVERT, str(vendored_llama_cpp()), str(hf_dir), "--outfile",
                             str(out), "--outtype", outtype, *extra], env=env, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"convert_hf_to_gguf failed:\n{result.stderr[-3000:]}")
    return out


def quantize(src: Path, out: Path, ftype: str, embedding_type: str | None = None, output_type: str | None = None
             ) -> Path:
    """llama.cpp's quantizer through the bindings; the token embedding and output types set explicitly."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{ftype}")
    params.nthread = 2
    if embedding_type:
        params.token_embedding_type = ggml_type(embedding_type)
    if output_type:
        params.output_tensor_type = ggml_type(output_type)
    if llama_cpp.llama_model_quantize(str(src).encode(), str(out).encode(), params) != 0:
        raise RuntimeError(f"llama_model_quantize failed for {ftype}")
    return out


def ggml_type(name: str) -> int:
    """A ggml type number, from the bindings or else from the vendored gguf-py (BF16 has no binding constant)."""
    import llama_cpp

    if hasattr(llama_cpp, f"GGML_TYPE_{name}"):
        return getattr(llama_cpp, f"GGML_TYPE_{name}")
    sys.path.insert(0, str(vendored_llama_cpp() / "gguf-py"))
    import gguf

    return int(gguf.GGMLQuantizationType[name])
