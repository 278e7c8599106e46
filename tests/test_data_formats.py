"""Reading records: each format on the real files of ../shared/data, malformed input, skip_bad, splits."""

from __future__ import annotations

import json
import sys
import types

import pytest
from conftest import shared_file

from chatsae.data import DataFormatError, Record, read_records, split_records


def write_json(path, obj):
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


# ---------------------------------------------------------------- real files


def test_alpaca_real_file():
    path = shared_file("alpaca_4000.json")
    raw = json.loads(path.read_text(encoding="utf-8"))
    reader = read_records(path)
    assert reader.format == "alpaca"
    records = list(reader)
    assert len(records) == len(raw) == 4000 and reader.n_read == 4000 and reader.n_skipped == 0
    for i in (0, 1, 2335, 3999):
        rec, src = records[i], raw[i]
        assert rec.index == i and rec.text is None
        prompt = src["instruction"] + ("\n\n" + src["input"] if src["input"].strip() else "")
        assert rec.messages == [{"role": "user", "content": prompt}, {"role": "assistant", "content": src["output"]}]
    with_input = next(i for i, r in enumerate(raw) if r["input"].strip())
    without = next(i for i, r in enumerate(raw) if not r["input"].strip())
    assert records[with_input].messages[0]["content"].endswith("\n\n" + raw[with_input]["input"])
    assert records[without].messages[0]["content"] == raw[without]["instruction"]


def test_gsm8k_real_file_qa():
    path = shared_file("gsm8k_train.jsonl")
    lines = path.read_text(encoding="utf-8").splitlines()
    reader = read_records(path)
    records = list(reader)
    assert reader.format == "qa" and len(records) == len(lines) == 7473
    for i in (0, 100, 7472):
        src = json.loads(lines[i])
        assert records[i].messages == [
            {"role": "user", "content": src["question"]},
            {"role": "assistant", "content": src["answer"]},
        ]


def test_sharegpt_real_file_multi_turn():
    path = shared_file("sharegpt_dummy_500.json")
    raw = json.loads(path.read_text(encoding="utf-8"))
    reader = read_records(path)
    records = list(reader)
    assert reader.format == "sharegpt" and len(records) == 500
    role = {"human": "user", "gpt": "assistant"}
    for rec, src in zip(records, raw, strict=True):
        assert [m["role"] for m in rec.messages] == [role[t["from"]] for t in src["conversations"]]
        assert [m["content"] for m in rec.messages] == [t["value"] for t in src["conversations"]]
    assert max(len(r.messages) for r in records) >= 4  # multi-turn conversations are kept whole


def test_brown_text_column():
    path = shared_file("brown_corpus.jsonl")
    first = json.loads(path.open(encoding="utf-8").readline())
    reader = read_records(path)
    records = list(reader)
    assert reader.format == "text" and len(records) == 500
    assert records[0] == Record(0, None, first["text"])
    assert all(r.messages is None and r.text for r in records)
    # text_field= picks another column (here the id), which also forces the text format
    ids = list(read_records(path, text_field="id", limit=3))
    assert [r.text for r in ids] == [json.loads(x)["id"] for x in path.read_text(encoding="utf-8").splitlines()[:3]]


def test_wikitext_txt_splits():
    path = shared_file("wikitext2_valid.txt")
    lines = path.read_text(encoding="utf-8").splitlines()
    docs = list(read_records(path))
    assert [d.text for d in docs] == [ln.strip() for ln in lines if ln.strip()]
    assert docs[0].text == "= Homarus gammarus ="
    paragraphs = list(read_records(path, text_split="blank_line"))
    # a paragraph is a maximal run of non-blank lines
    expected, cur = [], []
    for ln in lines:
        if ln.strip():
            cur.append(ln)
        elif cur:
            expected, cur = expected + ["\n".join(cur).strip()], []
    expected += ["\n".join(cur).strip()] if cur else []
    assert [p.text for p in paragraphs] == expected
    (whole,) = list(read_records(path, text_split="whole"))
    assert whole.text == path.read_text(encoding="utf-8").strip()


# ---------------------------------------------------------------- chat formats: multi-turn, system prompts, keys


def test_messages_formats_with_system(tmp_path):
    conv = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "bye"},
        {"role": "assistant", "content": ""},
    ]
    path = write_jsonl(tmp_path / "chat.jsonl", [{"messages": conv}, {"messages": conv[1:3]}])
    reader = read_records(path)
    assert [r.messages for r in reader] == [conv, conv[1:3]] and reader.format == "messages"
    path = write_json(tmp_path / "lmsys.json", [{"conversation": conv}])
    assert next(iter(read_records(path))).messages == conv
    share = [{"from": "system", "value": "S"}, {"from": "human", "value": "q"}, {"from": "chatgpt", "value": "a"}]
    share += [{"from": "user", "value": "q2"}, {"from": "bard", "value": "a2"}, {"from": "model", "value": "a3"}]
    path = write_json(tmp_path / "share.json", [{"conversations": share, "system": "top"}])
    (rec,) = list(read_records(path))
    assert [m["role"] for m in rec.messages] == ["system", "system", "user", "assistant", "user", "assistant"] + [
        "assistant"
    ]
    assert rec.messages[0]["content"] == "top" and rec.messages[1]["content"] == "S"
    path = write_json(tmp_path / "alp.json", [{"instruction": "I", "input": "", "output": "O", "system": "Sys"}])
    assert next(iter(read_records(path))).messages == [
        {"role": "system", "content": "Sys"},
        {"role": "user", "content": "I"},
        {"role": "assistant", "content": "O"},
    ]


@pytest.mark.parametrize("pair", [("question", "answer"), ("prompt", "response"), ("prompt", "completion")])
def test_qa_pairs(tmp_path, pair):
    q, a = pair
    path = write_jsonl(tmp_path / "qa.jsonl", [{q: "Q1", a: "A1"}, {q: "Q2", a: "A2", "extra": 1}])
    records = list(read_records(path))
    assert [r.messages for r in records] == [
        [{"role": "user", "content": f"Q{i}"}, {"role": "assistant", "content": f"A{i}"}] for i in (1, 2)
    ]


def test_json_variants(tmp_path):
    assert [r.text for r in read_records(write_json(tmp_path / "s.json", ["a", "b"]))] == ["a", "b"]
    wrapped = write_json(tmp_path / "w.json", {"data": [{"text": "x"}], "version": 1})
    assert [r.text for r in read_records(wrapped)] == ["x"]
    lines_in_json = write_jsonl(tmp_path / "l.json", [{"text": "x"}, {"text": "y"}])
    assert [r.text for r in read_records(lines_in_json)] == ["x", "y"]
    # empty texts are skipped (counted), never an error
    reader = read_records(write_jsonl(tmp_path / "e.jsonl", [{"text": "x"}, {"text": "  "}, {"text": "z"}]))
    assert [(r.index, r.text) for r in reader] == [(0, "x"), (2, "z")] and reader.n_skipped == 1


def test_streaming_jsonl_and_txt_stop_early(tmp_path):
    # the reader parses line by line: with a limit, a broken tail of the file is never read
    path = write_jsonl(tmp_path / "big.jsonl", [{"text": f"doc {i}"} for i in range(5)] + ["{broken"])
    assert [r.text for r in read_records(path, limit=3)] == ["doc 0", "doc 1", "doc 2"]
    it = iter(read_records(path))
    assert next(it).text == "doc 0"
    with pytest.raises(DataFormatError, match=r"big.jsonl: record 5 \(line 6\): invalid JSON"):
        list(it)


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"instruction": "i", "input": ""}, "field 'output' is missing"),
        ({"instruction": "i", "input": "", "output": 3}, "field 'output' must be a string, got int"),
        ({"instruction": ["i"], "output": "o"}, "field 'instruction' must be a string, got list"),
        ({"instruction": "i", "input": 5, "output": "o"}, "field 'input' must be a string, got int"),
    ],
)
def test_alpaca_bad_record_names_file_record_field(tmp_path, record, message):
    rows = [{"instruction": f"i{k}", "input": "", "output": "o"} for k in range(17)] + [record]
    path = write_json(tmp_path / "alpaca.json", rows)
    with pytest.raises(DataFormatError, match=rf"^alpaca\.json: record 17: {message}"):
        list(read_records(path))
    reader = read_records(path, skip_bad=True)
    assert len(list(reader)) == 17 and reader.n_skipped == 1 and reader.n_read == 18


@pytest.mark.parametrize(
    ("turns", "message"),
    [
        ([], "field 'messages' is an empty conversation"),
        ("hello", "field 'messages' must be a list of turns, got str"),
        (
            [{"role": "user", "content": "q"}, {"role": "robot", "content": "a"}],
            "field 'messages\\[1\\].role' has unknown",
        ),
        ([{"role": "user", "content": ["q"]}], "field 'messages\\[0\\].content' must be a string, got list"),
        ([{"role": "user"}], "field 'messages\\[0\\].content' is missing"),
        ([{"content": "q"}], "field 'messages\\[0\\].role' is missing"),
        (["q"], "field 'messages\\[0\\]' must be an object"),
    ],
)
def test_chat_bad_records(tmp_path, turns, message):
    good = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    path = write_jsonl(tmp_path / "chat.jsonl", [good, good, {"messages": turns}, good])
    with pytest.raises(DataFormatError, match=rf"^chat\.jsonl: record 2 \(line 3\): {message}"):
        list(read_records(path))
    reader = read_records(path, skip_bad=True)
    assert [r.index for r in reader] == [0, 1, 3] and reader.n_skipped == 1


def test_sharegpt_bad_role_and_skip_counts(tmp_path):
    conv = [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]
    bad = [{"from": "human", "value": "q"}, {"from": "wizard", "value": "a"}]
    rows = [{"conversations": conv}, {"conversations": bad}, {"conversations": conv}, {"conversations": None}]
    path = write_json(tmp_path / "sg.json", rows)
    with pytest.raises(DataFormatError, match=r"sg\.json: record 1: field 'conversations\[1\]\.from' has unknown role"):
        list(read_records(path))
    reader = read_records(path, skip_bad=True)
    assert [r.index for r in reader] == [0, 2] and (reader.n_read, reader.n_skipped) == (4, 2)


def test_forced_format_mismatch_and_non_object(tmp_path):
    path = write_jsonl(tmp_path / "qa.jsonl", [{"question": "q", "answer": "a"}])
    with pytest.raises(DataFormatError, match=r"qa\.jsonl: record 0 \(line 1\): field 'instruction' is missing"):
        list(read_records(path, fmt="alpaca"))
    path = write_json(tmp_path / "mixed.json", [{"question": "q", "answer": "a"}, 7])
    with pytest.raises(DataFormatError, match=r"mixed\.json: record 1: expected a JSON object, got int"):
        list(read_records(path))
    with pytest.raises(ValueError, match="unknown format 'csv'"):
        read_records(path, fmt="csv")


def test_file_level_errors(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataFormatError, match=r"empty\.jsonl: the file is empty"):
        read_records(tmp_path / "empty.jsonl")
    (tmp_path / "blank.txt").write_text("\n  \n\n")
    with pytest.raises(DataFormatError, match=r"blank\.txt: the file is empty"):
        read_records(tmp_path / "blank.txt")
    (tmp_path / "bad.json").write_text('[{"text": "a"},\n {"text": }]')
    with pytest.raises(DataFormatError, match=r"bad\.json: invalid JSON at line 2 column"):
        list(read_records(tmp_path / "bad.json"))
    (tmp_path / "latin.jsonl").write_bytes('{"text": "caf\u00e9"}\n'.encode("latin-1"))
    with pytest.raises(DataFormatError, match=r"latin\.jsonl: not UTF-8 text"):
        list(read_records(tmp_path / "latin.jsonl"))
    (tmp_path / "d.csv").write_text("a,b\n")
    with pytest.raises(DataFormatError, match=r"d\.csv: unsupported file type '\.csv'"):
        read_records(tmp_path / "d.csv")
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_records(tmp_path / "missing.jsonl")
    path = write_jsonl(tmp_path / "odd.jsonl", [{"foo": 1, "bar": 2}])
    with pytest.raises(DataFormatError, match=r"odd\.jsonl: record 0 \(line 1\): unknown format \(keys: foo, bar\)"):
        list(read_records(path))
    bad = [{"messages": []}, {"messages": "x"}]
    with pytest.raises(DataFormatError, match=r"all\.json: no valid records \(2 read, 2 skipped\)"):
        list(read_records(write_json(tmp_path / "all.json", bad), skip_bad=True))


# ---------------------------------------------------------------- optional backends


def test_parquet_without_pyarrow_is_a_clear_error(tmp_path, monkeypatch):
    (tmp_path / "d.parquet").write_bytes(b"PAR1 not really")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(ImportError, match="pip install pyarrow"):
        list(read_records(tmp_path / "d.parquet"))


def test_parquet_roundtrip(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    conv = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    pq.write_table(pa.Table.from_pylist([{"messages": conv}, {"messages": conv[:1]}]), tmp_path / "c.parquet")
    assert [r.messages for r in read_records(tmp_path / "c.parquet")] == [conv, conv[:1]]


def test_hf_dataset_name(monkeypatch):
    calls = []

    def load_dataset(name, config, split, streaming):
        calls.append((name, config, split, streaming))
        return iter([{"question": "q", "answer": "a"}, {"question": "q2", "answer": "a2"}])

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    reader = read_records("openai/gsm8k", split="test", config="main")
    assert [r.messages[1]["content"] for r in reader] == ["a", "a2"] and reader.format == "qa"
    assert calls[-1] == ("openai/gsm8k", "main", "test", True)
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(ImportError, match="pip install datasets"):
        list(read_records("openai/gsm8k"))


# ---------------------------------------------------------------- held-out split


def test_split_records_deterministic():
    records = [Record(i, None, f"t{i}") for i in range(100)]
    a = split_records(records, 10, seed=1)
    assert len(a.heldout) == 10 and len(a.train) == 90
    assert sorted(r.index for r in a.train + a.heldout) == list(range(100))
    assert [r.index for r in a.train] == sorted(r.index for r in a.train)  # order kept
    assert split_records(records, 10, seed=1) == a
    assert split_records(records, 10, seed=2).heldout != a.heldout
    assert len(split_records(iter(records), 0.25, seed=0).heldout) == 25
    with pytest.raises(ValueError, match="cannot hold out"):
        split_records(records, 101)
