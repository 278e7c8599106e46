"""The project's own default chat data (made by scripts/make_default_data.py) is shipped and well formed."""

from __future__ import annotations

import sys
from pathlib import Path

from chatsae.activations.pipeline import DataConfig, default_data_path
from chatsae.data import read_records

ROOT = Path(__file__).resolve().parents[1]


def test_default_data_is_the_generated_prompt_set():
    records = list(read_records(default_data_path()))
    assert len(records) == 1000
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from make_default_data import prompts
    finally:
        sys.path.pop(0)
    expected = prompts()
    for r in records:
        assert [m["role"] for m in r.messages] == ["user", "assistant"]
        assert r.messages[0]["content"] == expected[r.index]
        assert r.messages[1]["content"].strip()
    assert DataConfig().data_path == str(default_data_path())
