"""Training blocks (distill/blocks.py): documents + EOS cut into blocks of L, a seeded order per pass, and process
slices that partition every global batch whatever the process count."""

from __future__ import annotations

import numpy as np
import pytest

from surgery.training.blocks import process_slice, step_blocks, token_blocks
from surgery.errors import InputError
from surgery.mining.corpus import CorpusSpec


def test_documents_end_with_eos_and_the_tail_is_dropped(tmp_path):
    (tmp_path / "a.txt").write_text("ab\n\n  \ncde\n")
    (tmp_path / "b.txt").write_text("f\n")
    specs = [CorpusSpec(str(tmp_path / "a.txt")), CorpusSpec(str(tmp_path / "b.txt"))]
    stream = [97, 98, 0, 99, 100, 101, 0, 102, 0]  # blank lines are not documents; EOS (0) after each
    assert token_blocks(specs, lambda doc: [ord(c) for c in doc], 0, 3).tolist() == [stream[0:3], stream[3:6],
                                                                                       stream[6:9]]
    assert token_blocks(specs, lambda doc: [ord(c) for c in doc], 0, 4).tolist() == [stream[0:4], stream[4:8]]
    with pytest.raises(InputError, match="fewer than one block"):
        token_blocks([CorpusSpec(str(tmp_path / "b.txt"))], lambda doc: [1], 0, 5)
    (tmp_path / "empty.txt").write_text("\n \n")
    with pytest.raises(InputError, match="no documents"):
        token_blocks([CorpusSpec(str(tmp_path / "empty.txt"))], lambda doc: [1], 0, 2)


def test_every_pass_is_a_permutation_and_the_order_depends_on_the_seed_only():
    steps = [step_blocks(10, 7, s, 4) for s in range(5)]  # 20 positions: two passes over 10 blocks
    flat = np.concatenate(steps)
    assert sorted(flat[:10].tolist()) == list(range(10)) and sorted(flat[10:].tolist()) == list(range(10))
    assert np.array_equal(step_blocks(10, 7, 3, 4), steps[3]) and not np.array_equal(step_blocks(10, 8, 0, 4), steps[0])


@pytest.mark.parametrize("world,accum", [(1, 1), (2, 1), (1, 2), (2, 2), (4, 2)])
def test_process_slices_partition_the_global_batch(world, accum):
    indices = step_blocks(50, 0, 2, 16)
    parts = [process_slice(indices, g, accum, r, world) for g in range(accum) for r in range(world)]
    assert all(len(p) == 16 // (world * accum) for p in parts)
    assert np.array_equal(np.concatenate(parts), indices)
