"""What a page says, beyond what an SEO audit reads: its structured data (schema.org JSON-LD and
microdata items), its OpenGraph/product meta properties and its visible text in blocks.

``fetch_web_page`` adds these to its answer when asked (``include_content``): a price tracker
reads products and offers from them without the page's HTML crossing into workflow history.
Everything is bounded (counts and sizes below), so a huge page yields a bounded answer.
"""

from __future__ import annotations

import json
from html.parser import HTMLParser
from typing import Any

from typing_extensions import TypedDict

MAX_JSON_LD_SCRIPTS = 20
MAX_JSON_LD_CHARS = 200_000  # one script's text; longer ones are left out
MAX_STRUCTURED_CHARS = 100_000  # all objects together, as JSON
MAX_ITEMS = 50  # microdata items (top level)
MAX_ITEM_PROPS = 50  # properties of one item
MAX_META = 50
MAX_VALUE_CHARS = 500
MAX_BLOCKS = 400
MAX_BLOCK_CHARS = 300
MAX_TEXT_CHARS = 20_000

# Elements whose text starts a block of its own (the tag of the innermost one names the block).
BLOCK_TAGS = frozenset({"p", "div", "li", "td", "th", "dt", "dd", "h1", "h2", "h3", "h4", "h5", "h6", "section",
                        "article", "header", "footer", "main", "aside", "nav", "ul", "ol", "table", "tr",
                        "blockquote", "figcaption", "button", "label", "form", "br", "hr"})
VOID_TAGS = frozenset({"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track",
                       "wbr"})
# Text never shown (scripts, styles) and text struck out (a former price is not the price).
HIDDEN_TAGS = frozenset({"title", "script", "style", "noscript", "template", "svg", "del", "s", "strike"})
META_PREFIXES = ("og:", "product:")


class TextBlock(TypedDict):
    tag: str  # the innermost block element: "h2", "p", "li", ... ("body" outside any)
    text: str


class PageContent(TypedDict):
    structured_data: list[dict[str, Any]]  # JSON-LD objects, as the page wrote them
    microdata: list[dict[str, Any]]  # microdata items as JSON-LD-like objects ("@type", properties)
    meta_properties: dict[str, str]  # og:* and product:* meta properties
    text_blocks: list[TextBlock]


def _clip(text: str, limit: int = MAX_VALUE_CHARS) -> str:
    return " ".join(text.split())[:limit]


class _Frame:
    """An open element the parser tracks: a microdata item, a property collecting its text, or both."""

    __slots__ = ("tag", "item", "prop", "text")

    def __init__(self, tag: str, item: dict[str, Any] | None, prop: list[str] | None) -> None:
        self.tag, self.item, self.prop = tag, item, prop
        self.text: list[str] | None = [] if prop is not None and item is None else None


class _ContentParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.scripts: list[str] = []
        self.items: list[dict[str, Any]] = []
        self.meta: dict[str, str] = {}
        self.blocks: list[TextBlock] = []
        self._text_chars = 0
        self._hidden = 0
        self._in_json_ld: list[str] | None = None
        self._blocks_open: list[str] = []
        self._buffer: list[str] = []
        self._frames: list[_Frame] = []

    # --- microdata ---

    def _item_of_frames(self) -> dict[str, Any] | None:
        return next((f.item for f in reversed(self._frames) if f.item is not None), None)

    def _add_prop(self, owner: dict[str, Any] | None, names: list[str], value: Any) -> None:
        if owner is None:  # a property outside any item: kept in an item of no type
            if not self.items or self.items[-1].get("@type") is not None or self.items[-1].get("@scope"):
                if len(self.items) >= MAX_ITEMS:
                    return
                self.items.append({"@type": None})
            owner = self.items[-1]
        for name in names:
            if len(owner) >= MAX_ITEM_PROPS:
                return
            if name in owner:
                current = owner[name]
                owner[name] = [*current, value] if isinstance(current, list) else [current, value]
            else:
                owner[name] = value

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:  # noqa: C901 - a branch a kind
        a = {k.lower(): (v if v is not None else "") for k, v in attrs}
        if tag == "script" and a.get("type", "").split(";")[0].strip().lower() == "application/ld+json":
            self._in_json_ld = []
        if tag in HIDDEN_TAGS:
            self._hidden += 1
        if tag in BLOCK_TAGS:
            self._flush()
            if tag not in VOID_TAGS:
                self._blocks_open.append(tag)
        if tag == "meta":
            key = (a.get("property") or a.get("name") or "").strip().lower()
            if key.startswith(META_PREFIXES) and key not in self.meta and len(self.meta) < MAX_META:
                self.meta[key] = _clip(a.get("content", ""))
        props = a.get("itemprop", "").split() or None
        scope = "itemscope" in a
        if not props and not scope:
            return
        owner = self._item_of_frames()
        if scope:
            types = a.get("itemtype", "").split()
            item: dict[str, Any] = {"@type": types[0].rstrip("/").rsplit("/", 1)[-1] if types else None,
                                    "@scope": True}
            if props:
                self._add_prop(owner, props, item)
            elif len(self.items) < MAX_ITEMS:
                self.items.append(item)
            if tag not in VOID_TAGS:
                self._frames.append(_Frame(tag, item, None))
            return
        assert props is not None
        for attr in ("content", "datetime", "value") if tag != "a" else ("content",):
            if attr in a and (attr != "value" or tag in ("data", "meter")):
                self._add_prop(owner, props, _clip(a[attr]))
                return
        if tag in ("a", "link", "area") and "href" in a:
            self._add_prop(owner, props, _clip(a["href"]))
        elif tag in ("img", "audio", "video", "source", "embed", "iframe") and "src" in a:
            self._add_prop(owner, props, _clip(a["src"]))
        elif tag not in VOID_TAGS:  # the element's text, when it ends
            self._frames.append(_Frame(tag, None, props))

    def handle_endtag(self, tag: str) -> None:
        if tag == "script" and self._in_json_ld is not None:
            text = "".join(self._in_json_ld)
            self._in_json_ld = None
            if len(self.scripts) < MAX_JSON_LD_SCRIPTS and len(text) <= MAX_JSON_LD_CHARS:
                self.scripts.append(text)
        if tag in HIDDEN_TAGS:
            self._hidden = max(0, self._hidden - 1)
        if tag in BLOCK_TAGS:
            self._flush()
            if tag in self._blocks_open:
                while self._blocks_open and self._blocks_open.pop() != tag:
                    pass
        if any(f.tag == tag for f in self._frames):
            while self._frames:
                frame = self._frames.pop()
                if frame.text is not None and frame.prop is not None:
                    self._add_prop(self._item_of_frames(), frame.prop, _clip("".join(frame.text)))
                if frame.tag == tag:
                    break

    def handle_data(self, data: str) -> None:
        if self._in_json_ld is not None:
            self._in_json_ld.append(data)
            return
        if self._hidden:
            return
        for frame in self._frames:
            if frame.text is not None:
                frame.text.append(data)
        self._buffer.append(data)

    def _flush(self) -> None:
        text = " ".join("".join(self._buffer).split())
        self._buffer = []
        if not text or len(self.blocks) >= MAX_BLOCKS or self._text_chars >= MAX_TEXT_CHARS:
            return
        text = text[:min(MAX_BLOCK_CHARS, MAX_TEXT_CHARS - self._text_chars)]
        self._text_chars += len(text)
        tag = next((t for t in reversed(self._blocks_open) if t not in ("ul", "ol", "table", "tr", "form")), "body")
        self.blocks.append(TextBlock(tag=tag, text=text))

    def close(self) -> None:
        super().close()
        self._flush()


def _json_ld(scripts: list[str]) -> list[dict[str, Any]]:
    """The objects of the page's JSON-LD scripts (a top-level list counts as its objects); a
    script that does not parse is left out, and so is what goes beyond the size bound."""
    found: list[dict[str, Any]] = []
    size = 0
    for script in scripts:
        try:
            data = json.loads(script, strict=False)
        except ValueError:
            continue
        for obj in data if isinstance(data, list) else [data]:
            if not isinstance(obj, dict):
                continue
            size += len(json.dumps(obj, default=str))
            if size > MAX_STRUCTURED_CHARS:
                return found
            found.append(obj)
    return found


def _strip_scope(item: Any) -> Any:
    if isinstance(item, dict):
        return {k: _strip_scope(v) for k, v in item.items() if k != "@scope"}
    if isinstance(item, list):
        return [_strip_scope(v) for v in item]
    return item


def page_content(html: str) -> PageContent:
    """The structured data, meta properties and text blocks of an HTML page."""
    parser = _ContentParser()
    parser.feed(html)
    parser.close()
    return PageContent(structured_data=_json_ld(parser.scripts), microdata=[_strip_scope(i) for i in parser.items],
                       meta_properties=parser.meta, text_blocks=parser.blocks)
