"""Tests for loading the UCI Sentiment Labelled Sentences files."""

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

from keras_attn.data import URL, DataError, load_sentences

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
