"""The WordPress sandbox: the few endpoints of the WordPress REST API the WordPress tools use,
with WordPress's shapes, rules and error bodies, so the connector is tested over real HTTP.

``bizosaas dev`` runs it (``python -m sandboxes.wordpress --port P --state-file F``, port
``BIZ_DEV_WORDPRESS_PORT``) and connects the demo tenant to it; the tests run it in-process.

Served, under ``/wp-json/wp/v2`` (and the plain-permalink form ``/?rest_route=/wp/v2/...``):

- ``posts``: GET (``status``, ``search``, ``page``, ``per_page``; non-public statuses need a
  user), POST create; ``posts/{id}``: GET (``context=edit`` gives the raw fields), POST update,
  DELETE (to the trash, or ``force=true`` for good).
- ``categories`` and ``tags``: GET (``search``, ``include``, ``per_page``), POST create
  (``term_exists`` with the existing ``term_id`` for a name taken).
- ``users/me``.

What WordPress does that the tools rely on: ``title``/``content``/``excerpt`` as ``{raw,
rendered}``; a draft has no slug until it is published (``generated_slug`` shows the one it
would get); slugs are sanitised from the title and made unique (``-2``, ``-3``...); a
``publish`` with a date a minute or more ahead becomes ``future``, a ``future`` less than a
minute ahead becomes ``publish`` (``schedule_min_seconds``: WordPress's 60, tests lower it); a
``future`` post is published once its date has passed (WordPress's cron runs on page loads: here
on the next request); authentication is HTTP Basic with an application password, accepted with
or without its spaces; errors are ``{"code", "message", "data": {"status"}}`` with WordPress's
codes (``rest_post_invalid_id``, ``rest_invalid_param`` with ``data.params``,
``incorrect_password``, ``rest_not_logged_in``, ``rest_cannot_create``, ``rest_no_route``...);
``search`` matches titles, excerpts and raw bodies (WordPress's ``LIKE``), and ``status=any``
(every status but trash) needs a user, as it does on WordPress.

Faults for tests: ``outages`` (the next requests answered 503, a site in maintenance) and
``lost_answers`` (the next changes carried out, then answered 502: a proxy that gave up).

State: in memory, and written to ``state_file`` (JSON, replaced atomically) after every change
when one is given, so ``bizosaas dev`` keeps its posts across restarts. A file rather than a
table: the sandbox stands for another system with its own store, and a table would ship a
fake's schema in the platform's migrations.
"""

from __future__ import annotations

import base64
import html
import json
import os
import re
import threading
import unicodedata
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from litestar import Litestar, Request, Response, route
from litestar.datastructures import State
from litestar.exceptions import HTTPException
from litestar.params import FromPath

API = "/wp-json/wp/v2"
STATUSES = ("publish", "future", "draft", "pending", "private")
UNPUBLISHED = ("draft", "pending", "auto-draft")
MAX_PER_PAGE = 100


@dataclass
class WordPressUser:
    id: int
    username: str
    name: str
    application_password: str  # as WordPress shows it once: "abcd EFGH ijkl MNOP qrst UVWX"
    email: str = ""
    roles: list[str] = field(default_factory=lambda: ["administrator"])


@dataclass
class WordPressState:
    """The site: its posts and terms (by id), its users. ``now`` is replaceable for tests."""

    site_url: str = "http://127.0.0.1"
    name: str = "Sandbox WordPress"
    users: list[WordPressUser] = field(default_factory=list)
    posts: dict[int, dict[str, Any]] = field(default_factory=dict)
    terms: dict[int, dict[str, Any]] = field(default_factory=dict)
    next_id: int = 1  # posts and terms share WordPress's id sequences only loosely; one counter here
    schedule_min_seconds: float = 60.0
    # The next requests answered 503 as a site in maintenance does (tests of passing outages).
    outages: int = 0
    # The next requests that change something are carried out, then answered 502 as a proxy in
    # front of WordPress does when it gives up waiting (an answer lost after the post was made).
    lost_answers: int = 0
    state_file: Path | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        if not any(t["taxonomy"] == "category" for t in self.terms.values()):
            self._add_term("category", "Uncategorized", "uncategorized")

    # --- persistence ----------------------------------------------------------------------
    @classmethod
    def load(cls, state_file: Path, **kw: Any) -> WordPressState:
        """The site kept in ``state_file`` (a new one when the file does not exist yet)."""
        if not state_file.exists():
            return cls(state_file=state_file, **kw)
        data = json.loads(state_file.read_text())
        return cls(posts={int(k): v for k, v in data["posts"].items()},
                   terms={int(k): v for k, v in data["terms"].items()},
                   next_id=data["next_id"], state_file=state_file, **kw)

    def save(self) -> None:
        if self.state_file is None:
            return
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"posts": self.posts, "terms": self.terms, "next_id": self.next_id}))
        os.replace(tmp, self.state_file)

    # --- ids, terms, slugs -----------------------------------------------------------------
    def _new_id(self) -> int:
        new, self.next_id = self.next_id, self.next_id + 1
        return new

    def _add_term(self, taxonomy: str, name: str, slug: str, description: str = "") -> dict[str, Any]:
        term_id = self._new_id()
        term = {"id": term_id, "count": 0, "description": description, "name": name, "slug": slug,
                "taxonomy": taxonomy, "parent": 0, "meta": []}
        self.terms[term_id] = term
        return term

    def unique_slug(self, slug: str, post_id: int) -> str:
        taken = {p["slug"] for p in self.posts.values() if p["id"] != post_id and p["slug"]}
        candidate, n = slug, 2
        while candidate in taken:
            candidate, n = f"{slug}-{n}", n + 1
        return candidate

    def run_cron(self, now: datetime) -> None:
        """Publish the scheduled posts whose time has come (WordPress's publish_future_post)."""
        for post in self.posts.values():
            if post["status"] == "future" and _parse_gmt(post["date_gmt"]) <= now:
                post["status"] = "publish"
                post["slug"] = post["slug"] or self.unique_slug(sanitize_title(post["title"]) or str(post["id"]), post["id"])
                self.save()


def sanitize_title(title: str) -> str:
    """WordPress's sanitize_title for a post or term: no tags or accents, lower case, runs of
    anything else as one hyphen."""
    text = re.sub(r"<[^>]*>", "", title)
    text = unicodedata.normalize("NFKD", html.unescape(text)).encode("ascii", "ignore").decode()
    text = re.sub(r"[^a-z0-9\s_-]", "", text.lower())
    return re.sub(r"[\s_-]+", "-", text).strip("-")[:200]


def _gmt(moment: datetime) -> str:
    return moment.astimezone(UTC).replace(tzinfo=None, microsecond=0).isoformat()


def _parse_gmt(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def _parse_date(value: Any) -> datetime | None:
    """rest_parse_date: ISO 8601 (RFC 3339); without a zone the time is UTC (``date_gmt``)."""
    if not isinstance(value, str) or not re.match(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}", value):
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _autop(text: str) -> str:
    """What the_content renders for a simple body: paragraphs wrapped unless already blocks."""
    if not text.strip() or re.search(r"<(p|div|h[1-6]|ul|ol|figure|blockquote|table)\b", text):
        return text
    return "".join(f"<p>{part.strip()}</p>\n" for part in re.split(r"\n\s*\n", text) if part.strip())


# --- WordPress's answers -----------------------------------------------------------------------

class WPError(Exception):
    def __init__(self, status: int, code: str, message: str, **data: Any) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.data = status, code, message, data

    def response(self) -> Response[dict[str, Any]]:
        return Response({"code": self.code, "message": self.message, "data": {"status": self.status, **self.data}},
                        status_code=self.status)


def _invalid_param(params: dict[str, str]) -> WPError:
    def code(message: str) -> str:
        return "rest_not_in_enum" if " is not one of " in message else "rest_invalid_param"

    return WPError(400, "rest_invalid_param", f"Invalid parameter(s): {', '.join(params)}", params=params,
                   details={k: {"code": code(v), "message": v, "data": None} for k, v in params.items()})


def _state(request: Request[Any, Any, Any]) -> WordPressState:
    return request.app.state.wordpress


def _user(request: Request[Any, Any, Any]) -> WordPressUser | None:
    """The user of a Basic application-password header; WPError for one WordPress refuses."""
    header = request.headers.get("authorization", "")
    if not header.lower().startswith("basic "):
        return None
    try:
        username, _, password = base64.b64decode(header[6:].strip(), validate=True).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        return None
    found = next((u for u in _state(request).users if username in (u.username, u.email)), None)
    if found is None:
        raise WPError(401, "invalid_username", "Unknown username. Check again or try your email address.")
    # WordPress strips everything but letters and digits before comparing an application password.
    given, expected = (re.sub(r"[^a-z\d]", "", p, flags=re.IGNORECASE) for p in (password, found.application_password))
    if given != expected:
        raise WPError(401, "incorrect_password", "The provided password is an invalid application password.")
    return found


def _post_view(wp: WordPressState, post: dict[str, Any], edit: bool) -> dict[str, Any]:
    site = wp.site_url.rstrip("/")
    published = post["status"] == "publish"
    link = f"{site}/{post['slug']}/" if published and post["slug"] else f"{site}/?p={post['id']}"
    view: dict[str, Any] = {
        "id": post["id"], "date": post["date_gmt"], "date_gmt": post["date_gmt"],
        "guid": {"rendered": f"{site}/?p={post['id']}"}, "modified": post["modified_gmt"],
        "modified_gmt": post["modified_gmt"], "slug": post["slug"], "status": post["status"], "type": "post",
        "link": link, "title": {"rendered": post["title"]},
        "content": {"rendered": _autop(post["content"]), "protected": False},
        "excerpt": {"rendered": _autop(post["excerpt"]), "protected": False},
        "author": post["author"], "featured_media": 0, "comment_status": "open", "ping_status": "open",
        "sticky": False, "template": "", "format": "standard", "meta": [],
        "categories": post["categories"], "tags": post["tags"],
        "_links": {"self": [{"href": f"{site}{API}/posts/{post['id']}"}]},
    }
    if edit:
        view["title"]["raw"] = post["title"]
        view["content"]["raw"] = post["content"]
        view["excerpt"]["raw"] = post["excerpt"]
        view["guid"]["raw"] = view["guid"]["rendered"]
        view["password"] = ""
        view["permalink_template"] = f"{site}/%postname%/"
        view["generated_slug"] = post["slug"] or wp.unique_slug(sanitize_title(post["title"]) or str(post["id"]),
                                                               post["id"])
    return view


def _term_view(wp: WordPressState, term: dict[str, Any]) -> dict[str, Any]:
    base = "category" if term["taxonomy"] == "category" else "tag"
    return {**term, "link": f"{wp.site_url.rstrip('/')}/{base}/{term['slug']}/"}


def _int_param(params: dict[str, Any], name: str, default: int, low: int, high: int) -> int:
    raw = params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise _invalid_param({name: f"{name} is not of type integer."}) from None
    if not low <= value <= high:
        raise _invalid_param({name: f"{name} must be between {low} (inclusive) and {high} (inclusive)"})
    return value


def _ids(params: dict[str, Any], name: str) -> list[int] | None:
    raw = params.get(name)
    if raw is None:
        return None
    items = raw if isinstance(raw, list) else str(raw).split(",")
    try:
        return [int(i) for i in items if str(i).strip() != ""]
    except (TypeError, ValueError):
        raise _invalid_param({name: f"{name}[0] is not of type integer."}) from None


def _list(items: list[dict[str, Any]], page: int, per_page: int) -> Response[list[dict[str, Any]]]:
    total = len(items)
    pages = max(1, -(-total // per_page)) if total else 0
    if page > 1 and page > pages:
        raise WPError(400, "rest_post_invalid_page_number",
                      "The page number requested is larger than the number of pages available.")
    return Response(items[(page - 1) * per_page: page * per_page],
                    headers={"X-WP-Total": str(total), "X-WP-TotalPages": str(pages)})


# --- posts ---------------------------------------------------------------------------------

def _apply(wp: WordPressState, post: dict[str, Any], body: dict[str, Any], now: datetime) -> None:
    """Validate a create/update body (WordPress's schema) and apply it to ``post``."""
    bad: dict[str, str] = {}
    for name in ("title", "content", "excerpt"):
        value = body.get(name)
        if isinstance(value, dict):
            value = value.get("raw")
        if value is not None and not isinstance(value, str):
            bad[name] = f"{name} is not of type object,string."
        elif value is not None:
            post[name] = value
    if "slug" in body:
        if not isinstance(body["slug"], str):
            bad["slug"] = "slug is not of type string."
        else:
            post["slug"] = sanitize_title(body["slug"])
    status = body.get("status", post["status"])
    if status not in STATUSES:
        bad["status"] = f"status is not one of {', '.join(STATUSES[:-1])}, and {STATUSES[-1]}."
    date = None
    for name in ("date_gmt", "date"):
        if body.get(name) is not None:
            date = _parse_date(body[name])
            if date is None:
                bad[name] = "Invalid date."
    for name in ("categories", "tags"):
        if name in body:
            value = body[name]
            if not isinstance(value, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in value):
                bad[name] = f"{name}[0] is not of type integer."
            else:
                taxonomy = "category" if name == "categories" else "post_tag"
                # WordPress skips ids that are not terms of the taxonomy.
                post[name] = [i for i in dict.fromkeys(value) if wp.terms.get(i, {}).get("taxonomy") == taxonomy]
    if bad:
        raise _invalid_param(bad)
    if date is not None:
        post["date_gmt"] = _gmt(date)
        post["date_set"] = True
    elif status in ("publish", "future") and not post.get("date_set"):
        post["date_gmt"] = _gmt(now)
    # wp_insert_post: a publish a minute or more ahead is scheduled; a future that is not is published.
    ahead = (_parse_gmt(post["date_gmt"]) - now).total_seconds()
    if status == "publish" and ahead >= max(wp.schedule_min_seconds, 1):
        status = "future"
    elif status == "future" and ahead < wp.schedule_min_seconds:
        status = "publish"
    post["status"] = status
    if not post["categories"]:
        post["categories"] = [min(i for i, t in wp.terms.items() if t["taxonomy"] == "category")]
    if status not in UNPUBLISHED and not post["slug"]:
        post["slug"] = sanitize_title(post["title"]) or str(post["id"])
    if post["slug"]:
        post["slug"] = wp.unique_slug(post["slug"], post["id"])
    post["modified_gmt"] = _gmt(now)


async def _body(request: Request[Any, Any, Any]) -> dict[str, Any]:
    raw = await request.body()
    if not raw:
        return dict(request.query_params)
    try:
        body = json.loads(raw)
    except ValueError:
        raise WPError(400, "rest_invalid_json", "Invalid JSON body passed.", json_error_code=4,
                      json_error_message="Syntax error") from None
    if not isinstance(body, dict):
        raise WPError(400, "rest_invalid_json", "Invalid JSON body passed.")
    return {**dict(request.query_params), **body}


def _posts(request: Request[Any, Any, Any], method: str, wp: WordPressState, user: WordPressUser | None,
           body: dict[str, Any], now: datetime) -> Response[Any]:
    params = request.query_params
    if method == "GET":
        statuses = [s for s in str(params.get("status", "publish")).split(",") if s]
        if any(s not in (*STATUSES, "any") for s in statuses):
            raise _invalid_param({"status": f"status[0] is not one of {', '.join(STATUSES)}, any."})
        if user is None and statuses != ["publish"]:
            raise WPError(400, "rest_invalid_param", "Invalid parameter(s): status",
                          params={"status": "Status is forbidden."})
        if user is None and params.get("context") == "edit":
            raise WPError(401, "rest_forbidden_context", "Sorry, you are not allowed to edit posts in this post type.")
        search = str(params.get("search", "")).lower()
        found = [p for p in wp.posts.values()
                 if (p["status"] in statuses or ("any" in statuses and p["status"] != "trash"))
                 and (not search or search in f"{p['title']} {p['content']} {p['excerpt']}".lower())]
        found.sort(key=lambda p: (p["date_gmt"], p["id"]), reverse=True)
        page = _int_param(params, "page", 1, 1, 10**9)
        per_page = _int_param(params, "per_page", 10, 1, MAX_PER_PAGE)
        return _list([_post_view(wp, p, params.get("context") == "edit") for p in found], page, per_page)
    if user is None:
        raise WPError(401, "rest_cannot_create", "Sorry, you are not allowed to create posts as this user.")
    if "id" in body:
        raise WPError(400, "rest_post_exists", "Cannot create existing post.")
    post: dict[str, Any] = {"id": wp._new_id(), "title": "", "content": "", "excerpt": "", "slug": "",
                            "status": "draft", "date_gmt": _gmt(now), "modified_gmt": _gmt(now),
                            "author": user.id, "categories": [], "tags": []}
    _apply(wp, post, body, now)
    if not (post["title"] or post["content"] or post["excerpt"]):
        raise WPError(400, "empty_content", "Content, title, and excerpt are empty.")
    wp.posts[post["id"]] = post
    wp.save()
    return Response(_post_view(wp, post, edit=True), status_code=201,
                    headers={"Location": f"{wp.site_url.rstrip('/')}{API}/posts/{post['id']}"})


def _post(request: Request[Any, Any, Any], method: str, wp: WordPressState, user: WordPressUser | None,
          post_id: int, body: dict[str, Any], now: datetime) -> Response[Any]:
    post = wp.posts.get(post_id)
    if post is None:
        raise WPError(404, "rest_post_invalid_id", "Invalid post ID.")
    edit = request.query_params.get("context") == "edit"
    if method == "GET":
        if user is None and (edit or post["status"] != "publish"):
            if edit:
                raise WPError(401, "rest_forbidden_context", "Sorry, you are not allowed to edit this post.")
            raise WPError(401, "rest_forbidden", "Sorry, you are not allowed to do that.")
        return Response(_post_view(wp, post, edit))
    if user is None:
        code = "rest_cannot_edit" if method == "POST" else "rest_cannot_delete"
        verb = "edit" if method == "POST" else "delete"
        raise WPError(401, code, f"Sorry, you are not allowed to {verb} this post.")
    if method == "DELETE":
        force = str(request.query_params.get("force", "false")).lower() in ("true", "1")
        if force:
            previous = _post_view(wp, post, edit=True)
            del wp.posts[post_id]
            wp.save()
            return Response({"deleted": True, "previous": previous})
        if post["status"] == "trash":
            raise WPError(410, "rest_already_trashed", "The post has already been deleted.")
        post["status"] = "trash"
        post["modified_gmt"] = _gmt(now)
        wp.save()
        return Response(_post_view(wp, post, edit=True))
    updated = dict(post)
    _apply(wp, updated, body, now)
    if not (updated["title"] or updated["content"] or updated["excerpt"]):
        raise WPError(400, "empty_content", "Content, title, and excerpt are empty.")
    wp.posts[post_id] = updated
    wp.save()
    return Response(_post_view(wp, updated, edit=True))


# --- terms ---------------------------------------------------------------------------------

def _terms(request: Request[Any, Any, Any], method: str, wp: WordPressState, user: WordPressUser | None,
           taxonomy: str, body: dict[str, Any]) -> Response[Any]:
    params = request.query_params
    if method == "GET":
        search = str(params.get("search", "")).lower()
        include = _ids(dict(params), "include")
        found = [t for t in wp.terms.values() if t["taxonomy"] == taxonomy
                 and (not search or search in t["name"].lower() or search in t["slug"])
                 and (include is None or t["id"] in include)]
        found.sort(key=lambda t: t["name"].lower())
        page = _int_param(params, "page", 1, 1, 10**9)
        per_page = _int_param(params, "per_page", 10, 1, MAX_PER_PAGE)
        return _list([_term_view(wp, t) for t in found], page, per_page)
    if user is None:
        raise WPError(401, "rest_cannot_create", "Sorry, you are not allowed to create terms in this taxonomy.")
    name = body.get("name")
    if not isinstance(name, str) or not name.strip():
        if name is None:
            raise WPError(400, "rest_missing_callback_param", "Missing parameter(s): name", params=["name"])
        raise WPError(400, "empty_term_name", "A name is required for this term.")
    name = " ".join(html.escape(re.sub(r"<[^>]*>", "", name), quote=False).split())
    slug = sanitize_title(body["slug"] if isinstance(body.get("slug"), str) else name) or str(wp.next_id)
    for term in wp.terms.values():
        if term["taxonomy"] == taxonomy and (term["name"].lower() == name.lower() or term["slug"] == slug):
            error = WPError(400, "term_exists", "A term with the name provided already exists with this parent.",
                            term_id=term["id"])
            response = error.response()
            response.content["additional_data"] = [term["id"], term["id"]]
            return response
    term = wp._add_term(taxonomy, name, slug, str(body.get("description") or ""))
    wp.save()
    return Response(_term_view(wp, term), status_code=201)


# --- the app -------------------------------------------------------------------------------

def _me(request: Request[Any, Any, Any], wp: WordPressState, user: WordPressUser | None) -> Response[Any]:
    if user is None:
        raise WPError(401, "rest_not_logged_in", "You are not currently logged in.")
    view = {"id": user.id, "name": user.name, "url": "", "description": "",
            "link": f"{wp.site_url.rstrip('/')}/author/{user.username}/", "slug": sanitize_title(user.username),
            "avatar_urls": {}, "meta": []}
    if request.query_params.get("context") == "edit":
        view.update(username=user.username, email=user.email, roles=user.roles,
                    capabilities={"edit_posts": True, "publish_posts": True, "manage_categories": True})
    return Response(view)


_ROUTES: list[tuple[re.Pattern[str], tuple[str, ...], str]] = [
    (re.compile(r"^/wp/v2/posts/?$"), ("GET", "POST"), "posts"),
    (re.compile(r"^/wp/v2/posts/(?P<id>\d+)/?$"), ("GET", "POST", "PUT", "PATCH", "DELETE"), "post"),
    (re.compile(r"^/wp/v2/categories/?$"), ("GET", "POST"), "categories"),
    (re.compile(r"^/wp/v2/tags/?$"), ("GET", "POST"), "tags"),
    (re.compile(r"^/wp/v2/users/me/?$"), ("GET",), "me"),
]


def _handle(request: Request[Any, Any, Any], method: str, name: str, match: re.Match[str], wp: WordPressState,
            user: WordPressUser | None, body: dict[str, Any], now: datetime) -> Response[Any]:
    if name == "posts":
        return _posts(request, method, wp, user, body, now)
    if name == "post":
        return _post(request, "POST" if method in ("PUT", "PATCH") else method, wp, user, int(match["id"]), body, now)
    if name in ("categories", "tags"):
        return _terms(request, method, wp, user, "category" if name == "categories" else "post_tag", body)
    return _me(request, wp, user)


async def _dispatch(request: Request[Any, Any, Any], rest_route: str) -> Response[Any]:
    wp = _state(request)
    if wp.outages > 0:
        wp.outages -= 1
        return Response("<!doctype html><title>Maintenance</title>Briefly unavailable for scheduled maintenance. "
                        "Check back in a minute.", status_code=503, media_type="text/html",
                        headers={"Retry-After": "600"})
    method = request.method.upper()
    override = request.headers.get("x-http-method-override") or request.query_params.get("_method")
    if method == "POST" and override:
        method = override.upper()
    try:
        for pattern, methods, name in _ROUTES:
            match = pattern.match(rest_route)
            if match is None:
                continue
            if method not in methods:
                break
            user = _user(request)
            body = await _body(request) if method in ("POST", "PUT", "PATCH") else {}
            now = datetime.now(UTC)
            with wp._lock:
                wp.run_cron(now)
                answer = _handle(request, method, name, match, wp, user, body, now)
                if method != "GET" and (answer.status_code or 200) < 300 and wp.lost_answers > 0:
                    wp.lost_answers -= 1
                    return Response("<html><head><title>502 Bad Gateway</title></head><body>502 Bad Gateway</body>"
                                    "</html>", status_code=502, media_type="text/html")
                return answer
        raise WPError(404, "rest_no_route", "No route was found matching the URL and request method.")
    except WPError as exc:
        return exc.response()


@route("/wp-json/{path:path}", http_method=["GET", "POST", "PUT", "PATCH", "DELETE"], status_code=200)
async def wp_json(request: Request[Any, Any, Any], path: FromPath[str]) -> Response[Any]:
    return await _dispatch(request, "/" + path.lstrip("/"))


@route("/", http_method=["GET", "POST", "PUT", "PATCH", "DELETE"], status_code=200)
async def plain_permalinks(request: Request[Any, Any, Any]) -> Response[Any]:
    """``/?rest_route=/wp/v2/...``: how a site without pretty permalinks serves the REST API."""
    rest_route = request.query_params.get("rest_route")
    if rest_route:
        return await _dispatch(request, rest_route)
    return Response(f"<!doctype html><title>{html.escape(_state(request).name)}</title>", media_type="text/html")


def _not_found(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    if request.url.path.startswith("/wp-json"):
        return WPError(404, "rest_no_route", "No route was found matching the URL and request method.").response()
    return Response("Not Found", status_code=exc.status_code, media_type="text/plain")


def create_wordpress_app(state: WordPressState) -> Litestar:
    return Litestar(route_handlers=[wp_json, plain_permalinks], state=State({"wordpress": state}),
                    exception_handlers={HTTPException: _not_found}, openapi_config=None)


def main(argv: list[str] | None = None) -> int:
    import argparse

    import uvicorn

    parser = argparse.ArgumentParser(prog="python -m sandboxes.wordpress", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback)")
    parser.add_argument("--port", type=int, default=8768)
    parser.add_argument("--state-file", type=Path, default=None, help="keep the site's posts and terms here (JSON)")
    parser.add_argument("--username", default="admin")
    args = parser.parse_args(argv)
    # The application password comes from the environment, never from the command line (ps shows it).
    password = os.environ.get("BIZ_WORDPRESS_SANDBOX_APP_PASSWORD") or "sand box0 sand box0 sand box0"
    user = WordPressUser(id=1, username=args.username, name="Sandbox Admin", application_password=password,
                         email=f"{args.username}@wordpress.sandbox")
    site = f"http://{args.host}:{args.port}"
    kw: dict[str, Any] = {"site_url": site, "users": [user]}
    state = WordPressState.load(args.state_file, **kw) if args.state_file else WordPressState(**kw)
    uvicorn.run(create_wordpress_app(state), host=args.host, port=args.port, log_level="warning",
                timeout_graceful_shutdown=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

