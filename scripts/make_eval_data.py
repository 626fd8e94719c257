#!/usr/bin/env python3
"""Generate evaluation, example and benchmark data from Python docstrings.

All text comes from the Python standard library that is running this
script: the docstrings of its modules, classes, functions and methods, and
the language-reference help topics that ``pydoc`` shows (``help("with")``),
plus a small hand-written multilingual edge-case set. Output is deterministic for a given
Python build and seed; the generated files are committed so that consumers do
not depend on the interpreter version. Regenerate with the reference
interpreter, Python 3.11::

    python3.11 scripts/make_eval_data.py

Files written (relative to ``--root``):

* ``examples/eval/stdlib_corpus.jsonl``: ``{"id", "text"}`` retrieval corpus.
  Each document is the body of a docstring with its one-line summary
  removed; documents without a matching query act as distractors.
* ``examples/eval/stdlib_queries.jsonl``: ``{"id", "text", "relevant",
  "source"}``; the query text is the summary of one docstring and
  ``relevant`` names the document holding the rest of that docstring.
* ``examples/corpus.jsonl``: about 200 ``{"id", "text", "source"}`` records
  of varied length (one-liners up to about 600 words) for quick starts.
* ``benchmarks/data/mixed_corpus.jsonl``: about 2000 ``{"id", "text"}``
  records of 15 to 230 words (roughly 20 to 300 BERT WordPiece tokens) with a
  spread of lengths, for throughput benchmarks.
* ``tests/data/multilingual.jsonl``: hand-written ``{"id", "text"}`` records
  covering scripts and Unicode edge cases.

A summary of sizes and length histograms is printed at the end.
"""

# ruff: noqa: RUF001 - the multilingual records use look-alike characters on purpose

from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import io
import json
import pkgutil
import random
import re
import sys
import textwrap
import types
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_SEED = 1729
REFERENCE_VERSION = (3, 11)

#: Top-level modules that are skipped: import side effects (opening a
#: browser, printing, writing caches), GUI toolkits whose availability
#: depends on the installation, test suites, and packaging shims.
EXCLUDED_TOP_LEVEL = frozenset(
    {
        "antigravity",
        "this",
        "idlelib",
        "turtle",
        "turtledemo",
        "tkinter",
        "test",
        "lib2to3",
        "distutils",
        "ensurepip",
        "venv",
        "encodings",
        "pydoc_data",
    }
)

# Eval set sizes and limits.
N_QUERIES = 400
N_CORPUS = 2400
MIN_BODY_WORDS = 10
MAX_BODY_WORDS = 300
MIN_SUMMARY_WORDS = 3
MAX_SUMMARY_WORDS = 30
NEAR_DUP_PREFIX_WORDS = 15
MIN_WINDOW_WORDS = 15

# Quick-start corpus: (label, min words, max words, count).
QUICKSTART_BUCKETS = (
    ("one-liner", 3, 20, 50),
    ("short", 21, 80, 60),
    ("medium", 81, 250, 50),
    ("long", 251, 450, 28),
    ("very-long", 451, 650, 12),
)

# Benchmark corpus: (min words, max words, count), 2000 records in total.
BENCH_BUCKETS = (
    (15, 29, 400),
    (30, 59, 450),
    (60, 99, 450),
    (100, 149, 445),
    (150, 230, 255),
)
BENCH_MAX_EST_TOKENS = 270
BENCH_MIN_EST_TOKENS = 22

_SIGNATURE_RE = re.compile(r"^[\w.]+\(.*\)\s*(-+>.*)?$")
_WORD_RE = re.compile(r"\w+|[^\w\s]", re.UNICODE)
_SENTENCE_END_RE = re.compile(r"[.!?](?=\s|$)")


@dataclass(frozen=True)
class DocItem:
    """A parsed docstring.

    Attributes:
        name: Qualified name of the documented object, e.g. ``json.dumps``.
        kind: ``module``, ``class``, ``function``, ``method`` or ``topic``.
        summary: Summary line or sentence, on one line (may be empty).
        body: The rest of the text, paragraphs separated by blank lines
            (may be empty).
    """

    name: str
    kind: str
    summary: str
    body: str

    @property
    def full(self) -> str:
        """Summary and body joined by a blank line."""
        return "\n\n".join(part for part in (self.summary, self.body) if part)


# --------------------------------------------------------------------------
# Docstring harvesting
# --------------------------------------------------------------------------


def _quiet_import(name: str) -> types.ModuleType | None:
    """Import a module with warnings and console output suppressed.

    Args:
        name: Dotted module name.

    Returns:
        The module, or ``None`` if importing it fails for any reason.
    """
    sink = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(sink):
        warnings.simplefilter("ignore")
        with contextlib.redirect_stderr(sink):
            try:
                return importlib.import_module(name)
            except Exception:  # any import failure skips the module
                return None


def _public_name(dotted: str) -> bool:
    """Whether every component of a dotted module name is public and not a test."""
    return not any(part.startswith(("_", "test_")) or part in ("test", "tests") for part in dotted.split("."))


def iter_stdlib_modules() -> Iterator[types.ModuleType]:
    """Yield importable public standard-library modules in sorted name order.

    Packages are expanded into their public submodules.

    Yields:
        Imported modules.
    """
    names = sorted(
        name for name in sys.stdlib_module_names if _public_name(name) and name not in EXCLUDED_TOP_LEVEL
    )
    for top in names:
        stack = [top]
        while stack:
            name = stack.pop(0)
            module = _quiet_import(name)
            if module is None:
                continue
            yield module
            path = getattr(module, "__path__", None)
            if path is None:
                continue
            children = sorted(
                f"{name}.{info.name}" for info in pkgutil.iter_modules(path) if _public_name(info.name)
            )
            stack = children + stack


def _clean_paragraphs(doc: str) -> list[str]:
    """Split a docstring into cleaned paragraphs.

    The docstring is dedented, tabs are expanded, trailing whitespace is
    removed from every line and runs of blank lines separate paragraphs.

    Args:
        doc: Raw docstring.

    Returns:
        Non-empty paragraphs with their internal line breaks kept.
    """
    text = inspect.cleandoc(doc.expandtabs(8))
    paragraphs: list[str] = []
    current: list[str] = []
    for raw_line in text.splitlines():
        # Drop trailing whitespace and line-continuation backslashes.
        line = raw_line.rstrip().removesuffix("\\").rstrip()
        if line.strip():
            current.append(line)
        elif current:
            paragraphs.append("\n".join(current))
            current = []
    if current:
        paragraphs.append("\n".join(current))
    return paragraphs


_ABBREVIATIONS = frozenset({"e.g.", "i.e.", "etc.", "vs.", "cf.", "approx.", "resp."})


def _split_first_sentence(text: str) -> tuple[str, str]:
    """Split single-line text after its first sentence.

    A sentence ends at ``.``, ``!`` or ``?`` followed by whitespace, unless
    the word before is a common abbreviation or a dotted initialism.

    Args:
        text: Text without line breaks.

    Returns:
        ``(first sentence, remainder)``; the remainder may be empty.
    """
    for match in _SENTENCE_END_RE.finditer(text):
        head = text[: match.end()]
        last_word = head.split()[-1]
        if last_word.lower() in _ABBREVIATIONS or re.fullmatch(r"(\w\.)+", last_word):
            continue
        return head, text[match.end() :].strip()
    return text, ""


def parse_docstring(name: str, kind: str, doc: str) -> DocItem | None:
    """Split a docstring into its summary and body.

    Leading signature lines such as ``S.find(sub[, start]) -> int`` (common
    in C-implemented objects) are dropped first. The summary is the first
    line when it ends a sentence, otherwise the first sentence of the first
    paragraph; everything after it forms the body.

    Args:
        name: Qualified object name.
        kind: Object kind.
        doc: Raw docstring.

    Returns:
        The parsed docstring, or ``None`` if nothing but signatures remain.
    """
    paragraphs = _clean_paragraphs(doc)
    while paragraphs:
        lines = paragraphs[0].splitlines()
        while lines and _SIGNATURE_RE.match(lines[0].strip()):
            lines.pop(0)
        if lines:
            paragraphs[0] = textwrap.dedent("\n".join(lines))
            break
        paragraphs.pop(0)
    if not paragraphs:
        return None
    first, *rest = paragraphs
    lines = first.splitlines()
    if _SENTENCE_END_RE.search(lines[0].rstrip()[-1:]):
        summary = " ".join(lines[0].split())
        remainder = textwrap.dedent("\n".join(lines[1:]))
    else:
        summary, remainder = _split_first_sentence(" ".join(first.split()))
    if remainder.strip():
        rest.insert(0, remainder)
    return DocItem(name=name, kind=kind, summary=summary, body="\n\n".join(rest))


def _own_doc(obj: object) -> str | None:
    """Return an object's own docstring, if it is a non-empty string."""
    doc = getattr(obj, "__doc__", None)
    if isinstance(doc, str) and doc.strip():
        return doc
    return None


def _is_dunder(name: str) -> bool:
    """Whether ``name`` is a special ``__name__`` attribute."""
    return name.startswith("__") and name.endswith("__")


def _is_routine(obj: object) -> bool:
    """Whether ``obj`` is a function, builtin or method descriptor."""
    return inspect.isroutine(obj)


def _class_members(cls: type) -> Iterator[tuple[str, Any]]:
    """Yield public routines and properties defined directly on a class.

    Args:
        cls: Class to inspect.

    Yields:
        ``(attribute name, object)`` in sorted attribute order; wrapped
        class and static methods are unwrapped.
    """
    for attr in sorted(vars(cls)):
        if _is_dunder(attr):
            continue
        member = vars(cls)[attr]
        if isinstance(member, classmethod | staticmethod):
            member = member.__func__
        if _is_routine(member) or isinstance(member, property):
            yield attr, member


def harvest_docstrings() -> list[DocItem]:
    """Collect parsed docstrings from the standard library.

    Objects reachable from several modules are reported once, under the
    first module (in sorted order) that exposes them.

    Returns:
        Parsed docstrings in deterministic order.
    """
    items: list[DocItem] = []
    seen_objects: dict[int, str] = {}
    keep_alive: list[Any] = []

    def add(obj: object, name: str, kind: str) -> bool:
        if id(obj) in seen_objects:
            return False
        seen_objects[id(obj)] = name
        keep_alive.append(obj)
        doc = _own_doc(obj)
        if doc is None:
            return True
        parsed = parse_docstring(name, kind, doc)
        if parsed is not None:
            items.append(parsed)
        return True

    modules = list(iter_stdlib_modules())
    for module in modules:
        add(module, module.__name__, "module")

    # Name each object after the most specific module that exposes it: the
    # module that defines it, then the public face of a private module
    # (``_io`` -> ``io``), then a module listing it in ``__all__``, then any.
    def rank(obj: object, attr: str, module: types.ModuleType) -> int:
        owner = getattr(obj, "__module__", None)
        if owner == module.__name__:
            return 0
        if isinstance(owner, str) and owner.lstrip("_") == module.__name__:
            return 1
        if attr in getattr(module, "__all__", ()):
            return 2
        return 3

    for level in range(4):
        for module in modules:
            modname = module.__name__
            for attr in sorted(vars(module)):
                obj = vars(module)[attr]
                if _is_dunder(attr) or isinstance(obj, types.ModuleType):
                    continue
                if rank(obj, attr, module) != level:
                    continue
                if inspect.isclass(obj):
                    if add(obj, f"{modname}.{attr}", "class"):
                        for member_name, member in _class_members(obj):
                            add(member, f"{modname}.{attr}.{member_name}", "method")
                elif _is_routine(obj):
                    add(obj, f"{modname}.{attr}", "function")
    return items


_UNDERLINE_RE = re.compile(r"^\s*([*=\-~^])\1{2,}\s*$")


def harvest_topics() -> list[DocItem]:
    """Collect the help topics that ``pydoc`` shows for keywords and symbols.

    These are plain-text renderings of sections of the language reference
    (``pydoc_data.topics``); heading underlines are removed.

    Returns:
        One item per topic, in sorted key order, with the heading as summary.
    """
    module = _quiet_import("pydoc_data.topics")
    topics = getattr(module, "topics", None)
    if not isinstance(topics, dict):
        return []
    items: list[DocItem] = []
    for key in sorted(topics):
        text = "\n".join(line for line in str(topics[key]).splitlines() if not _UNDERLINE_RE.match(line))
        parsed = parse_docstring(f"pydoc_data.topics:{key}", "topic", text)
        if parsed is not None and parsed.body:
            items.append(parsed)
    return items


def paragraph_windows(sources: list[DocItem], rng: random.Random, low: int, high: int) -> list[DocItem]:
    """Split long texts into runs of consecutive whole paragraphs.

    Each window aims at a random length in ``[low, high]`` words; a single
    paragraph longer than the target is cut at a sentence end. Windows do
    not overlap, and windows of fewer than 15 words are dropped.

    Args:
        sources: Items whose full text (summary and body) is split.
        rng: Random source.
        low: Smallest target length in words.
        high: Largest target length in words.

    Returns:
        Window items named ``<source name>#<window number>``, with an empty
        summary and the window text as body.
    """
    windows: list[DocItem] = []
    for source in sources:
        paragraphs = source.full.split("\n\n")
        i = 0
        number = 0
        while i < len(paragraphs):
            target = rng.randint(low, high)
            chunk: list[str] = []
            used = 0
            while i < len(paragraphs) and used + word_count(paragraphs[i]) <= target:
                chunk.append(paragraphs[i])
                used += word_count(paragraphs[i])
                i += 1
            if not chunk:
                chunk.append(truncate_words(paragraphs[i], target, min_words=low // 2))
                used = word_count(chunk[0])
                i += 1
            if used >= MIN_WINDOW_WORDS:
                windows.append(DocItem(f"{source.name}#{number}", source.kind, "", "\n\n".join(chunk)))
                number += 1
    return windows


# --------------------------------------------------------------------------
# Text helpers
# --------------------------------------------------------------------------


def word_count(text: str) -> int:
    """Number of whitespace-separated words in ``text``."""
    return len(text.split())


def norm_key(text: str) -> str:
    """Case- and whitespace-insensitive key used for exact de-duplication."""
    return " ".join(text.lower().split())


def prefix_key(text: str, n_words: int = NEAR_DUP_PREFIX_WORDS) -> str:
    """Key of the first alphanumeric words, used for near-duplicate detection.

    One-letter words are ignored so that, e.g., docstrings that differ only
    in ``S`` versus ``B`` placeholders collide.

    Args:
        text: Text to key.
        n_words: Number of words to keep.

    Returns:
        Lower-cased prefix key.
    """
    words = [w for w in re.findall(r"[a-z0-9]+", text.lower()) if len(w) > 1]
    return " ".join(words[:n_words])


def estimate_wordpiece_tokens(text: str) -> int:
    """Roughly estimate the BERT WordPiece token count of ``text``.

    Mirrors the BERT basic tokenizer (split on whitespace and punctuation,
    one token per punctuation mark, underscores included) and approximates
    the WordPiece split of long, mixed-case or numeric words. ``[CLS]`` and
    ``[SEP]`` are included. On English docstring text the estimate is
    typically within about 15% of the real count.

    Args:
        text: Input text.

    Returns:
        Estimated token count.
    """
    total = 2
    for token in _WORD_RE.findall(text):
        if not token[0].isalnum() and token[0] != "_":
            total += 1
        elif token.isdigit():
            total += (len(token) + 1) // 2
        else:
            parts = [p for p in token.split("_") if p]
            total += len(token) - sum(len(p) for p in parts)  # underscores
            for part in parts:
                total += 1 + max(0, len(part) - 5) // 4
                if any(ch.isupper() for ch in part[1:]):
                    total += 1
    return total


def truncate_words(text: str, max_words: int, min_words: int = 1) -> str:
    """Cut ``text`` to at most ``max_words`` words, preferring a sentence end.

    Whitespace is normalised to single spaces. The cut is placed after the
    last sentence-ending punctuation that leaves at least ``min_words``
    words; failing that, at a plain word boundary.

    Args:
        text: Input text.
        max_words: Maximum number of words.
        min_words: Minimum words to keep when looking for a sentence end.

    Returns:
        The truncated text.
    """
    words = text.split()
    if len(words) <= max_words:
        return " ".join(words)
    for end in range(max_words, min_words - 1, -1):
        if _SENTENCE_END_RE.search(words[end - 1]):
            return " ".join(words[:end])
    return " ".join(words[:max_words])


def cap_paragraphs(text: str, max_words: int) -> str:
    """Keep whole paragraphs of ``text`` up to ``max_words`` words in total.

    If the first paragraph alone is too long it is cut line by line, then by
    words.

    Args:
        text: Paragraphs separated by blank lines.
        max_words: Word budget.

    Returns:
        The capped text.
    """
    kept: list[str] = []
    used = 0
    for paragraph in text.split("\n\n"):
        n = word_count(paragraph)
        if used + n <= max_words:
            kept.append(paragraph)
            used += n
            continue
        if not kept:
            lines: list[str] = []
            for line in paragraph.splitlines():
                if used + word_count(line) > max_words:
                    break
                lines.append(line)
                used += word_count(line)
            kept.append("\n".join(lines) if lines else truncate_words(paragraph, max_words))
        break
    return "\n\n".join(kept)


def histogram(values: Iterable[int], edges: list[int]) -> list[tuple[str, int]]:
    """Count values in the half-open bins defined by ``edges``.

    Args:
        values: Integers to bin.
        edges: Increasing bin edges; the last bin is open-ended.

    Returns:
        ``(label, count)`` pairs.
    """
    data = list(values)
    bins: list[tuple[str, int]] = []
    for i, low in enumerate(edges):
        high = edges[i + 1] if i + 1 < len(edges) else None
        label = f"{low}-{high - 1}" if high is not None else f"{low}+"
        count = sum(1 for v in data if v >= low and (high is None or v < high))
        bins.append((label, count))
    return bins


def describe(name: str, lengths: list[int], edges: list[int], unit: str) -> str:
    """Format length statistics and a histogram for the summary report."""
    ordered = sorted(lengths)
    median = ordered[len(ordered) // 2] if ordered else 0
    header = (
        f"{name}: n={len(lengths)} {unit} min={ordered[0] if ordered else 0} "
        f"median={median} mean={sum(ordered) / max(1, len(ordered)):.1f} "
        f"max={ordered[-1] if ordered else 0}"
    )
    lines = [header]
    peak = max((c for _, c in histogram(lengths, edges)), default=1) or 1
    for label, count in histogram(lengths, edges):
        bar = "#" * round(40 * count / peak)
        lines.append(f"    {label:>9} {count:5d} {bar}")
    return "\n".join(lines)


#: Characters that ``str.splitlines`` treats as line breaks but JSON leaves
#: unescaped; they are escaped so that every record stays on one line.
_LINE_BREAK_ESCAPES = {ch: f"\\u{ord(ch):04x}" for ch in ("\u0085", "\u2028", "\u2029")}


def write_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> int:
    """Write records as UTF-8 JSON Lines and return the file size in bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="\n") as handle:
        for record in records:
            line = json.dumps(record, ensure_ascii=False)
            for char, escape in _LINE_BREAK_ESCAPES.items():
                line = line.replace(char, escape)
            handle.write(line + "\n")
    return path.stat().st_size


# --------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------


def unique_items(items: list[DocItem]) -> list[DocItem]:
    """Drop items whose full text repeats, exactly or by prefix key."""
    seen_full: set[str] = set()
    seen_prefix: set[str] = set()
    result: list[DocItem] = []
    for item in items:
        full_key = norm_key(item.full)
        pre = prefix_key(item.full, 2 * NEAR_DUP_PREFIX_WORDS)
        if full_key in seen_full or pre in seen_prefix:
            continue
        seen_full.add(full_key)
        seen_prefix.add(pre)
        result.append(item)
    return result


def _is_public(name: str) -> bool:
    """Whether no component of a qualified name starts with an underscore."""
    return not any(part.startswith("_") for part in name.split("."))


def _is_prose(text: str) -> bool:
    """Whether ``text`` reads as prose rather than tables, grammar or code.

    Args:
        text: Text to check.

    Returns:
        ``True`` if at least 80% of its non-space characters are letters and
        it contains no table borders or grammar rules.
    """
    chars = [ch for ch in text if not ch.isspace()]
    if not chars:
        return False
    letters = sum(ch.isalpha() for ch in chars)
    if letters < 0.8 * len(chars):
        return False
    return not any(marker in text for marker in ("+--", "===", "::=", ">>>"))


def build_retrieval_set(
    items: list[DocItem], rng: random.Random
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Build the summary-to-body retrieval corpus and queries.

    Queries are the summaries of public objects' docstrings; documents are
    docstring bodies, unique both exactly and by their opening words, so
    that each query has exactly one correct document. Bodies of docstrings
    that are not queried serve as distractors.

    Args:
        items: Harvested docstrings.
        rng: Random source.

    Returns:
        ``(corpus records, query records)``.
    """
    body_counts: dict[str, int] = {}
    prefix_counts: dict[str, int] = {}
    summary_counts: dict[str, int] = {}
    for item in items:
        if item.body:
            body_counts[norm_key(item.body)] = body_counts.get(norm_key(item.body), 0) + 1
            key = prefix_key(item.body)
            prefix_counts[key] = prefix_counts.get(key, 0) + 1
        summary_counts[norm_key(item.summary)] = summary_counts.get(norm_key(item.summary), 0) + 1

    # Every body used must be unique, exactly and by its opening words, so a
    # query has exactly one correct answer.
    usable = [
        item
        for item in items
        if word_count(item.body) >= MIN_BODY_WORDS
        and body_counts[norm_key(item.body)] == 1
        and prefix_counts[prefix_key(item.body)] == 1
    ]
    queryable = [
        item
        for item in usable
        if summary_counts[norm_key(item.summary)] == 1
        and MIN_SUMMARY_WORDS <= word_count(item.summary) <= MAX_SUMMARY_WORDS
        and not item.summary.endswith(":")
        and ">>>" not in item.summary
        and norm_key(item.summary) not in norm_key(item.body)
        and _is_public(item.name)
    ]
    rng.shuffle(queryable)
    chosen = queryable[:N_QUERIES]
    chosen_names = {item.name for item in chosen}
    distractors = [item for item in usable if item.name not in chosen_names]
    rng.shuffle(distractors)
    corpus_items = chosen + distractors[: max(0, N_CORPUS - len(chosen))]
    rng.shuffle(corpus_items)

    doc_id_of: dict[str, str] = {}
    corpus: list[dict[str, Any]] = []
    for position, item in enumerate(corpus_items):
        if item.name in doc_id_of:
            raise RuntimeError(f"two documents are named {item.name!r}")
        doc_id = f"doc{position:05d}"
        doc_id_of[item.name] = doc_id
        corpus.append({"id": doc_id, "text": cap_paragraphs(item.body, MAX_BODY_WORDS)})
    queries = [
        {
            "id": f"q{position:04d}",
            "text": item.summary,
            "relevant": [doc_id_of[item.name]],
            "source": item.name,
        }
        for position, item in enumerate(chosen)
    ]
    return corpus, queries


def build_quickstart(
    items: list[DocItem], windows: list[DocItem], rng: random.Random
) -> list[dict[str, Any]]:
    """Build the small quick-start corpus of varied lengths.

    One-liners are docstring summaries; other records are whole docstrings
    (summary and body) or paragraph windows of the ``pydoc`` help topics,
    which supply most of the long texts. Only public objects and prose-like
    texts (no tables, little markup) are used.

    Args:
        items: De-duplicated docstrings.
        windows: Help-topic windows from :func:`paragraph_windows`.
        rng: Random source.

    Returns:
        Records with ``id``, ``text`` and ``source``.
    """
    pool = [item for item in items + windows if _is_public(item.name) and _is_prose(item.full)]
    rng.shuffle(pool)
    used: set[str] = set()
    picked: list[tuple[DocItem, str]] = []
    for label, low, high, count in QUICKSTART_BUCKETS:
        found = 0
        for item in pool:
            if found == count:
                break
            if item.name in used:
                continue
            text = item.summary if label == "one-liner" else item.full
            if not low <= word_count(text) <= high:
                continue
            used.add(item.name)
            picked.append((item, text))
            found += 1
    rng.shuffle(picked)
    return [
        {
            "id": f"ex{position:04d}",
            "text": text,
            "source": f"python-stdlib:{item.name}",
        }
        for position, (item, text) in enumerate(picked)
    ]


def _fit_benchmark_text(text: str, low: int, high: int) -> str | None:
    """Trim ``text`` so its estimated token count fits the benchmark range.

    Args:
        text: Whitespace-normalised text.
        low: Minimum words.
        high: Maximum words.

    Returns:
        The (possibly shortened) text, or ``None`` if it no longer fits
        ``[low, high]`` words or the token range.
    """
    words = text.split()
    while len(words) > low and estimate_wordpiece_tokens(" ".join(words)) > BENCH_MAX_EST_TOKENS:
        words = words[:-3]
    text = " ".join(words)
    tokens = estimate_wordpiece_tokens(text)
    if not low <= len(words) <= high:
        return None
    if not BENCH_MIN_EST_TOKENS <= tokens <= BENCH_MAX_EST_TOKENS:
        return None
    return text


def build_benchmark(items: list[DocItem], windows: list[DocItem], rng: random.Random) -> list[dict[str, Any]]:
    """Build the mixed-length benchmark corpus.

    Texts are whole docstrings and paragraph windows with whitespace
    normalised to single spaces. A first pass assigns texts whose natural
    length falls in a length bucket that still needs records; a second pass
    cuts longer unused texts at a sentence end (or word boundary) to a random
    length inside the longest bucket that still needs records. Texts whose
    estimated token count exceeds ``BENCH_MAX_EST_TOKENS`` are shortened; the
    margin below 300 absorbs the estimate's error.

    Args:
        items: De-duplicated docstrings short enough to use whole.
        windows: Windows of longer docstrings and of the help topics, from
            :func:`paragraph_windows`.
        rng: Random source.

    Returns:
        Records with ``id`` and ``text``.
    """
    pool = [
        " ".join(item.full.split())
        for item in items + windows
        if word_count(item.full) >= BENCH_BUCKETS[0][0]
    ]
    rng.shuffle(pool)
    remaining = [count for _, _, count in BENCH_BUCKETS]
    seen: set[str] = set()
    texts: list[str] = []
    leftovers: list[str] = []

    def accept(text: str | None, bucket: int) -> bool:
        if text is None or norm_key(text) in seen:
            return False
        seen.add(norm_key(text))
        remaining[bucket] -= 1
        texts.append(text)
        return True

    for full in pool:
        n = word_count(full)
        for bucket, (low, high, _) in enumerate(BENCH_BUCKETS):
            if low <= n <= high:
                if not (remaining[bucket] and accept(_fit_benchmark_text(full, low, high), bucket)):
                    leftovers.append(full)
                break
        else:
            leftovers.append(full)

    for full in leftovers:
        n = word_count(full)
        open_buckets = [
            bucket for bucket, (low, _, _) in enumerate(BENCH_BUCKETS) if remaining[bucket] and n > low
        ]
        if not open_buckets:
            continue
        bucket = open_buckets[-1]
        low, high, _ = BENCH_BUCKETS[bucket]
        cut = truncate_words(full, rng.randint(low, min(high, n - 1)), min_words=low)
        accept(_fit_benchmark_text(cut, low, high), bucket)

    rng.shuffle(texts)
    return [{"id": f"b{position:05d}", "text": text} for position, text in enumerate(texts)]


#: Hand-written multilingual and Unicode edge cases: ``(id, text)``.
MULTILINGUAL: tuple[tuple[str, str], ...] = (
    ("en-plain", "The quick brown fox jumps over the lazy dog."),
    ("en-accents", "Café, naïve, façade, coöperate, résumé and jalapeño."),
    ("fr", "Le chat dort sur le canapé pendant que la pluie tombe."),
    ("de", "Straße, Größe und Übermäßigkeit sind schwierige Wörter."),
    ("de-compound", "Donaudampfschifffahrtsgesellschaftskapitän"),
    ("es", "¿Dónde está la biblioteca? ¡Está al lado del museo!"),
    ("pt", "A ação foi concluída com êxito às três horas."),
    ("it", "Perché non andiamo al mare questo fine settimana?"),
    ("pl", "Zażółć gęślą jaźń."),
    ("cs", "Příliš žluťoučký kůň úpěl ďábelské ódy."),
    ("tr", "İstanbul'da ılık bir akşam; ağaçlar çiçek açmış."),
    ("vi", "Tiếng Việt có nhiều dấu thanh điệu."),
    ("ru", "Съешь же ещё этих мягких французских булок, да выпей чаю."),
    ("uk", "Ґанок, їжак і європейський ґудзик."),
    ("el", "Γεια σου κόσμε! Η γλώσσα είναι όμορφη."),
    ("ar", "مرحبا بالعالم. هذه جملة باللغة العربية."),
    ("he", "שלום עולם. זה משפט בעברית."),
    ("fa", "سلام دنیا، امروز هوا خوب است."),
    ("mixed-rtl-ltr", "The word שלום means peace, and سلام does too."),
    ("hi", "नमस्ते दुनिया। यह एक हिंदी वाक्य है।"),
    ("bn", "আমি বাংলায় গান গাই।"),
    ("ta", "வணக்கம் உலகம்"),
    ("th", "สวัสดีชาวโลก ภาษาไทยไม่มีการเว้นวรรคระหว่างคำ"),
    ("ka", "გამარჯობა მსოფლიო"),
    ("hy", "Բարեւ աշխարհ"),
    ("am", "ሰላም ለዓለም"),
    ("zh-hans", "你好，世界！今天天气很好。"),
    ("zh-hant", "繁體中文的句子，包含標點符號。"),
    ("ja", "こんにちは世界。カタカナとひらがなと漢字を混ぜた文です。"),
    ("ko", "안녕하세요, 세계! 한국어 문장입니다."),
    ("cjk-latin-mix", "Python 3.11 は高速です and 한국어 also works 很好."),
    ("emoji-single", "I love pizza 🍕"),
    ("emoji-zwj-family", "Family: 👨‍👩‍👧‍👦"),
    ("emoji-skin-tone", "Thumbs up 👍🏽 and wave 👋🏿"),
    ("emoji-flags", "Flags: 🇯🇵 🇧🇷 🇺🇦 🏳️‍🌈"),
    ("emoji-only", "🎉🎉🎉🔥💯"),
    ("emoji-keycap", "Press 1️⃣ then #️⃣"),
    ("combining-marks", "e\u0301 vs \u00e9 and n\u0303 vs \u00f1"),
    ("zalgo", "Z\u0351\u036b\u0343a\u0310\u0352l\u0357g\u034bo\u0344\u0346"),
    ("zero-width-space", "zero\u200bwidth\u200bspace between words"),
    ("zwnj-persian", "می\u200cخواهم"),
    ("zwj-devanagari", "क्\u200dष"),
    ("bom-prefix", "\ufeffText that starts with a byte order mark."),
    ("nbsp", "Price:\u00a0100\u00a0€ and 50\u202f%"),
    ("soft-hyphen", "hyphen\u00adation is invisible"),
    ("rtl-override", "abc\u202edcba\u202c xyz"),
    ("fullwidth", "ＦＵＬＬＷＩＤＴＨ　ｔｅｘｔ　１２３"),
    ("ligatures", "ﬁnancial ﬂow ﬀ"),
    ("math", "∀x ∈ ℝ: x² ≥ 0, ∑ᵢ aᵢ ≈ ∫ f(x) dx"),
    ("long-word", "a" * 300),
    ("long-token-no-spaces", "supercalifragilisticexpialidocious" * 8),
    ("punctuation-only", " ... !!! ??? ;;; --- ,,, "),
    ("whitespace-punct", "\t \n  .  \n\t,\u3000!"),
    ("single-char", "x"),
    ("digits", "3.14159265358979323846264338327950288419716939937510"),
    (
        "code-python",
        'def greet(name: str) -> str:\n    return f"Hello, {name}!"\n',
    ),
    ("code-sql", "SELECT id, name FROM users WHERE age >= 21 ORDER BY name;"),
    ("code-json", '{"key": [1, 2, {"nested": null}], "ok": true}'),
    (
        "url",
        "See https://example.com/path/to/page?query=1&lang=en#section for details.",
    ),
    (
        "email-path",
        "Contact admin@example.org or open C:\\Users\\me\\file.txt and /tmp/a b.log",
    ),
    ("html", '<p class="note">Hello &amp; welcome</p>'),
    ("hashtags-mentions", "@alice check #MachineLearning and #NLP2024!!"),
    ("repeated", "na " * 40 + "Batman!"),
    ("newlines", "line one\nline two\r\nline three\n\n\nline six"),
)


def multilingual_records() -> list[dict[str, Any]]:
    """Return the hand-written multilingual records."""
    ids = [ident for ident, _ in MULTILINGUAL]
    if len(set(ids)) != len(ids):
        raise RuntimeError("duplicate id in MULTILINGUAL")
    return [{"id": ident, "text": text} for ident, text in MULTILINGUAL]


# --------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Generate all data files and print a summary.

    Args:
        argv: Command-line arguments (defaults to ``sys.argv[1:]``).

    Returns:
        Process exit status.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--root",
        type=Path,
        default=Path(__file__).resolve().parent.parent,
        help="repository root to write into (default: this script's repository)",
    )
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="random seed")
    args = parser.parse_args(argv)
    root: Path = args.root

    if sys.version_info[:2] != REFERENCE_VERSION:
        print(
            f"warning: running Python {sys.version_info[0]}.{sys.version_info[1]}; "
            f"committed data was generated with "
            f"{REFERENCE_VERSION[0]}.{REFERENCE_VERSION[1]} and will differ",
            file=sys.stderr,
        )

    # Keep local files (this script's folder, the working directory) from
    # shadowing standard-library modules.
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if p and Path(p).resolve() != here]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        harvested = harvest_docstrings()
        topics = harvest_topics()
    items = unique_items(harvested)

    corpus, queries = build_retrieval_set(items, random.Random(args.seed))
    quickstart = build_quickstart(
        items,
        paragraph_windows(topics, random.Random(args.seed + 1), 260, 640),
        random.Random(args.seed + 2),
    )
    max_bench_words = BENCH_BUCKETS[-1][1]
    bench = build_benchmark(
        [item for item in items if word_count(item.full) <= max_bench_words],
        paragraph_windows(
            [item for item in items if word_count(item.full) > max_bench_words] + topics,
            random.Random(args.seed + 3),
            80,
            max_bench_words,
        ),
        random.Random(args.seed + 4),
    )
    multilingual = multilingual_records()

    outputs = {
        "examples/eval/stdlib_corpus.jsonl": corpus,
        "examples/eval/stdlib_queries.jsonl": queries,
        "examples/corpus.jsonl": quickstart,
        "benchmarks/data/mixed_corpus.jsonl": bench,
        "tests/data/multilingual.jsonl": multilingual,
    }
    print(f"Python {sys.version.split()[0]}, seed {args.seed}")
    print(f"harvested docstrings: {len(harvested)}, after de-duplication: {len(items)}")
    print(f"help topics: {len(topics)}")
    for rel, records in outputs.items():
        size = write_jsonl(root / rel, records)
        print(f"{rel}: {len(records)} records, {size / 1024:.1f} KiB")

    word_edges = [0, 15, 30, 60, 100, 160, 231, 300, 450]
    n_distractors = len(corpus) - len(queries)
    print(f"\nretrieval set: {len(queries)} queries, {len(corpus)} docs ({n_distractors} distractors)")
    print(
        describe(
            "  corpus words",
            [word_count(r["text"]) for r in corpus],
            word_edges,
            "words",
        )
    )
    print(
        describe(
            "  query words",
            [word_count(r["text"]) for r in queries],
            [0, 5, 10, 15, 20, 30],
            "words",
        )
    )
    print(
        describe(
            "\nquick-start corpus words",
            [word_count(r["text"]) for r in quickstart],
            [0, 21, 81, 251, 451],
            "words",
        )
    )
    print(
        describe(
            "\nbenchmark corpus words",
            [word_count(r["text"]) for r in bench],
            [15, 30, 60, 100, 150, 231],
            "words",
        )
    )
    print(
        describe(
            "benchmark corpus estimated WordPiece tokens",
            [estimate_wordpiece_tokens(r["text"]) for r in bench],
            [0, 20, 50, 100, 150, 200, 250, 301],
            "tokens",
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
