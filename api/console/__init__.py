"""The approvals console: server-rendered pages (Litestar templates, Jinja) under ``/console``,
served by the API process, for people in a browser. Plain HTML forms, no script, no build step.

``console_router()`` is what the app mounts; ``template_config()`` its templates. The pages
(``pages.py``) call the API's own functions with the signed-in person as the caller; the session
and sign-in live in ``session.py``; ``forms.py`` turns an approval's edit schema into a form.
None of it is in the OpenAPI document.
"""

from __future__ import annotations

from pathlib import Path

from litestar import Router
from litestar.datastructures import CacheControlHeader, ResponseHeader
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.static_files import create_static_files_router
from litestar.template.config import TemplateConfig

HERE = Path(__file__).resolve().parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"

# No script, no frames, nothing from elsewhere; the OIDC code never leaks through a Referer.
SECURITY_HEADERS = [
    ResponseHeader(name="Content-Security-Policy",
                   value="default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
                         "frame-ancestors 'none'; base-uri 'none'"),
    ResponseHeader(name="X-Frame-Options", value="DENY"),
    ResponseHeader(name="X-Content-Type-Options", value="nosniff"),
    ResponseHeader(name="Referrer-Policy", value="no-referrer"),
]


def template_config() -> TemplateConfig[JinjaTemplateEngine]:
    return TemplateConfig(directory=TEMPLATES, engine=JinjaTemplateEngine)


def console_router() -> Router:
    # Imported here: the pages pull in the API's controllers' modules.
    from api.console.pages import EXCEPTION_HANDLERS, ConsoleController

    static = create_static_files_router(path="/console/static", directories=[STATIC], include_in_schema=False,
                                        name="console:static")
    return Router(path="/", route_handlers=[ConsoleController, static], include_in_schema=False,
                  exception_handlers=EXCEPTION_HANDLERS, response_headers=SECURITY_HEADERS,
                  cache_control=CacheControlHeader(no_store=True))
