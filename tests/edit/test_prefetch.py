"""edit/prefetch: while a trim plans, a thread reads the source's tensor files (every byte, regular files only)
and stops when the plan is done; the API prefetches only a plan that will be written."""

from __future__ import annotations

import os
import threading

from conftest import KEEP, small_gguf

import surgery
from surgery.edit import prefetch
from surgery.edit.prefetch import prefetched, tensor_files


def counting_reads(monkeypatch, after_each=None):
    reads = []
    real = os.preadv

    def preadv(fd, buffers, offset):
        nbytes = real(fd, buffers, offset)
        reads.append((os.readlink(f"/proc/self/fd/{fd}"), offset, nbytes))
        if after_each:
            after_each()
        return nbytes

    monkeypatch.setattr(prefetch.os, "preadv", preadv)
    return reads


def test_every_byte_of_every_file_is_read(tmp_path, monkeypatch):
    monkeypatch.setattr(prefetch, "READ_NBYTES", 1000)
    files = [tmp_path / "a.safetensors", tmp_path / "b.safetensors"]
    files[0].write_bytes(os.urandom(4500))
    files[1].write_bytes(os.urandom(10))
    reads = counting_reads(monkeypatch)
    prefetch._read(files, threading.Event())
    for path in files:
        mine = [(offset, n) for name, offset, n in reads if name == str(path)]
        assert [offset for offset, _ in mine] == [sum(n for _, n in mine[:i]) for i in range(len(mine))]
        assert sum(n for _, n in mine) == path.stat().st_size and mine[-1][1] == 0  # read to the end


def test_it_stops_when_the_plan_is_done(tmp_path, monkeypatch):
    monkeypatch.setattr(prefetch, "READ_NBYTES", 100)
    big = tmp_path / "a.safetensors"
    big.write_bytes(os.urandom(100_000))
    stop = threading.Event()
    reads = counting_reads(monkeypatch, after_each=stop.set)
    prefetch._read([big, big], stop)
    assert len(reads) == 1  # the read in flight finishes, no other starts


def test_a_pipe_is_skipped_and_does_not_block(tmp_path, monkeypatch):
    pipe = tmp_path / "model.safetensors"
    os.mkfifo(pipe)
    other = tmp_path / "z.safetensors"
    other.write_bytes(b"x" * 10)
    reads = counting_reads(monkeypatch)
    reader = threading.Thread(target=prefetch._read, args=([pipe, tmp_path / "missing", other], threading.Event()))
    reader.start()
    reader.join(timeout=10)
    assert not reader.is_alive()
    assert [(name, n) for name, _, n in reads if n] == [(str(other), 10)]


def test_tensor_files_of_each_container(tmp_path):
    (tmp_path / "ckpt").mkdir()
    for name in ("model-00002-of-00002.safetensors", "model-00001-of-00002.safetensors", "config.json"):
        (tmp_path / "ckpt" / name).write_bytes(b"")
    assert [p.name for p in tensor_files(tmp_path / "ckpt")] == ["model-00001-of-00002.safetensors",
                                                                "model-00002-of-00002.safetensors"]
    assert tensor_files(tmp_path / "m.gguf") == [tmp_path / "m.gguf"]
    assert [p.name for p in tensor_files(tmp_path / "m-00001-of-00003.gguf")] == [
        "m-00001-of-00003.gguf", "m-00002-of-00003.gguf", "m-00003-of-00003.gguf"]
    assert tensor_files(tmp_path / "m-00002-of-00003.gguf") == [tmp_path / "m-00002-of-00003.gguf"]  # refused later


def test_a_trim_prefetches_its_source_only_when_it_writes(copy_fixture, tmp_path, monkeypatch):
    import surgery.api as api

    asked = []
    real = api.prefetched

    def recording(paths):
        asked.append([p.name for p in paths])
        return real(paths)

    monkeypatch.setattr(api, "prefetched", recording)
    src = copy_fixture("qwen-tied-sharded")
    surgery.trim(src, KEEP / "basic.txt", tmp_path / "out")
    api.prepare_trim(src, KEEP / "basic.txt", tmp_path / "dry", check_output=False)  # a dry run writes nothing
    gguf = small_gguf(tmp_path / "m.gguf")
    surgery.trim(gguf, range(100, 258), tmp_path / "t.gguf")
    assert asked == [sorted(p.name for p in src.glob("*.safetensors")), [], ["m.gguf"]]


def test_prefetched_joins_its_thread(tmp_path):
    before = threading.active_count()
    (tmp_path / "a.safetensors").write_bytes(b"x" * 100)
    with prefetched([tmp_path / "a.safetensors"]):
        pass
    assert threading.active_count() == before
