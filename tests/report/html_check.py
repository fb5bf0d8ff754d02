"""Reading a report.html back with the standard library's HTML parser: tags, attributes, the
section ids, the text, and what a self-contained page must not have."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path


@dataclass
class Page:
    tags: list[str] = field(default_factory=list)
    attrs: list[tuple[str, str, str]] = field(default_factory=list)  # (tag, name, value)
    ids: list[str] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    style: str = ""
    raw: str = ""

    def srcs(self) -> list[str]:
        return [v for _, n, v in self.attrs if n == "src"]

    def hrefs(self) -> list[str]:
        return [v for _, n, v in self.attrs if n == "href"]

    def attr_values(self, tag: str, name: str) -> list[str]:
        return [v for t, n, v in self.attrs if t == tag and n == name]

    def all_text(self) -> str:
        return "\n".join(self.text)


class _Parser(HTMLParser):
    def __init__(self, page: Page):
        super().__init__(convert_charrefs=True)
        self.page, self.in_style = page, False

    def handle_starttag(self, tag, attrs):
        self.page.tags.append(tag)
        self.in_style = tag == "style"
        for n, v in attrs:
            self.page.attrs.append((tag, n, v or ""))
            if n == "id":
                self.page.ids.append(v or "")

    def handle_endtag(self, tag):
        if tag == "style":
            self.in_style = False

    def handle_data(self, data):
        if self.in_style:
            self.page.style += data
        elif data.strip():
            self.page.text.append(data.strip())


def parse(path_or_text: Path | str) -> Page:
    raw = path_or_text.read_text(encoding="utf-8") if isinstance(path_or_text, Path) \
        else path_or_text
    page = Page(raw=raw)
    p = _Parser(page)
    p.feed(raw)
    p.close()
    return page


def assert_self_contained(page: Page) -> None:
    """No script, no external reference: every src a data: URI, every href relative to the
    folder, no url()/@import in the style sheet, nothing that loads a frame/object/link."""
    assert "script" not in page.tags, "a <script> element"
    for bad in ("iframe", "object", "embed", "link", "base", "frame"):
        assert bad not in page.tags, f"a <{bad}> element"
    assert not [n for _, n, _ in page.attrs if n.startswith("on")], "an event handler attribute"
    for src in page.srcs():
        assert src.startswith("data:image/"), src[:80]
    for href in page.hrefs():
        assert not re.match(r"^[a-z][a-z0-9+.-]*:|^//", href, re.I), href
        assert ".." not in Path(href).parts, href
    assert not re.search(r"https?://", " ".join(page.srcs() + page.hrefs()))
    assert "url(" not in page.style and "@import" not in page.style
    csp = [v for t, n, v in page.attrs if t == "meta" and n == "content" and "default-src" in v]
    assert csp == ["default-src 'none'; img-src data:; style-src 'unsafe-inline'"], csp
