"""Tokenizer, vocabulary, padding, and the AG News / IMDB readers on small local files."""

from __future__ import annotations

import csv
import io
import tarfile
from pathlib import Path

import pytest
import torch

from uhn_runtime.data import DataError, load_task_data, text
from uhn_runtime.data.text import (
    CLS,
    PAD,
    UNK,
    build_vocab,
    encode,
    pad_sequences,
    read_ag_news_csv,
    read_imdb,
    stratified_split,
    tokenize,
)
from uhn_spec.spec import TaskSpec


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("UHN_CACHE", str(cache))
    return cache


# --------------------------------------------------------------------------- tokenizer


def test_tokenize_lowercases_and_keeps_contractions_words_and_punctuation() -> None:
    assert tokenize("Don't STOP, it's 42!") == ["don't", "stop", ",", "it's", "42", "!"]
    assert tokenize("<br />Great") == ["<", "br", "/", ">", "great"]
    assert tokenize("rock'n'roll") == ["rock'n", "'", "roll"]
    assert tokenize("naïve café") == ["naïve", "café"]
    assert tokenize("   ") == []


def test_vocabulary_is_specials_then_most_frequent_with_alphabetical_ties() -> None:
    docs = [["b", "a", "c", "a"], ["c", "a", "d", "b"], ["e"]]
    vocab = build_vocab(docs, size=6)
    assert vocab == {"<unk>": 0, "<pad>": 1, "<cls>": 2, "a": 3, "b": 4, "c": 5}
    assert len(build_vocab(docs, size=5000)) == 3 + 5  # never more tokens than seen
    # Document order does not matter.
    assert build_vocab(list(reversed(docs)), size=6) == vocab


def test_literal_special_strings_in_text_do_not_become_extra_entries() -> None:
    vocab = build_vocab([["<pad>", "<pad>", "x"]], size=10)
    assert vocab == {"<unk>": 0, "<pad>": 1, "<cls>": 2, "x": 3}


def test_encode_prepends_cls_truncates_and_maps_unknowns() -> None:
    vocab = {"<unk>": 0, "<pad>": 1, "<cls>": 2, "good": 3, "film": 4}
    assert encode(["good", "film", "!"], vocab, max_length=10) == [CLS, 3, 4, UNK]
    assert encode(["good", "film", "!"], vocab, max_length=3) == [CLS, 3, 4]
    assert encode([], vocab, max_length=3) == [CLS]


def test_pad_sequences_fills_rows_then_padding() -> None:
    flat = torch.tensor([2, 5, 6, 2, 2, 7], dtype=torch.int32)
    padded = pad_sequences(flat, torch.tensor([3, 1, 2]))
    assert padded.tolist() == [[2, 5, 6], [2, PAD, PAD], [2, 7, PAD]]
    assert padded.dtype == torch.int64


# --------------------------------------------------------------------------- AG News


def write_ag_news(path: Path, rows: list[tuple[str, str, str]], header: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream, quoting=csv.QUOTE_ALL)
        if header:
            writer.writerow(["Class Index", "Title", "Description"])
        writer.writerows(rows)
    return path


def ag_rows(per_class: int) -> list[tuple[str, str, str]]:
    words = {1: "world", 2: "sports", 3: "business", 4: "science"}
    return [(str(c), f"{words[c]} title {i}", f"about {words[c]}, item {i}") for i in range(per_class) for c in words]


def test_ag_news_csv_joins_title_and_description_and_skips_a_header(tmp_path: Path) -> None:
    rows = [("3", "Fears for pension", 'Unions say, "disappointed".'), ("1", "A", "B")]
    for header in (False, True):
        texts, labels = read_ag_news_csv(write_ag_news(tmp_path / f"h{header}.csv", rows, header))
        assert texts == ['Fears for pension Unions say, "disappointed".', "A B"]
        assert labels == [2, 0]


@pytest.mark.parametrize("bad", [("5", "t", "d"), ("0", "t", "d"), ("x", "t", "d")])
def test_ag_news_csv_rejects_labels_outside_1_to_4(tmp_path: Path, bad: tuple[str, str, str]) -> None:
    path = write_ag_news(tmp_path / "bad.csv", [("1", "ok", "row"), bad])
    with pytest.raises(DataError, match="row 2: label"):
        read_ag_news_csv(path)


def test_stratified_split_keeps_class_balance_and_is_fixed() -> None:
    labels = [i % 4 for i in range(400)]
    train, held = stratified_split(labels, 0.8, seed=1)
    assert len(train) == 320 and len(held) == 80 and not set(train) & set(held)
    assert [sum(labels[i] == c for i in held) for c in range(4)] == [20, 20, 20, 20]
    assert stratified_split(labels, 0.8, seed=1) == (train, held)
    assert stratified_split(labels, 0.8, seed=2) != (train, held)


def test_ag_news_without_train_csv_splits_test_csv_80_20_and_says_so(tmp_path: Path) -> None:
    write_ag_news(tmp_path / "ag_news" / "test.csv", ag_rows(per_class=25))
    data = load_task_data(TaskSpec(dataset="ag_news", max_length=6), tmp_path)
    assert len(data.splits["train"][1]) == 80 and len(data.splits["test"][1]) == 20
    assert torch.bincount(data.splits["test"][1]).tolist() == [5, 5, 5, 5]
    assert any("80/20" in note and "test.csv" in note for note in data.notes)
    inputs = data.splits["train"][0]
    assert inputs.shape[1] <= 6 and bool((inputs[:, 0] == CLS).all())


def test_ag_news_with_train_csv_uses_the_official_split(tmp_path: Path) -> None:
    write_ag_news(tmp_path / "ag_news" / "train.csv", ag_rows(per_class=10))
    write_ag_news(tmp_path / "ag_news" / "test.csv", [("2", "unseenword", "sports")])
    data = load_task_data(TaskSpec(dataset="ag_news"), tmp_path)
    assert len(data.splits["train"][1]) == 40 and data.splits["test"][1].tolist() == [1]
    assert data.notes == []
    # Vocabulary from training text only: the test-only word is <unk>.
    assert data.splits["test"][0].tolist() == [[CLS, UNK, data.splits["test"][0][0, 2].item()]]
    assert data.splits["test"][0][0, 2].item() != UNK


def test_missing_ag_news_names_the_path_and_the_source(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"ag_news/test\.csv.*Official source: http"):
        load_task_data(TaskSpec(dataset="ag_news"), tmp_path)


def test_text_batches_pad_to_the_longest_and_mask_padding(tmp_path: Path) -> None:
    rows = [("1", "short", "a"), ("2", "a much longer title here", "and a description"), ("1", "b", "c")]
    write_ag_news(tmp_path / "ag_news" / "train.csv", rows)
    write_ag_news(tmp_path / "ag_news" / "test.csv", rows)
    data = load_task_data(TaskSpec(dataset="ag_news"), tmp_path)
    batch = next(data.eval_batches("test", batch_size=2))
    assert batch.inputs.shape == (2, 1 + 8)  # <cls> + the longer text's 8 tokens
    assert batch.padding_mask.tolist()[0] == [False] * 3 + [True] * 6
    assert not batch.padding_mask[1].any()
    assert torch.equal(batch.padding_mask, batch.inputs == PAD)


def test_encoded_text_is_cached_per_source_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_ag_news(tmp_path / "ag_news" / "test.csv", ag_rows(per_class=5))
    first = load_task_data(TaskSpec(dataset="ag_news"), tmp_path)

    def no_reading(path: Path) -> None:
        raise AssertionError("read the CSV although the cache holds this version")

    monkeypatch.setattr(text, "read_ag_news_csv", no_reading)
    again = load_task_data(TaskSpec(dataset="ag_news"), tmp_path)
    assert torch.equal(first.splits["train"][0], again.splits["train"][0])
    with pytest.raises(AssertionError, match="read the CSV"):  # other settings: a new entry
        load_task_data(TaskSpec(dataset="ag_news", vocab_size=7), tmp_path)


# --------------------------------------------------------------------------- IMDB

REVIEWS = {
    "train/pos/10_9.txt": "Great film, loved it.",
    "train/pos/2_8.txt": "Great acting<br />great plot.",
    "train/neg/1_1.txt": "Awful.",
    "test/neg/5_2.txt": "Boring film.",
    "test/pos/3_10.txt": "Great!",
}


def write_imdb_folder(base: Path) -> None:
    for rel, review in REVIEWS.items():
        (base / rel).parent.mkdir(parents=True, exist_ok=True)
        (base / rel).write_text(review, encoding="utf-8")


def write_imdb_tar(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        # Written in a scrambled order, with files the loader must ignore.
        for rel in ["README", "imdb.vocab", *reversed(REVIEWS), "train/unsup/0_0.txt"]:
            data = REVIEWS.get(rel, "ignored").encode()
            info = tarfile.TarInfo(f"aclImdb/{rel}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


EXPECTED_TRAIN = (["Awful.", "Great film, loved it.", "Great acting<br />great plot."], [0, 1, 1])


@pytest.mark.parametrize("form", ["folder", "bare_folder", "tarball"])
def test_imdb_reads_every_form_in_sorted_order(tmp_path: Path, form: str) -> None:
    if form == "folder":
        write_imdb_folder(tmp_path / "imdb" / "aclImdb")
    elif form == "bare_folder":
        write_imdb_folder(tmp_path / "imdb")
    else:
        write_imdb_tar(tmp_path / "imdb" / "aclImdb_v1.tar.gz")
    splits = read_imdb(tmp_path)
    # neg (0) before pos (1); within a label, by file name ("10_9" < "2_8").
    assert splits["train"] == EXPECTED_TRAIN
    assert splits["test"] == (["Boring film.", "Great!"], [0, 1])


def test_imdb_task_builds_the_vocabulary_from_training_reviews(tmp_path: Path) -> None:
    write_imdb_folder(tmp_path / "imdb" / "aclImdb")
    data = load_task_data(TaskSpec(dataset="imdb", max_length=4), tmp_path)
    inputs, labels = data.splits["train"]
    assert labels.tolist() == [0, 1, 1] and inputs.shape == (3, 4)
    # "." and "great" are the most frequent training tokens (3 each; ties alphabetical).
    assert inputs[2].tolist()[:2] == [CLS, 4]  # "Great acting..."
    assert inputs[0].tolist()[2] == 3  # "Awful." ends in "."
    assert data.splits["test"][0][0].tolist()[:2] == [CLS, UNK]  # "boring" never trains


def test_missing_imdb_lists_what_it_looked_for(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"imdb/aclImdb .*aclImdb_v1\.tar\.gz.*uhn data fetch imdb"):
        load_task_data(TaskSpec(dataset="imdb"), tmp_path)
