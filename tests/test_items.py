"""Item loaders: formats, text building, per-line errors, skip mode, Amazon metadata, MovieLens."""

from __future__ import annotations

import gzip
import importlib.util
import json
import sys

import pytest

from tagsmith.core import records as items_mod
from tagsmith.core.errors import ConfigError, InputError
from tagsmith.core.datasets import load_any, movielens
from tagsmith.core.records import Item, LoadReport, load_amazon, load_items


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return str(path)


ROWS = [{"id": 1, "title": "Toy Story", "year": 1995, "tags": ["kids", "pixar"]},
        {"id": "2", "title": "Heat", "year": 1995, "tags": []}]


# ---------------------------------------------------------------- formats and text

@pytest.mark.parametrize("name", ["c.jsonl", "c.json"])
def test_jsonl_default_text_is_key_value_lines(tmp_path, name):
    items, report = load_items(write_jsonl(tmp_path / name, ROWS))
    assert [i.id for i in items] == ["1", "2"]
    assert items[0].text == "title: Toy Story\nyear: 1995\ntags: kids, pixar"
    assert items[1].text == "title: Heat\nyear: 1995"  # empty list left out
    assert items[0].fields == {"title": "Toy Story", "year": 1995, "tags": ["kids", "pixar"]}
    assert report == LoadReport(path=str(tmp_path / name), loaded=2, skipped=0, errors=[])


def test_template_and_text_field(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", ROWS)
    items, _ = load_items(path, template="{title} ({year}): {tags}")
    assert [i.text for i in items] == ["Toy Story (1995): kids, pixar", "Heat (1995):"]
    items, _ = load_items(path, text_field="title")
    assert [i.text for i in items] == ["Toy Story", "Heat"]


def test_text_is_whitespace_normalised(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [{"id": "a", "d": "  two\t words \n\n here  "}])
    assert load_items(path, text_field="d")[0][0].text == "two words\nhere"
    assert load_items(path)[0][0].text == "d: two words here"


def test_custom_id_field_and_limit(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [{"sku": f"s{i}", "t": "x"} for i in range(5)])
    items, report = load_items(path, id_field="sku", limit=3)
    assert [i.id for i in items] == ["s0", "s1", "s2"] and report.loaded == 3
    assert items[0].fields == {"t": "x"}


def test_csv_with_quoted_newline_keeps_line_numbers(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text('id,title,desc\n1,Up,"an old man\nand a house"\n2,Heat,\n2,Dup,x\n', encoding="utf-8")
    items, report = load_items(str(path), on_error="skip")
    assert [i.id for i in items] == ["1", "2"]
    assert items[0].text == "title: Up\ndesc: an old man and a house"
    assert items[1].text == "title: Heat"  # empty CSV cell left out
    assert report.errors == [f"{path}:5: duplicate id '2' (first seen at line 4)"]


def test_tsv_and_fmt_override(tmp_path):
    (tmp_path / "c.tsv").write_text("id\ttitle\n1\tUp, again\n", encoding="utf-8")
    assert load_items(str(tmp_path / "c.tsv"))[0][0].text == "title: Up, again"
    (tmp_path / "c.txt").write_text('{"id": 1, "t": "x"}\n')
    assert load_items(str(tmp_path / "c.txt"), fmt="jsonl")[0][0].id == "1"
    with pytest.raises(ConfigError, match="fmt="):
        load_items(str(tmp_path / "c.txt"))
    with pytest.raises(ConfigError, match="unknown format"):
        load_items(str(tmp_path / "c.txt"), fmt="xml")


def test_parquet_loads_and_reports_row_index(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path = str(tmp_path / "c.parquet")
    pq.write_table(pa.table({"id": [1, 2, 2], "title": ["Up", "Heat", "Again"]}), path)
    items, report = load_items(path, text_field="title", on_error="skip")
    assert [(i.id, i.text) for i in items] == [("1", "Up"), ("2", "Heat")]
    assert report.errors == [f"{path}:row 2: duplicate id '2' (first seen at row 1)"]


def test_parquet_without_pyarrow_is_a_config_error(tmp_path, monkeypatch):
    (tmp_path / "c.parquet").write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # makes `import pyarrow...` raise ImportError
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(ConfigError, match="pip install pyarrow"):
        load_items(str(tmp_path / "c.parquet"))


def test_gzip_jsonl_and_csv(tmp_path):
    with gzip.open(tmp_path / "c.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write(json.dumps(ROWS[0]) + "\n")
    assert load_items(str(tmp_path / "c.jsonl.gz"))[0][0].id == "1"
    with gzip.open(tmp_path / "c.csv.gz", "wt", encoding="utf-8") as f:
        f.write("id,title\n9,Up\n")
    assert load_items(str(tmp_path / "c.csv.gz"))[0][0].text == "title: Up"


def test_blank_lines_are_ignored_and_do_not_shift_numbers(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", ['{"id": 1, "t": "a"}', "", "   ", "{bad"])
    with pytest.raises(InputError, match=r"c\.jsonl:4: malformed JSON"):
        load_items(path)


# ---------------------------------------------------------------- errors

BAD_JSONL = [
    ('{"id": 1, "t": "a"', "malformed JSON"),
    ('[1, 2]', "expected a JSON object per line, got list"),
    ('{"t": "a"}', "missing id field 'id'"),
    ('{"id": 1, "t": "again"}', "duplicate id '1' (first seen at line 1)"),
    ('{"id": 3, "t": "   "}', "empty text"),
]


@pytest.mark.parametrize("line,reason", BAD_JSONL)
def test_each_jsonl_error_names_file_and_line(tmp_path, line, reason):
    path = write_jsonl(tmp_path / "in.jsonl", ['{"id": 1, "t": "a"}', '{"id": 2, "t": "b"}', line])
    with pytest.raises(InputError) as e:
        load_items(path, text_field="t")
    assert str(e.value).startswith(f"{path}:3: ") and reason in str(e.value)
    assert "\n" not in str(e.value)


def test_invalid_utf8_reports_exact_line(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"id": 1, "t": "a"}\n{"id": 2, "t": "caf\xe9"}\n{"id": 3, "t": "c"}\n')
    with pytest.raises(InputError, match=r"in\.jsonl:2: invalid UTF-8 at byte offset 19"):
        load_items(str(path))
    items, report = load_items(str(path), on_error="skip")
    assert [i.id for i in items] == ["1", "3"] and report.skipped == 1


def test_invalid_utf8_in_csv_reports_exact_line(tmp_path):
    path = tmp_path / "in.csv"
    path.write_bytes(b"id,t\n1,a\n2,\xff\n")
    with pytest.raises(InputError, match=r"in\.csv:3: invalid UTF-8"):
        load_items(str(path))


def test_csv_wrong_field_count(tmp_path):
    (tmp_path / "in.csv").write_text("id,t\n1,a\n2,b,c\n")
    with pytest.raises(InputError, match=r"in\.csv:3: expected 2 fields, got 3"):
        load_items(str(tmp_path / "in.csv"))


def test_huge_line_is_rejected_and_reading_goes_on(tmp_path):
    path = tmp_path / "in.jsonl"
    huge = json.dumps({"id": 2, "t": "x" * (items_mod.MAX_LINE_BYTES + 10)})
    write_jsonl(path, ['{"id": 1, "t": "a"}', huge, '{"id": 3, "t": "c"}'])
    with pytest.raises(InputError, match=r"in\.jsonl:2: line longer than 1048576 bytes"):
        load_items(str(path))
    items, report = load_items(str(path), on_error="skip")
    assert [i.id for i in items] == ["1", "3"] and report.skipped == 1


def test_template_missing_field_names_field_and_line(tmp_path):
    path = write_jsonl(tmp_path / "in.jsonl", [{"id": 1, "title": "Up", "year": 2009}, {"id": 2, "title": "Heat"}])
    with pytest.raises(InputError, match=r"in\.jsonl:2: missing field 'year' \(needed by the template\)"):
        load_items(path, template="{title} ({year})")
    with pytest.raises(ConfigError):
        load_items(path, template="{title")
    with pytest.raises(ConfigError, match="named"):
        load_items(path, template="{} {0}")


def test_skip_mode_counts_and_keeps_good_rows(tmp_path):
    rows = ['{"id": 1, "t": "a"}', "{oops", '{"t": "no id"}', '{"id": 1, "t": "dup"}', '{"id": 4, "t": "d"}']
    path = write_jsonl(tmp_path / "in.jsonl", rows)
    items, report = load_items(path, on_error="skip")
    assert [i.id for i in items] == ["1", "4"]
    assert (report.loaded, report.skipped) == (2, 3)
    assert [e.split(": ", 1)[0] for e in report.errors] == [f"{path}:2", f"{path}:3", f"{path}:4"]


def test_skip_mode_keeps_only_first_50_errors(tmp_path):
    path = write_jsonl(tmp_path / "in.jsonl", ['{"id": 0, "t": "ok"}'] + ["{bad"] * 60)
    items, report = load_items(path, on_error="skip")
    assert len(items) == 1 and report.skipped == 60 and len(report.errors) == 50
    assert report.errors[-1].startswith(f"{path}:51: ")


def test_empty_and_missing_files(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n  \n")
    with pytest.raises(InputError, match=r"empty\.jsonl: empty file"):
        load_items(str(tmp_path / "empty.jsonl"), on_error="skip")
    (tmp_path / "header.csv").write_text("id,title\n")
    with pytest.raises(InputError, match=r"header\.csv: empty file"):
        load_items(str(tmp_path / "header.csv"))
    with pytest.raises(InputError, match=r"nope\.jsonl: file not found"):
        load_items(str(tmp_path / "nope.jsonl"))
    with pytest.raises(ConfigError, match="on_error"):
        load_items(str(tmp_path / "header.csv"), on_error="ignore")


# ---------------------------------------------------------------- Amazon metadata

AMAZON_2014 = ("{'asin': '0000031852', 'title': 'Girls Ballet Tutu Zebra Hot Pink', 'price': 3.17, "
               "'brand': 'Coxlures', 'salesRank': {'Sports &amp; Outdoors': 8547}, "
               "'related': {'also_bought': ['B00JHONN1S']}, "
               "'categories': [['Sports & Outdoors', 'Other Sports', 'Dance'], ['Sports & Outdoors', 'Dance']], "
               "'description': '<b>Great</b> for dress-up &amp; recitals. " + "Soft tulle. " * 100 + "'}")
AMAZON_2023 = {"parent_asin": "B01CUPMQZE", "title": "Howard LC0008 Leather Conditioner", "main_category": "All Beauty",
               "store": "Howard Products", "average_rating": 4.8, "categories": [],
               "features": ["Restores dry leather", "Food-grade ingredients"],
               "description": ["Howard Leather Conditioner is", "a premium conditioner."],
               "details": {"Package Dimensions": "7.1 x 5.5 x 3 inches", "UPC": "617390882781", "Item Weight": "12 ounces"}}


def test_amazon_2014_python_literal_line(tmp_path):
    path = tmp_path / "meta.json"
    path.write_text(AMAZON_2014 + "\n", encoding="utf-8")
    [item], report = load_amazon(str(path))
    assert item.id == "0000031852" and report.loaded == 1
    lines = item.text.split("\n")
    assert lines[:3] == ["Title: Girls Ballet Tutu Zebra Hot Pink", "Brand: Coxlures",
                         "Categories: Sports & Outdoors, Other Sports, Dance"]
    assert lines[3].startswith("Description: Great for dress-up & recitals. Soft tulle.")
    assert len(lines[3]) < 700 and lines[3].endswith("…")
    assert item.fields["price"] == 3.17 and "asin" not in item.fields


def test_amazon_2023_gzip_and_errors(tmp_path):
    path = tmp_path / "meta.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write(json.dumps(AMAZON_2023) + "\n__import__('os').system('true')\n")
    items, report = load_amazon(str(path), on_error="skip")
    assert [i.id for i in items] == ["B01CUPMQZE"]
    assert items[0].text == ("Title: Howard LC0008 Leather Conditioner\nStore: Howard Products\n"
                             "Main category: All Beauty\nFeatures: Restores dry leather; Food-grade ingredients\n"
                             "Description: Howard Leather Conditioner is a premium conditioner.\n"
                             "Details: Package Dimensions: 7.1 x 5.5 x 3 inches; Item Weight: 12 ounces")
    assert report.skipped == 1 and report.errors[0].startswith(f"{path}:2: neither JSON nor a Python literal")


# ---------------------------------------------------------------- MovieLens and load_any

needs_recbole = pytest.mark.skipif(importlib.util.find_spec("recbole") is None, reason="recbole not installed")


@needs_recbole
def test_movielens_gives_all_1682_movies():
    items = movielens()
    assert [i.id for i in items] == [str(n) for n in range(1, 1683)]
    assert isinstance(items[0], Item) and items[0].text.startswith("Toy Story (1995)")
    assert items[0].fields["genres"] == ["Animation", "Children's", "Comedy"]


@needs_recbole
def test_load_any(tmp_path):
    items, report = load_any("movielens:5")
    assert [i.id for i in items] == ["1", "2", "3", "4", "5"] and report.loaded == 5
    with pytest.raises(ConfigError):
        load_any("movielens:five")
    path = write_jsonl(tmp_path / "c.jsonl", ROWS)
    items, report = load_any(path, text_field="title")
    assert [i.text for i in items] == ["Toy Story", "Heat"] and report.path == path
