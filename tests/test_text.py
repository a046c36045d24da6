"""Tests for the TF-free text encoder shared by training and serving."""

import json
import re
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from export.text import _ASCII_LOWERCASE, _MANY_TEXTS, CLEANING, OOV_TOKEN, TextEncoder

CORPUS = ["The cat sat.", "the CAT ran!", "a dog; the end"]
# Counts: the 3, cat 2, then a/dog/end/ran/sat 1 each; the tie goes to "a".
ENCODER = TextEncoder.fit(CORPUS, num_words=5, seq_len=6)


def test_fit_keeps_most_frequent_words_and_breaks_ties_alphabetically():
    assert ENCODER.vocabulary == ("the", "cat", "a")
    assert ENCODER.vocab_size == 5
    assert ENCODER.seq_len == 6
    assert ENCODER.labels == ("negative", "positive")


def test_fit_does_not_depend_on_corpus_order():
    assert TextEncoder.fit(CORPUS[::-1], num_words=5, seq_len=6) == ENCODER


def test_fit_on_small_corpus_gives_smaller_vocabulary():
    encoder = TextEncoder.fit(["b a b"], num_words=1000)
    assert encoder.vocabulary == ("b", "a")
    assert encoder.vocab_size == 4


def test_fit_rejects_num_words_without_room_for_reserved_ids():
    with pytest.raises(ValueError, match="num_words"):
        TextEncoder.fit(CORPUS, num_words=1)


@pytest.mark.parametrize(
    ("text", "cleaned"),
    [
        ("Don't STOP!", "don t stop"),
        ("  Héllo, WORLD!!  42\tx ", "h llo world 42 x"),
        ("I ❤️ NY\x00\x85", "i ny"),
        ("...", ""),
        ("", ""),
    ],
)
def test_clean_applies_the_tutorial_rule(text, cleaned):
    assert TextEncoder.clean(text) == cleaned


def test_tokenize_splits_cleaned_text():
    assert TextEncoder.tokenize("Hi--there, 2 you") == ["hi", "there", "2", "you"]
    assert TextEncoder.tokenize(" ,; ") == []


def test_encode_maps_unknown_words_to_one_and_pads_at_the_end():
    rows = ENCODER.encode("The dog ate a cat!")
    np.testing.assert_array_equal(rows, [[2, 1, 1, 4, 3, 0]])
    assert rows.dtype == np.int32


def test_encode_truncates_at_the_end():
    rows = ENCODER.encode(["cat cat the a the cat the dog", "", "?!"])
    np.testing.assert_array_equal(rows, [[3, 3, 2, 4, 2, 3], [0] * 6, [0] * 6])


def test_encode_of_empty_batch_has_zero_rows():
    assert ENCODER.encode([]).shape == (0, 6)


def test_encode_rejects_non_string_items():
    with pytest.raises(TypeError, match="expected str"):
        ENCODER.encode([b"bytes"])


def test_tokens_label_the_encoded_positions():
    assert ENCODER.tokens("The dog ate a cat!") == ["the", OOV_TOKEN, OOV_TOKEN, "a", "cat"]
    assert ENCODER.tokens("cat " * 10) == ["cat"] * 6


@pytest.mark.parametrize(
    "vocabulary",
    [["Cat"], ["two words"], ["dog", "dog"], [""]],
)
def test_constructor_rejects_words_encode_could_never_match(vocabulary):
    with pytest.raises(ValueError, match="vocabulary"):
        TextEncoder(vocabulary)


def test_constructor_rejects_a_bare_string_vocabulary():
    with pytest.raises(TypeError, match="vocabulary"):
        TextEncoder("abc")


@pytest.mark.parametrize("seq_len", [0, -1, 2.5, True])
def test_constructor_rejects_bad_seq_len(seq_len):
    with pytest.raises(ValueError, match="seq_len"):
        TextEncoder(["a"], seq_len=seq_len)


def test_json_records_format_and_cleaning_rule():
    data = json.loads(ENCODER.to_json())
    assert data == {
        "format": 1,
        "cleaning": {"lowercase": True, "pattern": "[^a-z0-9]+", "replacement": " "},
        "seq_len": 6,
        "labels": ["negative", "positive"],
        "vocabulary": ["the", "cat", "a"],
    }


def test_save_and_load_round_trip(tmp_path):
    encoder = TextEncoder(["x", "y"], seq_len=3, labels=("bad", "good", "ünïcode"))
    encoder.save(tmp_path / "encoder.json")
    assert TextEncoder.load(tmp_path / "encoder.json") == encoder


def _json_with(**changes):
    data = json.loads(ENCODER.to_json())
    data.update(changes)
    return json.dumps(data)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"cleaning": {**CLEANING, "pattern": "[^a-z]+"}}, "cleaning rule"),
        ({"cleaning": {**CLEANING, "lowercase": False}}, "cleaning rule"),
        ({"format": 2}, "format"),
        ({"format": True}, "format"),
        ({"format": None}, "format"),
    ],
)
def test_from_json_refuses_foreign_rule_or_format(changes, message):
    with pytest.raises(ValueError, match=message):
        TextEncoder.from_json(_json_with(**changes))


def test_from_json_reports_a_missing_key():
    data = json.loads(ENCODER.to_json())
    del data["vocabulary"]
    with pytest.raises(ValueError, match="vocabulary"):
        TextEncoder.from_json(json.dumps(data))


def test_equality_compares_content():
    assert TextEncoder(["a"], seq_len=4) == TextEncoder(("a",), seq_len=4)
    assert hash(TextEncoder(["a"], seq_len=4)) == hash(TextEncoder(("a",), seq_len=4))
    assert TextEncoder(["a"], seq_len=4) != TextEncoder(["a"], seq_len=5)
    assert TextEncoder(["a"]) != TextEncoder(["a"], labels=("no", "yes"))
    assert TextEncoder(["a", "b"]) != TextEncoder(["b", "a"])


def test_importing_the_encoder_does_not_import_tensorflow_or_keras():
    code = (
        "import sys, export.text; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'tensorflow', 'keras'}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


# Text that mixes known words (in any case) with arbitrary unicode, so that
# properties are exercised on known, unknown and empty tokens alike.
WORDS = ["the", "cat", "a", "dog", "THE", "Cat"]
TEXTS = st.lists(st.one_of(st.sampled_from(WORDS), st.text()), max_size=40).map(" ".join)


@given(texts=st.lists(TEXTS, max_size=5), corpus=st.lists(TEXTS, max_size=5),
       num_words=st.integers(2, 8), seq_len=st.integers(1, 10))
def test_any_unicode_encodes_to_valid_ids(texts, corpus, num_words, seq_len):
    encoder = TextEncoder.fit(corpus, num_words=num_words, seq_len=seq_len)
    rows = encoder.encode(texts)
    assert rows.shape == (len(texts), seq_len)
    assert rows.dtype == np.int32
    assert encoder.vocab_size <= num_words
    assert ((rows >= 0) & (rows < encoder.vocab_size)).all()
    np.testing.assert_array_equal(encoder.encode(texts), rows)


@given(text=TEXTS)
def test_single_string_encodes_like_a_batch_of_one(text):
    np.testing.assert_array_equal(ENCODER.encode(text), ENCODER.encode([text]))


@given(text=TEXTS)
def test_tokens_align_with_encoded_ids(text):
    (row,) = ENCODER.encode(text)
    tokens = ENCODER.tokens(text)
    assert len(tokens) == np.count_nonzero(row)
    assert (row[len(tokens):] == 0).all()  # padding only after the words
    for token, word_id in zip(tokens, row):
        expected = OOV_TOKEN if word_id == 1 else ENCODER.vocabulary[word_id - 2]
        assert token == expected


@given(corpus=st.lists(TEXTS, max_size=5), num_words=st.integers(2, 8),
       labels=st.lists(st.text(), min_size=1, max_size=3, unique=True), text=TEXTS)
def test_json_round_trip_preserves_encoder_and_encodings(corpus, num_words, labels, text):
    encoder = TextEncoder.fit(corpus, num_words=num_words, seq_len=7, labels=labels)
    restored = TextEncoder.from_json(encoder.to_json())
    assert restored == encoder
    np.testing.assert_array_equal(restored.encode(text), encoder.encode(text))


def _documented_tokens(text):
    """The rule as recorded in `CLEANING`, applied literally: lowercase, sub, split."""
    if CLEANING["lowercase"]:
        text = text.lower()
    return re.sub(CLEANING["pattern"], CLEANING["replacement"], text).strip().split()


# Characters whose lowercase is longer or leaves a-z (İ -> i + U+0307, K
# (Kelvin) -> k, ẞ -> ß), unicode spaces and separators, digits of other scripts;
# NUL, which encode puts between texts, "\xff", the byte marking their ends, and "?",
# the byte any non-ASCII character becomes there, a lone surrogate.
TRICKY = st.sampled_from(["\u0130", "\u212a", "\u1e9e", "Σ", "ǅ", "\u0307", "\xa0", "\u2028", "\x1c", "\x85", "٣", "²", "_", "-", " ",
                          "\x00", "\xff", "?", "\ud800"])
UNICODE = st.lists(st.one_of(st.text(), TRICKY, st.sampled_from(WORDS)), max_size=30).map("".join)


@settings(max_examples=500)
@given(text=UNICODE)
def test_tokenize_follows_the_documented_rule_on_any_unicode(text):
    assert TextEncoder.tokenize(text) == _documented_tokens(text)
    assert TextEncoder.tokenize(text) == TextEncoder.clean(text).split()


@settings(max_examples=500)
@given(texts=st.lists(UNICODE, max_size=6), seq_len=st.integers(1, 8))
def test_encode_is_the_documented_rule_then_lookup(texts, seq_len):
    encoder = TextEncoder(["the", "cat", "a", "i", "k"], seq_len=seq_len)
    ids = {word: i for i, word in enumerate(encoder.vocabulary, 2)}
    expected = np.zeros((len(texts), seq_len), np.int32)
    for row, text in zip(expected, texts):
        words = _documented_tokens(text)[:seq_len]
        row[: len(words)] = [ids.get(word, 1) for word in words]
    rows = encoder.encode(texts)
    assert rows.dtype == np.int32 and rows.flags.c_contiguous
    np.testing.assert_array_equal(rows, expected)


def test_ascii_lowercase_holds_every_character_whose_lowercase_has_ascii():
    # encode lowercases A-Z in its byte map and only these before encoding to ASCII.
    found = {char for char in map(chr, range(0x80, 0x110000)) if any(c.isascii() for c in char.lower())}
    assert found == set(_ASCII_LOWERCASE)
    assert all(lowered == char.lower() for char, lowered in _ASCII_LOWERCASE.items())


def test_lowercasing_that_adds_characters_splits_like_the_rule():
    # "İ".lower() is "i" + COMBINING DOT ABOVE, a separator; Kelvin sign lowers to "k".
    assert TextEncoder.tokenize("İSTANBUL Kelvin") == ["i", "stanbul", "kelvin"]
    assert TextEncoder.tokenize("\u212a") == ["k"]


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_decode_of_an_encoded_row_gives_its_tokens(text):
    encoder = TextEncoder(["good", "bad", "phone"], seq_len=6)
    assert encoder.decode(encoder.encode(text)[0].tolist()) == encoder.tokens(text)


# -- encode against a slow reference written from the documented rule ---------------
#
# The rule, as export/text.py's docstrings state it: lowercase, then every run
# of characters other than a-z and 0-9 becomes a single space, then strip;
# the words are what whitespace separates; word i of the vocabulary is id
# i + 2, any other word 1; a row is the first seq_len ids, then 0s. The
# reference below follows those sentences one by one, sharing no code with
# export.text, so that a fast encoder cannot agree with it by construction.


def _reference_rows(vocabulary, seq_len, texts):
    ids = {word: i for i, word in enumerate(vocabulary, 2)}
    rows = np.zeros((len(texts), seq_len), np.int32)
    for r, text in enumerate(texts):
        cleaned = re.sub("[^a-z0-9]+", " ", text.lower()).strip()
        row = [ids.get(word, 1) for word in cleaned.split()][:seq_len]
        rows[r, : len(row)] = row
    return rows


# Words of 1 to 25 kept characters: keys of one to four 8-byte chunks, and
# prefixes of each other (word, words, wordsmith...) that share chunks.
VOCAB_WORDS = st.from_regex(r"[a-z0-9]{1,25}", fullmatch=True)
SCRIPTS = st.characters(codec="utf-8")  # any codepoint but a surrogate
PIECES = st.one_of(
    st.text(SCRIPTS),  # any script
    st.text(" \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f\x85\xa0\u2000\u2028\u3000"),  # ASCII and Unicode whitespace
    st.text("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~¡¿«»—…"),  # punctuation
    st.text(st.characters(min_codepoint=0x370, max_codepoint=0x33FF)),  # Greek, Cyrillic, CJK, ...
    TRICKY,
)


@st.composite
def vocabularies_and_texts(draw):
    """A vocabulary, and texts made of its words (in any case, glued to anything) and arbitrary Unicode."""
    vocabulary = draw(st.lists(VOCAB_WORDS, unique=True, max_size=60))
    known = st.sampled_from(vocabulary).flatmap(
        lambda word: st.sampled_from([word, word.upper(), word.title(), word + "s", word[:-1], word * 2,
                                      word[:-1] + ("y" if word.endswith("x") else "x")]))  # same length, last byte off
    piece = st.one_of(PIECES, known) if vocabulary else PIECES
    text = st.lists(piece, max_size=40).map("".join)
    long_text = st.tuples(text, st.integers(1, 3000)).map(lambda pair: pair[0] * pair[1])
    texts = draw(st.lists(st.one_of(text, text, text, long_text, st.just("")), max_size=80))
    return vocabulary, texts


@settings(max_examples=300, deadline=None)
@given(case=vocabularies_and_texts(), seq_len=st.integers(1, 50))
def test_encode_gives_the_reference_ids_on_any_unicode(case, seq_len):
    vocabulary, texts = case
    encoder = TextEncoder(vocabulary, seq_len=seq_len)
    expected = _reference_rows(vocabulary, seq_len, texts)
    # Fewer than _MANY_TEXTS texts are looked up in Python's dict, more in
    # numpy's table: every example goes through both, and a text alone.
    copies = 1 + _MANY_TEXTS // max(len(texts), 1)
    for batch, want in ((texts, expected), (texts * copies, np.tile(expected, (copies, 1))), (texts[:1], expected[:1])):
        rows = encoder.encode(batch)
        assert rows.dtype == np.int32 and rows.shape == (len(batch), seq_len) and rows.flags.c_contiguous
        np.testing.assert_array_equal(rows, want)
    if texts:
        np.testing.assert_array_equal(encoder.encode(texts[0]), expected[:1])


def test_encode_finds_words_whose_slot_another_word_took():
    # 3000 words in a table of 16384 slots: hundreds share a slot with an
    # earlier word, and are found through the dict; the table alone finds the rest.
    vocabulary = [f"w{i}x{i * 7919 % 10007}" for i in range(3000)] + ["a" * 8, "b" * 16, "c" * 17]
    encoder = TextEncoder(vocabulary, seq_len=4)
    texts = [" ".join(vocabulary[i : i + 4]).upper() for i in range(0, len(vocabulary), 4)]
    np.testing.assert_array_equal(encoder.encode(texts), _reference_rows(vocabulary, 4, texts))
    assert (encoder.encode(texts)[:-1] != 1).all()  # every word known


def test_encode_tells_apart_long_words_that_differ_after_their_first_8_bytes():
    vocabulary = ["abcdefghij", "abcdefghijklmnopq", "abcdefgh"]
    texts = ["abcdefghik abcdefghijklmnopr abcdefghijklmnopq abcdefghij abcdefgh abcdefgi"] * 40
    np.testing.assert_array_equal(TextEncoder(vocabulary, seq_len=6).encode(texts), [[1, 1, 3, 2, 4, 1]] * 40)
