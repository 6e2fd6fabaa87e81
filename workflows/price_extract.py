"""Prices and notable facts read from a fetched page, deterministically (pure: workflow code).

The Competitor Insight Engine reads each competitor's page from what ``fetch_web_page``
answered with ``include_content`` (activities/mcp/tools.py ``WebPage``). Prices come from the
most reliable source the page offers:

1. structured data: schema.org Product/Offer in JSON-LD (``price``, ``lowPrice``,
   ``priceSpecification``; ``priceCurrency``, ``name``, ``availability``), the same in
   microdata (``itemprop="price"``), and the OpenGraph ``product:price:amount`` meta property;
2. otherwise price patterns in the visible text (``$1,299.00``, ``1.299,00 €``, ``USD 49/mo``),
   each named after the text nearest before it (the same block, else the heading above);
3. otherwise nothing: the workflow asks an agent (source ``agent``).

Besides prices: the page's title and headline, its promotions (``sale``, ``20% off``, ``free
shipping``, ...) and the internal pages it links, so a later run can say what changed.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

import msgspec

from activities.mcp.tools import TextBlock, WebPage
from workflows.seo_scan import url_parts

Source = Literal["json-ld", "microdata", "opengraph", "pattern", "agent"]

MAX_PRICES = 50  # per page
MAX_PROMOTIONS = 20
MAX_PAGES = 200  # internal links kept per page
CENT = Decimal("0.01")
UNNAMED = "(unnamed product)"

# ISO 4217 codes a price may be written with (and an agent may answer).
CURRENCIES = frozenset({
    "USD", "EUR", "GBP", "JPY", "CNY", "CAD", "AUD", "NZD", "CHF", "SEK", "NOK", "DKK", "PLN", "CZK", "HUF", "RON",
    "INR", "BRL", "MXN", "ZAR", "SGD", "HKD", "KRW", "TRY", "ILS", "AED", "SAR", "THB", "IDR", "MYR", "PHP"})
# Symbols, longest first where one ends another ("US$" before "$").
SYMBOLS: dict[str, str] = {
    "US$": "USD", "CA$": "CAD", "AU$": "AUD", "NZ$": "NZD", "HK$": "HKD", "C$": "CAD", "A$": "AUD", "R$": "BRL",
    "S$": "SGD", "$": "USD", "€": "EUR", "£": "GBP", "¥": "JPY", "₹": "INR", "₩": "KRW", "₺": "TRY", "₪": "ILS",
    "zł": "PLN"}
PERIODS: dict[str, str] = {"mo": "month", "mth": "month", "month": "month", "yr": "year", "year": "year",
                           "annum": "year", "wk": "week", "week": "week", "day": "day"}


class PriceFound(msgspec.Struct, frozen=True, kw_only=True):
    product: str  # the product's (or plan's) name as the page gives it
    amount: Decimal  # to the cent
    source: Source
    currency: str | None = None  # ISO 4217; None when the page does not say
    period: str | None = None  # "month", "year", ... for a recurring price
    availability: str | None = None  # schema.org availability ("InStock", ...), when given


class Promotion(msgspec.Struct, frozen=True, kw_only=True):
    label: str  # "sale", "20% off", "free shipping", ...
    text: str  # where it was found (clipped)


class PageFacts(msgspec.Struct, frozen=True, kw_only=True):
    title: str | None = None
    headline: str | None = None  # the first h1
    prices: list[PriceFound] = []
    promotions: list[Promotion] = []
    pages: list[str] = []  # internal links: paths, sorted


# --- amounts -------------------------------------------------------------------------------

def parse_amount(text: Any) -> Decimal | None:
    """A price as written (``1,299.00``, ``1.299,00``, ``1 299``, ``49,9``, 49.5) to the cent; None
    when it is not one. A separator followed by one or two digits is the decimal one; followed by
    three, a thousands separator."""
    if isinstance(text, bool) or text is None:
        return None
    if isinstance(text, int | float | Decimal):
        value = Decimal(str(text))
    else:
        s = re.sub(r"[\s\u00a0\u202f']", "", str(text))
        if not re.fullmatch(r"\d[\d.,]*", s):
            return None
        last = max(s.rfind(","), s.rfind("."))
        if last == -1:
            whole, cents = s, ""
        elif len(s) - last - 1 in (1, 2):
            whole, cents = re.sub(r"[.,]", "", s[:last]), s[last + 1:]
        elif len(s) - last - 1 == 3:
            whole, cents = re.sub(r"[.,]", "", s), ""
        else:
            return None
        try:
            value = Decimal(f"{whole}.{cents or '0'}")
        except InvalidOperation:
            return None
    if not value.is_finite() or value < 0 or value >= Decimal(10) ** 12:
        return None
    return value.quantize(CENT)


def _currency(value: Any) -> str | None:
    code = str(value or "").strip().upper()
    return code if code in CURRENCIES else SYMBOLS.get(str(value or "").strip())


def _clean(text: Any, limit: int = 200) -> str:
    return " ".join(str(text or "").split())[:limit]


def product_key(p: PriceFound) -> str:
    """What identifies a product from one run to the next: its name (case and spacing aside), its
    currency and billing period."""
    return f"{_clean(p.product).casefold()}|{p.currency or ''}|{p.period or ''}"


def _dedupe(prices: list[PriceFound]) -> list[PriceFound]:
    seen: set[str] = set()
    kept = []
    for p in prices:
        if product_key(p) not in seen:
            seen.add(product_key(p))
            kept.append(p)
    return kept[:MAX_PRICES]


# --- structured data -------------------------------------------------------------------------

def _types(node: dict[str, Any]) -> set[str]:
    t = node.get("@type")
    names = t if isinstance(t, list) else [t]
    return {str(n).rsplit("/", 1)[-1] for n in names if n}


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value] if value is not None else []


def _name(value: Any) -> str:
    """A schema.org name (a text, a list of them, or a ``{"@value": ...}``)."""
    if isinstance(value, list):
        value = next((v for v in value if v), None)
    if isinstance(value, dict):
        value = value.get("@value") or value.get("name")
    return _clean(value)


def _offer_price(offer: dict[str, Any], product: str, source: Source, fallback: str) -> PriceFound | None:
    spec = next((s for s in _as_list(offer.get("priceSpecification")) if isinstance(s, dict)), {})
    amount = None
    for raw in (offer.get("price"), offer.get("lowPrice"), spec.get("price"), spec.get("minPrice")):
        amount = parse_amount(_name(raw) if isinstance(raw, list | dict) else raw)
        if amount is not None:
            break
    if amount is None:
        return None
    availability = _name(offer.get("availability")).rsplit("/", 1)[-1] or None
    name = product or _name(offer.get("name")) or _name((offer.get("itemOffered") or {}).get("name")
                                                         if isinstance(offer.get("itemOffered"), dict) else None)
    unit = _clean(spec.get("unitCode") or spec.get("billingDuration") or "").lower()
    period = {"mon": "month", "ann": "year", "p1m": "month", "p1y": "year", "wee": "week", "day": "day"}.get(unit)
    return PriceFound(product=name or fallback, amount=amount, source=source,
                      currency=_currency(offer.get("priceCurrency") or spec.get("priceCurrency")), period=period,
                      availability=availability)


_OFFER_TYPES = {"Offer", "AggregateOffer"}


def structured_prices(objects: list[dict[str, Any]], source: Source, fallback: str = UNNAMED) -> list[PriceFound]:
    """Prices of the Products (and lone Offers) in JSON-LD objects or microdata items, walking
    ``@graph``, lists and nested nodes; an offer of no named product takes ``fallback`` (the page's
    title)."""
    found: list[PriceFound] = []

    def walk(node: Any, product: str, depth: int) -> None:
        if depth > 12 or len(found) >= MAX_PRICES:
            return
        if isinstance(node, list):
            for child in node:
                walk(child, product, depth + 1)
            return
        if not isinstance(node, dict):
            return
        types = _types(node)
        own = _name(node.get("name"))
        if types & _OFFER_TYPES or (not types and ("price" in node or "lowPrice" in node)):
            price = _offer_price(node, product or own, source, fallback)
            if price is not None:
                found.append(price)
            return
        name = own if own and not types & {"WebPage", "WebSite", "Organization", "BreadcrumbList", "ItemList",
                                           "ListItem", "Brand"} else product
        for offer in _as_list(node.get("offers")):
            if isinstance(offer, dict):
                price = _offer_price(offer, name, source, fallback)
                if price is not None:
                    found.append(price)
        for key, child in node.items():
            if key != "offers" and isinstance(child, dict | list):
                walk(child, name, depth + 1)

    walk(objects, "", 0)
    return found


def opengraph_prices(meta: dict[str, str], title: str | None) -> list[PriceFound]:
    amount = parse_amount(meta.get("product:price:amount") or meta.get("og:price:amount"))
    if amount is None:
        return []
    currency = _currency(meta.get("product:price:currency") or meta.get("og:price:currency"))
    name = _clean(meta.get("og:title") or title) or UNNAMED
    return [PriceFound(product=name, amount=amount, currency=currency, source="opengraph")]


# --- prices in text --------------------------------------------------------------------------

_NUM = r"\d{1,3}(?:[,.\u00a0\u202f ]\d{3})+(?:[.,]\d{1,2})?|\d+(?:[.,]\d{1,2})?"
_SYM = "|".join(re.escape(s) for s in sorted(SYMBOLS, key=len, reverse=True))
_CODE = "|".join(sorted(CURRENCIES))  # in capitals only: "Try 3 months" is no price in lira
PRICE_PATTERN = re.compile(
    rf"(?:(?P<pre>{_SYM}|\b(?-i:{_CODE})\b)\s?(?P<n1>{_NUM})(?!\d)"
    rf"|(?<![\d.,])(?P<n2>{_NUM})\s?(?P<post>{_SYM}|\b(?-i:{_CODE})\b))"
    r"(?:\s?(?:/|per\b|a\b)\s?(?P<per>mo|mth|month|yr|year|annum|wk|week|day)\b)?", re.IGNORECASE)
# Amounts that are not a product's price: a former price, a discount, a threshold.
_NOT_A_PRICE_BEFORE = re.compile(r"(?:\bwas|\bregular(?:ly)?|\breg\.?|\bbefore|\blist price|\bcompare at|\bmsrp|"
                                 r"\bsave|\bover|\babove|\borders?|\boff|\bup to|\bworth|\bspend)\s*:?\s*$",
                                 re.IGNORECASE)
_NOT_A_PRICE_AFTER = re.compile(r"^\s*(?:off\b|discount|cash ?back)", re.IGNORECASE)
_FILLER = re.compile(r"^(?:price|prices|pricing|only|now|from|starting at|starts at|just|for|at|buy|our price)$",
                     re.IGNORECASE)
_HEADING = {"h1", "h2", "h3", "h4", "h5", "h6", "dt", "th"}


def _name_before(text: str) -> str | None:
    name = re.sub(r"[\s:–—\-|•·,(/]+$", "", text).strip()
    name = re.sub(r"\b(?:only|now|from|starting at|starts at|just|for|at|price|our price)$", "", name,
                  flags=re.IGNORECASE).strip(" :–—-|•·,(")
    if 2 <= len(name) <= 120 and re.search(r"[^\W\d_]", name) and not _FILLER.match(name):
        return name
    return None


def pattern_prices(blocks: list[TextBlock], title: str | None) -> list[PriceFound]:
    """Prices written in the text, each named after the nearest text before it: the same block
    (``Pro plan: $49/mo``), else the nearest heading or short line above (``<h3>Pro</h3><p>$49</p>``)."""
    found: list[PriceFound] = []
    for i, block in enumerate(blocks):
        start = 0
        for m in PRICE_PATTERN.finditer(block.text):
            before, after = block.text[start:m.start()], block.text[m.end():]
            start = m.end()
            if _NOT_A_PRICE_BEFORE.search(block.text[:m.start()][-30:]) or _NOT_A_PRICE_AFTER.match(after):
                continue
            amount = parse_amount(m.group("n1") or m.group("n2"))
            if amount is None or amount == 0:
                continue
            mark = m.group("pre") or m.group("post") or ""
            currency = _currency(mark)
            name = _name_before(before) or _name_above(blocks, i) or _clean(title) or UNNAMED
            per = m.group("per")
            found.append(PriceFound(product=name, amount=amount, currency=currency, source="pattern",
                                    period=PERIODS.get(per.lower()) if per else None))
            if len(found) >= MAX_PRICES:
                return found
    return found


def _name_above(blocks: list[TextBlock], i: int) -> str | None:
    for block in reversed(blocks[max(0, i - 4):i]):
        if PRICE_PATTERN.search(block.text):
            return None  # the line above is another product's price: no name of its own
        if block.tag in _HEADING or len(block.text) <= 80:
            return _name_before(block.text)
    return None


def extract_prices(page: WebPage) -> list[PriceFound]:
    """The page's prices from its most reliable source: structured data (JSON-LD, microdata,
    OpenGraph) when it has any, else the price patterns of its text; [] when neither."""
    fallback = _clean(page.meta_properties.get("og:title") or page.title) or UNNAMED
    structured = [*structured_prices(page.structured_data, "json-ld", fallback),
                  *structured_prices(page.microdata, "microdata", fallback),
                  *opengraph_prices(page.meta_properties, page.title)]
    if structured:
        return _dedupe(structured)
    return _dedupe(pattern_prices(page.text_blocks, page.title))


# --- promotions, pages, the whole page -------------------------------------------------------

_PROMOTIONS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"\b(\d{1,2})\s?%\s?off\b", re.IGNORECASE), "{0}% off"),
    (re.compile(r"\bsave\s(\d{1,2})\s?%", re.IGNORECASE), "{0}% off"),
    (re.compile(r"\bfree (?:shipping|delivery)\b", re.IGNORECASE), "free shipping"),
    (re.compile(r"\bbuy one,? get one\b|\bbogo\b", re.IGNORECASE), "buy one get one"),
    (re.compile(r"\b(sale|clearance|black friday|cyber monday|coupon|promo code|discount|free trial)\b",
                re.IGNORECASE), "{0}"),
    (re.compile(r"\blimited[- ]time\b", re.IGNORECASE), "limited-time offer"),
]


def promotions(page: WebPage) -> list[Promotion]:
    """The promotions the page announces (title, description, text), each label once."""
    texts = [t for t in (page.title, page.meta_description) if t] + [b.text for b in page.text_blocks]
    found: dict[str, Promotion] = {}
    for text in texts:
        for pattern, label in _PROMOTIONS:
            for m in pattern.finditer(text):
                name = label.format(*(g.lower() for g in m.groups())) if m.groups() else label
                if name not in found and len(found) < MAX_PROMOTIONS:
                    found[name] = Promotion(label=name, text=_clean(text))
    return list(found.values())


def internal_pages(page: WebPage) -> list[str]:
    """The paths (with their query) of the page's internal links, sorted."""
    paths = set()
    for link in page.links:
        if link.internal:
            parts = url_parts(link.href)
            paths.add((parts.path or "/") + (f"?{parts.query}" if parts.query else ""))
    return sorted(paths)[:MAX_PAGES]


def page_facts(page: WebPage) -> PageFacts:
    headline = next((h.text for h in page.headings if h.level == 1 and h.text), None)
    return PageFacts(title=page.title, headline=headline, prices=extract_prices(page), promotions=promotions(page),
                     pages=internal_pages(page))
