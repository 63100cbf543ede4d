"""dumps_indented is json.dumps(ensure_ascii=False, indent=2), byte for byte."""

from __future__ import annotations

import json
import random
from collections import OrderedDict
from pathlib import Path

import pytest

from surgery.formats.pretty_json import dumps_indented

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"


def reference(data) -> str:
    return json.dumps(data, ensure_ascii=False, indent=2)


@pytest.mark.parametrize("path", sorted(FIXTURES.rglob("*.json")), ids=lambda p: str(p.relative_to(FIXTURES)))
def test_every_fixture_json_file(path):
    data = json.loads(path.read_text(encoding="utf-8"))
    assert dumps_indented(data) == reference(data)


def random_value(rng: random.Random, depth: int):
    scalars = [lambda: rng.choice(["", "a", "é\u2581", "\"q\"\\", "\n\t\x00", "日本", "\ud83d\ude00"]),
               lambda: rng.randint(-10**20, 10**20), lambda: rng.choice([0.0, -0.0, 1.5, 1e300, float("nan"),
                                                                         float("inf"), -float("inf")]),
               lambda: rng.choice([True, False, None])]
    if depth == 0 or rng.random() < 0.4:
        return rng.choice(scalars)()
    kind = rng.randrange(4)
    if kind == 0:
        return [random_value(rng, depth - 1) for _ in range(rng.randrange(4))]
    if kind == 1:
        return [[rng.choice(["a", "b c", "Ġx"]) for _ in range(rng.randrange(1, 3))] for _ in range(rng.randrange(3))]
    if kind == 2:
        return tuple(random_value(rng, depth - 1) for _ in range(rng.randrange(3)))
    keys = [rng.choice(["k", "é", "", 1, -2, 1.5, True, False, None]) for _ in range(rng.randrange(4))]
    return (OrderedDict if rng.random() < 0.2 else dict)((k, random_value(rng, depth - 1)) for k in keys)


def test_random_documents():
    rng = random.Random(0)
    for _ in range(3000):
        data = random_value(rng, 4)
        assert dumps_indented(data) == reference(data)


def test_what_json_refuses_is_refused():
    with pytest.raises(TypeError):
        dumps_indented({"a": object()})
    with pytest.raises(TypeError):
        dumps_indented({(1, 2): 3})
