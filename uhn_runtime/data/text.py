"""Text classification: the tokenizer, AG News (CSV) and IMDB (aclImdb folder or tarball).

Tokenisation as in the authors' code: the regex
``\\w+'\\w+|\\w+|[^\\w\\s]`` on lowercased text; a vocabulary of the ``vocab_size - 3`` most
frequent training tokens after the specials <unk>=0, <pad>=1, <cls>=2 (ties broken by the
token itself, so the vocabulary never depends on file order); each example is <cls> then its
first ``max_length - 1`` tokens, unknown tokens -> <unk>. Batches are padded to their longest
sequence with <pad>, and ``padding_mask`` is True at the padding.

Two things differ from the authors' code on purpose:
a CSV header row is recognised and skipped rather than counted as text, and IMDB files are
read in sorted order rather than ``os.listdir`` order. The text itself is not cleaned
(IMDB's ``<br />`` tags become tokens), as in the authors' code.

AG News in ../shared/data has only its 7,600-row test split; without ``train.csv`` the loader
trains on a fixed, class-stratified, seeded 80/20 split of those rows (6,080 / 1,520) and says
so in the run's notes.
"""

from __future__ import annotations

import csv
import re
import tarfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import torch

from uhn_spec.enums import DatasetType
from uhn_spec.spec import TaskSpec

from .files import cached_tensors, first_existing, missing_error, source_key
from .splits import train_val_test
from .synthetic import TensorData
from .task_data import DataError, TaskData, register_loader

TOKEN_PATTERN = re.compile(r"\w+'\w+|\w+|[^\w\s]")
UNK, PAD, CLS = 0, 1, 2
SPECIALS = ("<unk>", "<pad>", "<cls>")
DEFAULT_MAX_LENGTH = 512
AG_NEWS_CLASSES = 4
AG_NEWS_STAND_IN_TRAIN = 0.8
AG_NEWS_STAND_IN_SEED = 7600
IMDB_LABELS = ("neg", "pos")  # label ids 0 and 1
TEXT_CACHE_VERSION = 1  # bump when tokenising or encoding changes

Labelled = tuple[list[str], list[int]]  # texts, label ids


# --------------------------------------------------------------------------- tokenizer


def tokenize(text: str) -> list[str]:
    return TOKEN_PATTERN.findall(text.lower())


def build_vocab(token_lists: Iterable[list[str]], size: int) -> dict[str, int]:
    """Specials first, then the ``size - 3`` most frequent tokens (ties: alphabetical)."""
    counts: Counter[str] = Counter()
    for tokens in token_lists:
        counts.update(tokens)
    for special in SPECIALS:
        counts.pop(special, None)  # a literal "<pad>" in the text is not the special
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[: size - len(SPECIALS)]
    vocab = {special: i for i, special in enumerate(SPECIALS)}
    vocab.update((token, len(SPECIALS) + i) for i, (token, _) in enumerate(ranked))
    return vocab


def encode(tokens: list[str], vocab: dict[str, int], max_length: int) -> list[int]:
    return [CLS] + [vocab.get(token, UNK) for token in tokens[: max_length - 1]]


def pad_sequences(flat: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Concatenated sequences and their lengths -> (N, longest) int64, each row followed by
    <pad>."""
    longest = int(lengths.max()) if len(lengths) else 1
    padded = torch.full((len(lengths), longest), PAD, dtype=torch.int64)
    # Row-major order of the mask is the order the sequences were concatenated in.
    padded[torch.arange(longest) < lengths[:, None]] = flat.long()
    return padded


def encode_texts(train: Labelled, test: Labelled, vocab_size: int, max_length: int) -> dict[str, torch.Tensor]:
    """Tokenise, build the vocabulary from the training texts only, encode both splits as
    concatenated ids (int32) plus lengths -- the compact form that is cached."""
    train_tokens = [tokenize(t) for t in train[0]]
    vocab = build_vocab(train_tokens, vocab_size)
    tensors = {}
    for split, tokens, labels in (("train", train_tokens, train[1]), ("test", map(tokenize, test[0]), test[1])):
        encoded = [encode(t, vocab, max_length) for t in tokens]
        tensors[f"{split}_ids"] = torch.tensor([i for e in encoded for i in e], dtype=torch.int32)
        tensors[f"{split}_lengths"] = torch.tensor([len(e) for e in encoded], dtype=torch.int64)
        tensors[f"{split}_labels"] = torch.tensor(labels, dtype=torch.int64)
    return tensors


def text_task(
    task: TaskSpec,
    dataset: DatasetType,
    sources: list[Path],
    read: Callable[[], tuple[Labelled, Labelled]],
    key_extras: tuple[str, ...] = (),
) -> TensorData:
    """Encoded train/test texts (from the cache when these sources and settings were
    encoded before), the val split if asked, as padded token batches."""
    max_length = task.max_length or DEFAULT_MAX_LENGTH
    key = [
        task.dataset,
        *(source_key(path) for path in sources),
        f"vocab_size={task.vocab_size}",
        f"max_length={max_length}",
        f"version={TEXT_CACHE_VERSION}",
        *key_extras,
    ]
    names = tuple(f"{split}_{part}" for split in ("train", "test") for part in ("ids", "lengths", "labels"))
    saved = cached_tensors("text", key, names, lambda: encode_texts(*read(), task.vocab_size, max_length))

    def split(name: str) -> tuple[torch.Tensor, torch.Tensor]:
        return pad_sequences(saved[f"{name}_ids"], saved[f"{name}_lengths"]), saved[f"{name}_labels"]

    splits = train_val_test(split("train"), split("test"), dataset, task.validate_split)
    return TensorData(metric=task.info.metric, splits=splits, pad_token=PAD)


# --------------------------------------------------------------------------- AG News


def read_ag_news_csv(path: Path) -> Labelled:
    """Rows ``label (1-4), title, description``; text = title + " " + description.
    A header row (a label that is not a number) is skipped."""
    texts: list[str] = []
    labels: list[int] = []
    try:
        with path.open(newline="", encoding="utf-8") as stream:
            for number, row in enumerate(csv.reader(stream), start=1):
                if not row:
                    continue
                if len(row) != 3:
                    raise DataError(
                        f"{path}: row {number}: expected 3 columns (label, title, description), got {len(row)}"
                    )
                if number == 1 and not row[0].strip().isdigit():
                    continue  # header
                label = int(row[0]) if row[0].strip().isdigit() else -1
                if not 1 <= label <= AG_NEWS_CLASSES:
                    raise DataError(f"{path}: row {number}: label {row[0]!r} is not 1..{AG_NEWS_CLASSES}")
                texts.append(f"{row[1]} {row[2]}")
                labels.append(label - 1)
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text ({err})") from None
    if not texts:
        raise DataError(f"{path}: no rows")
    return texts, labels


def stratified_split(labels: list[int], train_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Row indices (train, held out): per class, a seeded permutation whose first
    ``train_fraction`` trains, so both parts keep the class balance."""
    generator = torch.Generator().manual_seed(seed)
    by_label = torch.tensor(labels)
    train: list[int] = []
    held: list[int] = []
    for label in sorted(set(labels)):
        rows = torch.nonzero(by_label == label).flatten()
        rows = rows[torch.randperm(len(rows), generator=generator)]
        cut = round(len(rows) * train_fraction)
        train += rows[:cut].tolist()
        held += rows[cut:].tolist()
    return sorted(train), sorted(held)


def _subset(data: Labelled, rows: list[int]) -> Labelled:
    return [data[0][i] for i in rows], [data[1][i] for i in rows]


@register_loader("ag_news")
def load_ag_news(task: TaskSpec, root: Path) -> TaskData:
    test_csv = first_existing(root, ["ag_news/test.csv"])
    if test_csv is None:
        raise missing_error("ag_news", root, ["ag_news/test.csv"], "test.csv")
    train_csv = first_existing(root, ["ag_news/train.csv"])
    if train_csv is not None:
        return text_task(
            task,
            DatasetType.AG_NEWS,
            [train_csv, test_csv],
            lambda: (read_ag_news_csv(train_csv), read_ag_news_csv(test_csv)),
        )

    def stand_in_split() -> tuple[Labelled, Labelled]:
        rows = read_ag_news_csv(test_csv)
        train_rows, test_rows = stratified_split(rows[1], AG_NEWS_STAND_IN_TRAIN, AG_NEWS_STAND_IN_SEED)
        return _subset(rows, train_rows), _subset(rows, test_rows)

    data = text_task(
        task,
        DatasetType.AG_NEWS,
        [test_csv],
        stand_in_split,
        key_extras=(f"stand-in split {AG_NEWS_STAND_IN_TRAIN} seed {AG_NEWS_STAND_IN_SEED}",),
    )
    held = len(data.splits["test"][1])
    trained = sum(len(data.splits[name][1]) for name in ("train", "val") if name in data.splits)
    data.notes.append(
        f"AG News: no train.csv under {root / 'ag_news'}; training on a fixed, class-stratified "
        f"80/20 split of the {trained + held:,} test.csv rows ({trained:,} train / {held:,} test, "
        f"seed {AG_NEWS_STAND_IN_SEED}), not the official 120,000 / 7,600 split"
    )
    return data


# --------------------------------------------------------------------------- IMDB

IMDB_FOLDERS = ["imdb/aclImdb", "imdb"]  # aclImdb/{train,test}/{pos,neg}, or those folders directly
IMDB_ARCHIVES = ["imdb/aclImdb_v1.tar.gz", "imdb/aclImdb_labeled.tar.gz"]


def _review_key(parts: tuple[str, ...]) -> tuple[str, int] | None:
    """(split, label) of a path ending ``<split>/<pos|neg>/<id>_<rating>.txt``, else None."""
    if len(parts) < 3 or not parts[-1].endswith(".txt"):
        return None
    split, label = parts[-3], parts[-2]
    if split not in ("train", "test") or label not in IMDB_LABELS:
        return None
    return split, IMDB_LABELS.index(label)


def _collect(reviews: Iterator[tuple[tuple[str, ...], bytes]]) -> dict[str, Labelled]:
    """Group reviews by split, in sorted (label, file name) order."""
    found: dict[str, list[tuple[int, str, str]]] = {"train": [], "test": []}
    for parts, raw in reviews:
        key = _review_key(parts)
        if key is not None:
            found[key[0]].append((key[1], parts[-1], raw.decode("utf-8", errors="replace")))
    result = {}
    for split, items in found.items():
        items.sort(key=lambda item: (item[0], item[1]))
        result[split] = ([text for _, _, text in items], [label for label, _, _ in items])
    return result


def _folder_reviews(folder: Path) -> Iterator[tuple[tuple[str, ...], bytes]]:
    for split in ("train", "test"):
        for label in IMDB_LABELS:
            for path in sorted((folder / split / label).glob("*.txt")):
                yield path.relative_to(folder).parts, path.read_bytes()


def _archive_reviews(archive: Path) -> Iterator[tuple[tuple[str, ...], bytes]]:
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                parts = Path(member.name).parts
                if member.isfile() and _review_key(parts) is not None:
                    stream = tar.extractfile(member)
                    assert stream is not None
                    yield parts, stream.read()
    except (tarfile.TarError, OSError, EOFError) as err:
        raise DataError(f"{archive}: cannot read the archive ({err}); download it again") from None


def imdb_source(root: Path) -> tuple[list[Path], Callable[[], dict[str, Labelled]]]:
    """The files that identify the reviews' version, and how to read them: the first of
    an aclImdb-style folder and the archives."""
    for rel in IMDB_FOLDERS:
        folder = root / rel
        if (folder / "train" / "pos").is_dir():
            label_dirs = [folder / split / label for split in ("train", "test") for label in IMDB_LABELS]
            return [d for d in label_dirs if d.is_dir()], lambda: _collect(_folder_reviews(folder))  # noqa: B023  returned at once
    archive = first_existing(root, IMDB_ARCHIVES)
    if archive is not None:
        return [archive], lambda: _collect(_archive_reviews(archive))
    raise missing_error("imdb", root, [f"{IMDB_FOLDERS[0]}/", *IMDB_ARCHIVES], "the aclImdb reviews")


def read_imdb(root: Path) -> dict[str, Labelled]:
    """Train and test reviews, each in sorted (label, file name) order."""
    splits = imdb_source(root)[1]()
    for split, (texts, _) in splits.items():
        if not texts:
            raise DataError(f"imdb: no {split} reviews ({split}/pos/*.txt, {split}/neg/*.txt) under {root / 'imdb'}")
    return splits


@register_loader("imdb")
def load_imdb(task: TaskSpec, root: Path) -> TaskData:
    sources, _ = imdb_source(root)

    def read() -> tuple[Labelled, Labelled]:
        splits = read_imdb(root)
        return splits["train"], splits["test"]

    return text_task(task, DatasetType.IMDB, sources, read)
