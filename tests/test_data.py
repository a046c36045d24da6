"""Tests for the data layer: users' CSV / TSV / JSON Lines files, and the UCI files."""

import csv
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keras_attn.data import URL, DataError, find_data_dir, load_sentences, read_labelled_file

AMAZON = "amazon_cells_labelled.txt"
IMDB = "imdb_labelled.txt"
YELP = "yelp_labelled.txt"
# Read before the autouse fixture below hides it from the other tests.
REAL_DATA = os.environ.get("KERAS_ATTN_DATA")
FIRST_AMAZON = "So there is no way for me to plug it in here in the US unless I go by a converter."


def write_data(folder: Path, amazon=b"Good\t1\n", imdb=b"Bad\t0\n", yelp=b"Fine\t1\n") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in [(AMAZON, amazon), (IMDB, imdb), (YELP, yelp)]:
        (folder / name).write_bytes(content)
    return folder


@pytest.fixture(autouse=True)
def isolated_environment(tmp_path, monkeypatch):
    """Keep the developer's data folder and Keras cache out of every test."""
    monkeypatch.delenv("KERAS_ATTN_DATA", raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))


def test_loads_every_source_from_its_own_file(tmp_path):
    amazon = b"Phone works\t1\nBattery died\t0\n"
    folder = write_data(tmp_path, amazon=amazon, imdb=b"Dull film\t0\n")
    data = load_sentences(folder)
    assert data.texts == ["Phone works", "Battery died", "Dull film", "Fine"]
    assert data.sources == ["amazon", "amazon", "imdb", "yelp"]
    np.testing.assert_array_equal(data.labels, [1, 0, 0, 1])
    assert data.labels.dtype.kind == "i"
    assert len(data) == 4


def test_tolerates_bom_crlf_header_blank_lines_and_keeps_quotes(tmp_path):
    amazon = (
        b"\xef\xbb\xbfsentence\tlabel\r\n"
        b'"Great" phone, 5" screen\t1\r\n'
        b"\r\n  \r\n"
        b'It\'s "ok"\t0 \r\n\r\n'
    )
    data = load_sentences(write_data(tmp_path, amazon=amazon))
    assert data.texts[:2] == ['"Great" phone, 5" screen', 'It\'s "ok"']
    np.testing.assert_array_equal(data.labels[:2], [1, 0])


def test_bom_is_not_part_of_the_first_sentence(tmp_path):
    data = load_sentences(write_data(tmp_path, yelp=b"\xef\xbb\xbfWow... Loved this place.\t1\n"))
    assert data.texts[-1] == "Wow... Loved this place."


def test_first_sentence_is_not_taken_for_a_header(tmp_path):
    data = load_sentences(write_data(tmp_path, amazon=f"{FIRST_AMAZON}\t0\nGreat\t1\n".encode()))
    assert data.texts[:2] == [FIRST_AMAZON, "Great"]


def test_splits_on_the_last_tab_and_only_at_newlines(tmp_path):
    # U+0085 (NEL) occurs inside real imdb sentences; it is not a line break here.
    imdb = "The script i\x85was there a script?  \t0\nA\tB\t1\n".encode()
    data = load_sentences(write_data(tmp_path, imdb=imdb))
    assert data.texts[1:3] == ["The script i\x85was there a script?", "A\tB"]
    np.testing.assert_array_equal(data.labels[1:3], [0, 1])


@pytest.mark.parametrize(
    ("imdb", "line"),
    [
        (b"Good\t1\nno tab here\n", 2),
        (b"Good\t1\n\nBad\t2\n", 3),
        (b"Good\t1\nsentence\tlabel\n", 2),  # a header is only allowed on line 1
        (b"Good\t1\n\t0\n", 2),  # empty sentence
        (b"no tab on line one\nGood\t1\n", 1),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path, imdb, line):
    with pytest.raises(DataError, match=rf"imdb_labelled\.txt:{line}: expected"):
        load_sentences(write_data(tmp_path, imdb=imdb))


def test_invalid_utf8_names_the_file(tmp_path):
    with pytest.raises(DataError, match=r"yelp_labelled\.txt: not valid UTF-8"):
        load_sentences(write_data(tmp_path, yelp=b"caf\xe9\t1\n"))


def test_missing_folder_names_folder_and_files(tmp_path):
    with pytest.raises(DataError) as error:
        load_sentences(tmp_path / "nowhere")
    message = str(error.value)
    assert "nowhere" in message and "does not exist" in message
    assert all(name in message for name in (AMAZON, IMDB, YELP))


def test_missing_file_names_folder_and_files(tmp_path):
    folder = write_data(tmp_path / "partial")
    (folder / YELP).unlink()
    with pytest.raises(DataError) as error:
        load_sentences(folder)
    message = str(error.value)
    assert "partial" in message
    assert all(name in message for name in (AMAZON, IMDB, YELP))


def test_finds_files_in_the_unzipped_archive_folder(tmp_path):
    write_data(tmp_path / "sentiment labelled sentences")
    assert load_sentences(tmp_path).texts == ["Good", "Bad", "Fine"]


def test_checksum_is_sha256_of_the_files_in_fixed_order(tmp_path):
    data = load_sentences(write_data(tmp_path))
    assert data.checksum == hashlib.sha256(b"Good\t1\nBad\t0\nFine\t1\n").hexdigest()
    changed = load_sentences(write_data(tmp_path / "other", yelp=b"Fine\t1\r\n"))
    assert changed.checksum != data.checksum


def test_explicit_folder_beats_environment_variable(tmp_path, monkeypatch):
    from_env = write_data(tmp_path / "env", amazon=b"from env\t1\n")
    explicit = write_data(tmp_path / "explicit", amazon=b"explicit\t1\n")
    monkeypatch.setenv("KERAS_ATTN_DATA", str(from_env))
    assert load_sentences(explicit).texts[0] == "explicit"
    assert load_sentences().texts[0] == "from env"


def test_environment_variable_pointing_nowhere_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_ATTN_DATA", str(tmp_path / "missing"))
    with pytest.raises(DataError, match="KERAS_ATTN_DATA"):
        load_sentences()


def _forbid_download(*args, **kwargs):
    raise AssertionError("must not download")


def test_uses_the_keras_cache_without_downloading(tmp_path, monkeypatch):
    monkeypatch.setattr("keras.utils.get_file", _forbid_download)
    extracted = tmp_path / "keras_home" / "datasets" / "sentiment_labelled_sentences_extracted"
    write_data(extracted / "sentiment labelled sentences", amazon=b"cached\t1\n")
    assert load_sentences().texts[0] == "cached"


def test_downloads_into_the_keras_cache(tmp_path, monkeypatch):
    calls = []

    def fake_get_file(fname, origin, extract, cache_dir):
        calls.append((fname, origin, extract, cache_dir))
        extracted = Path(cache_dir) / "datasets" / "sentiment_labelled_sentences_extracted"
        write_data(extracted / "sentiment labelled sentences", amazon=b"downloaded\t1\n")
        return str(extracted)

    monkeypatch.setattr("keras.utils.get_file", fake_get_file)
    assert load_sentences().texts[0] == "downloaded"
    assert calls == [("sentiment_labelled_sentences.zip", URL, True, str(tmp_path / "keras_home"))]


def test_failed_download_says_how_to_supply_the_data(monkeypatch):
    def offline(*args, **kwargs):
        raise Exception("URL fetch failure on ...: None -- [Errno -3] Temporary failure")

    monkeypatch.setattr("keras.utils.get_file", offline)
    with pytest.raises(DataError, match="--data-dir.*KERAS_ATTN_DATA") as error:
        load_sentences()
    assert "Temporary failure" in str(error.value)


@pytest.mark.skipif(not REAL_DATA, reason="set KERAS_ATTN_DATA to the real data")
def test_real_data_set():
    data = load_sentences(REAL_DATA)
    sources = np.array(data.sources)
    assert len(data) == 3000
    for source in ("amazon", "imdb", "yelp"):
        assert (sources == source).sum() == 1000
        assert data.labels[sources == source].sum() == 500
    assert data.texts[0] == FIRST_AMAZON
    assert data.sources[0] == "amazon" and data.labels[0] == 0


def test_find_data_dir_order_and_no_download(tmp_path, monkeypatch):
    monkeypatch.setattr("keras.utils.get_file", _forbid_download)
    with pytest.raises(DataError, match="--data-dir.*KERAS_ATTN_DATA"):
        find_data_dir(download=False)
    cached = write_data(tmp_path / "keras_home" / "datasets" / "sentiment_labelled_sentences_extracted" / "s")
    assert find_data_dir(download=False) == cached
    from_env = write_data(tmp_path / "env")
    monkeypatch.setenv("KERAS_ATTN_DATA", str(from_env))
    assert find_data_dir() == from_env
    explicit = write_data(tmp_path / "explicit" / "nested")
    assert find_data_dir(tmp_path / "explicit") == explicit


# A user's file: the same records written as CSV, TSV and JSON Lines.
RECORDS = [
    ("Great phone, 5\" screen", "positive"),
    ('She said "never again", twice', "negative"),
    ("two\r\nlines, CRLF", "neutral"),
    ("", "neutral"),  # an empty text is a text
    ("ünïcödé 日本語 \u2028 \x85 emoji 🙂", "positive"),
    ("long " * 40_000, "negative"),  # beyond the csv module's default field limit
    ("no label here", ""),
    ("tab\tinside", " 5 "),  # a number label, stripped, kept as text
]


def write_records(path, records, kind, text="text", label="label"):
    if kind == "jsonl":
        lines = [json.dumps({text: t, label: l, "id": i}, ensure_ascii=False) for i, (t, l) in enumerate(records)]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, dialect="excel-tab" if kind == "tsv" else "excel")
        writer.writerow(["id", text, label])
        writer.writerows((i, t, l) for i, (t, l) in enumerate(records))
    return path


@pytest.mark.parametrize("kind", ["csv", "tsv", "jsonl"])
def test_every_format_reads_the_same_rows(tmp_path, kind):
    data = read_labelled_file(write_records(tmp_path / f"texts.{kind}", RECORDS, kind))
    kept = [(t, l.strip()) for t, l in RECORDS if l.strip()]
    assert data.texts == [t for t, _ in kept]
    assert data.classes == ("5", "negative", "neutral", "positive")  # sorted strings
    assert [data.classes[i] for i in data.labels] == [l for _, l in kept]
    assert data.skipped_empty_labels == 1
    assert data.sources is None and data.origin == str(tmp_path / f"texts.{kind}")
    raw = (tmp_path / f"texts.{kind}").read_bytes()
    assert data.checksum == hashlib.sha256(raw).hexdigest()


def test_jsonl_numbers_keep_their_text_and_null_is_empty(tmp_path):
    path = tmp_path / "n.jsonl"
    path.write_text('{"text": "a", "label": 1}\r\n{"text": "b", "label": 1.0}\n'
                    '{"text": 7, "label": true}\n\n{"text": "d", "label": null}\n')
    data = read_labelled_file(path)
    assert data.texts == ["a", "b", "7"]
    assert data.classes == ("1", "1.0", "true")
    assert data.skipped_empty_labels == 1


def test_format_flag_beats_the_suffix_and_columns_are_chosen(tmp_path):
    path = write_records(tmp_path / "export.txt", RECORDS[:3], "tsv", text="body", label="team")
    with pytest.raises(DataError, match=r"export\.txt: cannot tell the format.*--format"):
        read_labelled_file(path)
    data = read_labelled_file(path, format="tsv", text_column="body", label_column="team")
    assert data.texts == [t for t, _ in RECORDS[:3]]


def test_given_labels_fix_the_order(tmp_path):
    path = write_records(tmp_path / "t.csv", RECORDS[:3], "csv")
    data = read_labelled_file(path, labels=["positive", "neutral", "negative", "unused"])
    assert data.classes == ("positive", "neutral", "negative", "unused")
    np.testing.assert_array_equal(data.labels, [0, 2, 1])


@pytest.mark.parametrize(
    ("content", "kwargs", "message"),
    [
        (b"text,label\nok,a\nbad,b,extra\n", {}, r"t\.csv:3: 3 fields where the header has 2"),
        (b'text,label\nok,a\n"open,b\n\n', {}, r"t\.csv:3: cannot parse"),
        (b"", {}, r"t\.csv: empty file"),
        (b"text\nok\n", {}, r"t\.csv: no label column 'label'; the columns are 'text'"),
        (b"text,label\nok,a\nok,a\n", {}, r"t\.csv: only the class 'a'"),
        (b"text,label\n,\n", {}, r"t\.csv: no labelled rows"),
        (b"text,label\nok,a\nno,b\n", {"labels": ["a", "c"]}, r"t\.csv:3: label 'b' is not one of"),
    ],
)
def test_refusals_name_the_file_and_line(tmp_path, content, kwargs, message):
    (tmp_path / "t.csv").write_bytes(content)
    with pytest.raises(DataError, match=message):
        read_labelled_file(tmp_path / "t.csv", **kwargs)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"text": "a", "label": "x"}\n[1, 2]\n', r"j\.jsonl:2: expected a JSON object, got list"),
        ('{"text": "a", "label": "x"}\n{"text": "b"}\n', r"j\.jsonl:2: no label key 'label'; the keys are 'text'"),
        ('{"text": ["a"], "label": "x"}\n', r"j\.jsonl:1: the text 'text' is a JSON list"),
        ('{"text": "a", "label": "x"}\n\n{"text": "a", "label": "x"\n', r"j\.jsonl:3: not valid JSON"),
    ],
)
def test_jsonl_refusals_name_the_line(tmp_path, content, message):
    (tmp_path / "j.jsonl").write_text(content)
    with pytest.raises(DataError, match=message):
        read_labelled_file(tmp_path / "j.jsonl")


def test_missing_file_and_folder_are_refused(tmp_path):
    with pytest.raises(DataError, match=r"nope\.csv: no such file"):
        read_labelled_file(tmp_path / "nope.csv")
    (tmp_path / "dir.csv").mkdir()
    with pytest.raises(DataError, match=r"dir\.csv: is a folder"):
        read_labelled_file(tmp_path / "dir.csv")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=st.lists(st.text(max_size=60), min_size=2, max_size=8), kind=st.sampled_from(["csv", "tsv", "jsonl"]))
def test_any_text_survives_a_round_trip(tmp_path, texts, kind):
    records = [(text, ("a", "b")[i % 2]) for i, text in enumerate(texts)]
    data = read_labelled_file(write_records(tmp_path / f"h.{kind}", records, kind))
    assert data.texts == texts
