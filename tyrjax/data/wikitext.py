"""Plain text from a MediaWiki XML dump: the articles of the main namespace, markup stripped.

The stripping keeps running prose and drops what is not prose: templates (`{{...}}`, infoboxes
included), tables, references, comments, files and categories, and everything from the first
reference-like section heading (References, See also, Notes, ...) to the article's end. Links
keep their visible text, headings their title; bold/italic quotes and list markers go.
"""
from __future__ import annotations

import bz2
import html
import re
import xml.etree.ElementTree as ET
from pathlib import Path

_TRAILING_SECTIONS = ("references", "see also", "notes", "external links", "further reading", "bibliography",
                      "sources", "footnotes", "citations", "notes and references")
_NON_ARTICLE_LINK = re.compile(r"^\s*:?\s*(file|image|category|media|[a-z]{2,3}(-[a-z]+)?)\s*:", re.IGNORECASE)
_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
_REF = re.compile(r"<ref[^>/]*/>|<ref[^>]*>.*?</ref\s*>", re.DOTALL | re.IGNORECASE)
_DROPPED_TAGS = re.compile(r"<(math|gallery|timeline|score|syntaxhighlight|source|imagemap)[^>]*>.*?</\1\s*>",
                           re.DOTALL | re.IGNORECASE)
_TAG = re.compile(r"</?[a-zA-Z][^>]*>")
_TEMPLATE = re.compile(r"\{\{[^{}]*\}\}")
_TABLE = re.compile(r"\{\|(?:(?!\{\|).)*?\|\}", re.DOTALL)
_LINK = re.compile(r"\[\[([^\[\]|]*)(?:\|([^\[\]]*))?\]\]")
_EXTERNAL = re.compile(r"\[(?:https?:)?//[^\s\]]+\s*([^\]]*)\]")
_HEADING = re.compile(r"^(=+)\s*(.*?)\s*\1\s*$", re.MULTILINE)
_QUOTES = re.compile(r"'{2,}")
_LIST = re.compile(r"^[*#:;]+\s*", re.MULTILINE)
_MAGIC = re.compile(r"__[A-Z]+__")


def _until_stable(pattern: re.Pattern, repl, text: str) -> str:
    """Apply `pattern` until nothing changes (innermost first, for nested constructs)."""
    while True:
        new = pattern.sub(repl, text)
        if new == text:
            return text
        text = new


def _link_text(match: re.Match) -> str:
    target, label = match.group(1), match.group(2)
    if _NON_ARTICLE_LINK.match(target):
        return ""
    return label if label is not None else target


def _cut_trailing_sections(text: str) -> str:
    """The text before the first heading that opens references, links or notes."""
    for heading in _HEADING.finditer(text):
        if heading.group(2).strip().lower() in _TRAILING_SECTIONS:
            return text[: heading.start()]
    return text


def strip_markup(wikitext: str) -> str:
    """Prose from one article's wikitext: paragraphs separated by blank lines."""
    text = _COMMENT.sub("", wikitext)
    text = _REF.sub("", text)
    text = _DROPPED_TAGS.sub("", text)
    text = _until_stable(_TEMPLATE, "", text)
    text = _until_stable(_TABLE, "", text)
    text = _cut_trailing_sections(text)
    text = _until_stable(_LINK, _link_text, text)
    text = _EXTERNAL.sub(r"\1", text)
    text = _TAG.sub("", text)
    text = _HEADING.sub(r"\2", text)
    text = _QUOTES.sub("", text)
    text = _LIST.sub("", text)
    text = _MAGIC.sub("", text)
    text = html.unescape(text)
    lines = [re.sub(r"[ \t]+", " ", line).strip() for line in text.splitlines()]
    paragraphs = "\n".join(lines)
    return re.sub(r"\n{3,}", "\n\n", paragraphs).strip()


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def dump_articles(path: str | Path) -> list[tuple[str, str]]:
    """(title, wikitext) of each main-namespace, non-redirect page of a `.xml` or `.xml.bz2` dump, in dump order."""
    path = Path(path)
    opener = bz2.open if path.suffix == ".bz2" else open
    articles = []
    with opener(path, "rb") as f:
        for _, element in ET.iterparse(f, events=("end",)):
            if _local(element.tag) != "page":
                continue
            fields = {_local(child.tag): child for child in element}
            revision = fields.get("revision")
            text = None if revision is None else next((c.text for c in revision if _local(c.tag) == "text"), None)
            if fields.get("ns") is not None and fields["ns"].text == "0" and "redirect" not in fields and text:
                articles.append((fields["title"].text or "", text))
            element.clear()
    return articles


def article_texts(path: str | Path) -> list[str]:
    """Each article of a dump as plain text, its title on the first line; articles with no prose left are skipped."""
    texts = []
    for title, wikitext in dump_articles(path):
        prose = strip_markup(wikitext)
        if prose:
            texts.append(f"{title}\n\n{prose}")
    return texts
