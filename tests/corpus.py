"""A large, varied corpus of real text for tokenizer tests and benchmarks, gathered from files the OS and Python
install bring with them, plus generated Unicode (scripts, emoji, whitespace, controls) and adversarial documents.

Deterministic: paths are sorted, samples are drawn with fixed seeds, sizes are capped in bytes. Every source is
optional (a missing folder gives no documents), so a caller that needs a real corpus must check its size; tests
assert ``total_bytes(docs) > 2 MB`` and ``len(docs) > 500``.

Real text: licenses (/usr/share/common-licenses), Python sources (stdlib), C headers (/usr/include), Debian
changelogs (/usr/share/doc/*/changelog*.gz), translations in ~200 languages (gettext catalogs
/usr/share/locale/*/LC_MESSAGES/*.mo), translated man pages (/usr/share/man/<lang>/), glibc locale definitions
(/usr/share/i18n/locales), X11 Compose tables (symbols), CJK text from Python's test data, and emoji from the
``rich`` emoji table in the pip wheel Python bundles.

    from corpus import gather, total_bytes     # tests/ is on sys.path under pytest (rootdir conftest)
    docs = gather()                            # list[Document]; gather(scale=0.25) for a quarter of the real text
    docs[0].kind, docs[0].name, docs[0].text
"""

from __future__ import annotations

import functools
import glob
import gettext
import gzip
import os
import random
import sysconfig
import unicodedata
import zipfile
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

SEED = 1234
STDLIB = sysconfig.get_paths()["stdlib"]


@dataclass(frozen=True)
class Document:
    kind: str  # the source, e.g. "license", "gettext", "emoji"
    name: str  # a path (with a chunk number where a file was cut) or a description
    text: str

    @property
    def nbytes(self) -> int:
        return len(self.text.encode("utf-8", "surrogatepass"))


def total_bytes(docs: Iterable[Document]) -> int:
    return sum(d.nbytes for d in docs)


# -- reading files -----------------------------------------------------------------------------------------------------

def _read(path: str) -> str | None:
    """A file as text (gzip decompressed; bytes that are not UTF-8 become U+FFFD), or None if unreadable."""
    try:
        data = gzip.open(path).read() if path.endswith(".gz") else open(path, "rb").read()
    except (OSError, EOFError):
        return None
    return data.decode("utf-8", errors="replace")


def _chunks(text: str, size: int) -> list[str]:
    """Cut ``text`` into pieces of about ``size`` characters, at line ends where there is one."""
    out = []
    while len(text) > size:
        cut = text.rfind("\n", 0, size) + 1 or size
        out.append(text[:cut])
        text = text[cut:]
    return out + [text] if text else out


def _files(pattern: str, sample: bool = True) -> list[str]:
    paths = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
    if sample:
        random.Random(SEED).shuffle(paths)  # spread over the whole tree, not the first letters of the alphabet
    return paths


def _from_files(paths: Iterable[str], chunk: int, max_chunks: int = 1) -> Iterator[tuple[str, str]]:
    for path in paths:
        text = _read(path)
        if text and text.strip():
            for i, part in enumerate(_chunks(text, chunk)[:max_chunks]):
                yield (path if i == 0 else f"{path}#{i}"), part


# -- real text ---------------------------------------------------------------------------------------------------------

def licenses() -> Iterator[tuple[str, str]]:
    return _from_files(_files("/usr/share/common-licenses/*", sample=False), 64_000)


def python_sources() -> Iterator[tuple[str, str]]:
    paths = [p for p in _files(f"{STDLIB}/**/*.py") if "site-packages" not in p]
    return _from_files(paths, 24_000)


def python_unicode() -> Iterator[tuple[str, str]]:
    """Python's test data and the stdlib files that hold the most non-ASCII text (CJK, accents, symbols)."""
    yield from _from_files(_files(f"{STDLIB}/test/cjkencodings/*-utf8.txt", sample=False), 24_000)
    names = ["pydoc_data/topics.py", "idlelib/help.html", "test/test_unicode.py", "test/test_str.py",
             "test/test_email/test_email.py", "test/test_email/test_contentmanager.py", "test/test_traceback.py",
             "test/test_peg_generator/test_pegen.py", "test/xmltestdata/expat224_utf8_bug.xml", "test/test_re.py",
             "test/test_codecs.py", "test/test_unicodedata.py", "test/test_ucn.py", "test/test_fstring.py",
             "test/test_tokenize.py", "test/test_source_encoding.py", "test/test_utf8source.py",
             "test/exception_hierarchy.txt"]
    for name, text in _from_files([f"{STDLIB}/{n}" for n in names], 24_000, max_chunks=100):
        if sum(ord(c) > 127 for c in text) > 20:
            yield name, text


def c_headers() -> Iterator[tuple[str, str]]:
    return _from_files(_files("/usr/include/**/*.h"), 16_000)


def changelogs() -> Iterator[tuple[str, str]]:
    return _from_files(_files("/usr/share/doc/*/changelog*.gz"), 8_000)


def gettext_catalogs() -> Iterator[tuple[str, str]]:
    """Translated messages (msgstr) from compiled catalogs, round-robin over languages."""
    by_language: dict[str, list[str]] = {}
    for path in _files("/usr/share/locale/*/LC_MESSAGES/*.mo"):
        by_language.setdefault(path.split("/")[4], []).append(path)
    queues = [by_language[lang] for lang in sorted(by_language)]
    while any(queues):
        for queue in queues:
            if not queue:
                continue
            path = queue.pop()
            try:
                with open(path, "rb") as f:
                    catalog = gettext.GNUTranslations(f)._catalog
            except (OSError, UnicodeDecodeError, LookupError, ValueError):
                continue
            lines = [f"{v}\n" for k, v in catalog.items() if isinstance(k, str) and k and v]  # the translations
            if lines:
                yield path, "".join(lines)[:4_000]


def man_pages() -> Iterator[tuple[str, str]]:
    """Translated man pages (roff source), round-robin over languages."""
    languages = sorted(d for d in glob.glob("/usr/share/man/*") if not os.path.basename(d).startswith("man"))
    queues = [_files(f"{d}/man*/*.gz") for d in languages]
    while any(queues):
        for queue in queues:
            if queue:
                yield from _from_files([queue.pop()], 12_000)


def locale_definitions() -> Iterator[tuple[str, str]]:
    return _from_files(_files("/usr/share/i18n/locales/*"), 12_000)


def compose_tables() -> Iterator[tuple[str, str]]:
    """X11 Compose tables of UTF-8 locales: key sequences -> symbols, arrows, letters with diacritics."""
    for path in _files("/usr/share/X11/locale/*.UTF-8/Compose", sample=False):
        yield from _from_files([path], 16_000, max_chunks=40)


def emoji_table() -> Iterator[tuple[str, str]]:
    """rich's emoji table (name -> emoji, as Python source) from the pip wheel that ensurepip bundles."""
    for wheel in sorted(glob.glob(f"{STDLIB}/ensurepip/_bundled/pip-*.whl")):
        try:
            text = zipfile.ZipFile(wheel).read("pip/_vendor/rich/_emoji_codes.py").decode("utf-8")
        except (OSError, KeyError, zipfile.BadZipFile):
            continue
        for i, part in enumerate(_chunks(text, 16_000)):
            yield f"{wheel}!pip/_vendor/rich/_emoji_codes.py#{i}", part


# (kind, source, budget in UTF-8 bytes at scale 1)
REAL_SOURCES: list[tuple[str, Callable[[], Iterator[tuple[str, str]]], int]] = [
    ("license", licenses, 300_000),
    ("python", python_sources, 500_000),
    ("python-unicode", python_unicode, 300_000),
    ("c-header", c_headers, 350_000),
    ("changelog", changelogs, 450_000),
    ("gettext", gettext_catalogs, 1_200_000),
    ("man", man_pages, 300_000),
    ("locale", locale_definitions, 150_000),
    ("compose", compose_tables, 250_000),
    ("emoji-table", emoji_table, 150_000),
]


# -- generated text ----------------------------------------------------------------------------------------------------

# Every character that is whitespace to someone: Unicode White_Space, str.isspace, and look-alikes that are not.
WHITESPACE = (" \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f\x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007"
              "\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000\u180e\u200b\u200c\u200d\u2060\ufeff")
ZWJ, VS16, KEYCAP = "\u200d", "\ufe0f", "\u20e3"
SKIN_TONES = [chr(c) for c in range(0x1F3FB, 0x1F400)]


@functools.lru_cache(maxsize=1)
def _unicode_table() -> dict[str, list[str]]:
    """Assigned characters (Python's unicodedata), grouped by general category, and letters/marks/digits by script
    (the first word of the character's name: LATIN, CYRILLIC, CJK, ...), keyed "script:LATIN:L"."""
    table: dict[str, list[str]] = {}
    for cp in [*range(0x30000), *range(0xE0000, 0xE0200)]:
        c = chr(cp)
        cat = unicodedata.category(c)
        if cat == "Cs":
            continue
        table.setdefault(cat, []).append(c)
        if cat[0] in "LMN":
            name = unicodedata.name(c, "")
            if name:
                table.setdefault(f"script:{name.split()[0]}:{cat[0]}", []).append(c)
    return table


def _emoji() -> list[str]:
    return [c for c in _unicode_table()["So"] if 0x1F000 <= ord(c) < 0x1FB00 or 0x2600 <= ord(c) < 0x27C0]


def script_samples() -> Iterator[tuple[str, str]]:
    """For each script with letters: words made of its letters (with its combining marks) and its digits."""
    table, rng = _unicode_table(), random.Random(SEED)
    scripts = sorted({k.split(":")[1] for k in table if k.startswith("script:") and k.endswith(":L")})
    for script in scripts:
        letters = table[f"script:{script}:L"]
        if len(letters) < 10:
            continue
        marks, digits = table.get(f"script:{script}:M", []), table.get(f"script:{script}:N", [])
        words = []
        for _ in range(200):
            word = "".join(rng.choice(letters) + (rng.choice(marks) if marks and rng.random() < 0.2 else "")
                           for _ in range(rng.randint(1, 9)))
            if digits and rng.random() < 0.1:
                word = "".join(rng.choice(digits) for _ in range(rng.randint(1, 6)))
            words.append(word + rng.choice(["", "", "", ",", ".", "\n", "'s", "!"]))
        yield f"unicode script {script}", " ".join(words)


def category_samples() -> Iterator[tuple[str, str]]:
    """For each general category: up to 3000 of its characters, in runs between spaces, letters and digits."""
    table, rng = _unicode_table(), random.Random(SEED + 1)
    categories = sorted(k for k in table if ":" not in k)
    for cat in categories:
        chars = table[cat] if len(table[cat]) <= 3000 else rng.sample(table[cat], 3000)
        out, i = [], 0
        while i < len(chars):
            n = rng.randint(1, 8)
            out.append("".join(chars[i : i + n]) + rng.choice([" ", "", "a", "1", "\n", " x ", "  "]))
            i += n
        yield f"unicode category {cat}", "".join(out)
    # Unassigned in Python's Unicode version (some are assigned in later ones), noncharacters, private use.
    unassigned = [chr(c) for c in range(0x300, 0x30000) if unicodedata.category(chr(c)) == "Cn"]
    yield "unicode unassigned (Cn) sample", " ".join("".join(rng.sample(unassigned, 4)) for _ in range(600))
    nonchars = [chr(c) for c in range(0xFDD0, 0xFDF0)]
    nonchars += [chr(plane * 0x10000 + 0xFFFE + i) for plane in range(17) for i in (0, 1)]
    yield "unicode noncharacters", " a".join(nonchars) + "".join(nonchars)
    private = (chr(rng.choice([0xF0000, 0x100000]) + rng.randrange(0xFFFE)) * rng.randint(1, 5) for _ in range(500))
    yield "unicode private use, planes 15-16", " ".join(private)
    for k in range(3):
        points = [rng.randrange(0x110000) for _ in range(4000)]
        yield f"unicode random code points #{k}", "".join(chr(c) for c in points if not 0xD800 <= c < 0xE000)
    yield "latin-1, all 256 code points", "".join(rng.sample([chr(i) for i in range(256)] * 20, 256 * 20))


def emoji_samples() -> Iterator[tuple[str, str]]:
    rng, emoji = random.Random(SEED + 2), _emoji()
    people = [c for c in emoji if any(w in unicodedata.name(c) for w in ("HAND", "PERSON", "MAN", "WOMAN", "FACE"))]
    runs = " ".join("".join(rng.sample(emoji, rng.randint(1, 5))) for _ in range(1500))
    yield "emoji runs (unicodedata So in emoji blocks)", runs
    yield "emoji between words", " ".join(rng.choice(["the", "cat", "x", "1", ",", "'s"]) + rng.choice(emoji)
                                           for _ in range(2000))
    yield "emoji skin tones", " ".join(p + t for p in people for t in SKIN_TONES[: 1 + len(p) % 5])
    family = ["\U0001F468", "\U0001F469", "\U0001F467", "\U0001F466"]
    objects = ["\U0001F4BB", "\U0001F527", "\U0001F680", "\U0001F52C", "\U0001F3A8", "\u2695\ufe0f", "\U0001F9B0"]
    zwj = []
    for _ in range(1500):
        members = [rng.choice(family) + (rng.choice(SKIN_TONES) if rng.random() < 0.3 else "")
                   for _ in range(rng.randint(2, 4))]
        zwj.append(ZWJ.join(members) if rng.random() < 0.7 else members[0] + ZWJ + rng.choice(objects))
    yield "emoji ZWJ sequences", " ".join(zwj) + " \u2764\ufe0f\u200d\U0001F525 \U0001F3F3\ufe0f\u200d\U0001F308"
    letters = [chr(0x1F1E6 + i) for i in range(26)]
    yield "emoji flags (all regional-indicator pairs)", " ".join(a + b for a in letters for b in letters)
    keycaps = [c + VS16 + KEYCAP for c in "0123456789#*"] + [c + KEYCAP for c in "0123456789#*"]
    tags = ["\U0001F3F4" + "".join(chr(0xE0000 + ord(c)) for c in code) + "\U000E007F"
            for code in ("gbeng", "gbsct", "gbwls", "usca", "frbre")]
    variation = [c + v for c in "\u263a\u2764\u2600\u2601\u260e\u2702\u2708\u2709\u270f\u2712"
                 for v in ("", "\ufe0e", VS16)]
    yield "emoji keycaps, tag flags, variation selectors", " ".join(keycaps + tags + variation) * 10
    yield "emoji with no spaces", "".join(rng.choice(emoji) for _ in range(5000))


def whitespace_samples() -> Iterator[tuple[str, str]]:
    rng = random.Random(SEED + 3)
    for w in WHITESPACE:
        parts = [f"a{w}b {w}{w}c{w}{w}{w}1{w}!{w}\n{w} {w}"]
        parts += [w * n + rng.choice(["x", "1", "!", "'s", " ", "\n", "😀"]) for n in range(1, 40)]
        yield f"whitespace U+{ord(w):04X} runs", "".join(parts) + w * 7
    words = ["a", "word", "1", "!", "'t", "é", "中", "😀", ""]
    yield "whitespace random mixes", "".join(rng.choice(words) + "".join(rng.choices(WHITESPACE, k=rng.randint(0, 6)))
                                             for _ in range(5000))
    code = _read(f"{STDLIB}/textwrap.py") or "def f(x):\n    return x\n" * 100
    yield "code, CRLF line ends", code.replace("\n", "\r\n")
    yield "code, CR line ends", code.replace("\n", "\r")
    yield "code, tabs for indentation", code.replace("    ", "\t")
    yield "code, trailing spaces", code.replace("\n", "   \n")
    yield "blank lines", "".join(rng.choice(["\n", "\r\n", " \n", "\t\n", "\n\n\n\n"]) * rng.randint(1, 30) + "x"
                                 for _ in range(300))
    for path in _files("/usr/share/common-licenses/*", sample=False)[:8]:
        text = _read(path)
        if text:
            yield f"{path} (CRLF)", text.replace("\n", "\r\n")


def control_samples() -> Iterator[tuple[str, str]]:
    rng = random.Random(SEED + 4)
    controls = [chr(c) for c in [*range(0x20), 0x7F, *range(0x80, 0xA0)]]
    yield "controls, each between words", " ".join(f"w{c}x {c}{c}{c} y{c}" for c in controls)
    yield "controls, random with text", "".join(rng.choice(controls + ["ab", " ", "é", "1"]) for _ in range(8000))
    yield "terminal escapes", "".join(f"\x1b[{rng.randint(0, 107)}m{rng.choice(['ok', 'FAIL', ' ', ''])}\x1b[0m"
                                      for _ in range(2000))


def adversarial_samples() -> Iterator[tuple[str, str]]:
    rng = random.Random(SEED + 5)
    yield "'a' * 100_000", "a" * 100_000
    yield "'😀' * 20_000", "\U0001F600" * 20_000
    yield "' ' * 50_000 + 'a'", " " * 50_000 + "a"
    yield "'\\n' * 50_000", "\n" * 50_000
    yield "'1' * 30_000", "1" * 30_000
    yield "'!' * 30_000", "!" * 30_000
    yield "'ab' * 20_000", "ab" * 20_000
    yield "'a' + U+0301 * 10_000", "a" + "\u0301" * 10_000
    yield "stacked combining marks", "".join(rng.choice("aeiouxyz") + "".join(chr(rng.randrange(0x300, 0x370))
                                                                              for _ in range(rng.randint(1, 40)))
                                             for _ in range(1000))
    yield "ZWJ chain", (ZWJ.join(["\U0001F468"] * 2000))
    yield "ZWJ and ZWNJ between letters", "".join(rng.choice("abcابپक्षক") + rng.choice([ZWJ, "\u200c", ""])
                                                  for _ in range(5000))
    mixed = ["hello", "привет", "γειά", "שלום", "مرحبا", "नमस्ते", "你好", "こんにちは", "안녕", "สวัสดี", "ሰላም", "𝔥𝔢𝔩𝔩𝔬"]
    yield "mixed scripts, no spaces", "".join(rng.choice(mixed) for _ in range(3000))
    yield "mixed scripts, spaces", " ".join(rng.choice(mixed) + rng.choice(["", "123", "'s", "😀", "\u0301"])
                                            for _ in range(3000))
    bidi = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f"
    yield "bidi controls", "".join(rng.choice(mixed[:6]) + rng.choice(bidi) for _ in range(2000))
    contractions = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'LL", "'", "''", "’s", "don't", "I'M", "'sx",
                    "x's", "'s's"]
    yield "contractions", " ".join(rng.choice(contractions) for _ in range(4000))
    yield "special token text", ("<|endoftext|>a<|endoftext|><|endoftext|> <|endoftext|>\n<|endoftext| <|endoftext"
                                 "|> <|endoftext|>x <|ENDOFTEXT|> <|endoftext|>😀 ") * 50
    yield "numbers", " ".join(rng.choice([str(rng.randrange(10 ** rng.randint(1, 30))), f"{rng.random():.17g}",
                                          f"{rng.randrange(1 << 64):x}", "١٢٣٤", "½⅓²³", "Ⅻ"]) for _ in range(4000))
    blob = bytes(rng.randrange(256) for _ in range(30_000))
    yield "base64 blob", __import__("base64").b64encode(blob).decode()
    yield "hex dump", blob.hex(" ", 2)
    yield "url", "https://example.com/" + "/".join(rng.choice(["a%20b", "index.html?q=1&r=%E2%9C%93", "~user", "x_y-z"])
                                                   for _ in range(2000))
    yield "empty", ""
    yield "one space", " "
    yield "one newline", "\n"


GENERATED_SOURCES: list[tuple[str, Callable[[], Iterator[tuple[str, str]]]]] = [
    ("unicode", lambda: (*script_samples(), *category_samples())),
    ("emoji", emoji_samples),
    ("whitespace", whitespace_samples),
    ("control", control_samples),
    ("adversarial", adversarial_samples),
]
KINDS = [k for k, *_ in REAL_SOURCES] + [k for k, _ in GENERATED_SOURCES]


@functools.lru_cache(maxsize=4)
def gather(scale: float = 1.0) -> tuple[Document, ...]:
    """The corpus: real text up to each source's budget times ``scale``, then all generated documents."""
    docs: list[Document] = []
    for kind, source, budget in REAL_SOURCES:
        used = 0
        for name, text in source():
            if used >= budget * scale:
                break
            docs.append(Document(kind, name, text))
            used += len(text.encode("utf-8"))
    for kind, source in GENERATED_SOURCES:
        docs += [Document(kind, name, text) for name, text in source()]
    return tuple(docs)


def summary(docs: Iterable[Document]) -> str:
    """One line per kind: documents, MB, share of non-ASCII characters."""
    rows: dict[str, list[float]] = {}
    for d in docs:
        row = rows.setdefault(d.kind, [0, 0, 0, 0])
        row[0] += 1
        row[1] += d.nbytes
        row[2] += sum(ord(c) > 127 for c in d.text)
        row[3] += len(d.text)
    return "\n".join(f"{k:15s} {n:5d} docs {b / 1e6:6.2f} MB  {na / max(nc, 1):6.1%} non-ASCII"
                     for k, (n, b, na, nc) in rows.items())


if __name__ == "__main__":
    import time

    t0 = time.perf_counter()
    corpus = gather()
    print(summary(corpus))
    print(f"{len(corpus)} documents, {total_bytes(corpus) / 1e6:.2f} MB, gathered in {time.perf_counter() - t0:.1f} s")
