"""fetch_web_page fetches only what a client or an agent may make the platform fetch.

The address policy (activities/netguard.py) is pure: a table of address forms and the answer
for each. Then the fetcher against real loopback servers, with the policy opening exactly one
loopback port and a resolver that gives loopback addresses to public-looking names: every
redirect hop is checked again, the connection goes to the address that was checked, and one
deadline bounds the whole fetch. Finally the sandbox MCP server with the production policy
refuses loopback sites as a permanent tool error.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import uvicorn
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities import netguard
from activities.mcp import CallToolRequest, MCPActivities, ServerConfig, register_server
from activities.netguard import AllowedNetwork, FetchPolicy, URLRefused
from sandboxes.mcp.web import fetch_page
from tests.support import Site, free_port, serve, serve_sandbox, unique

PUBLIC_V4, PUBLIC_V6 = "93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"
DNS: dict[str, list[str]] = {
    "shop.example": [PUBLIC_V4],
    "v6.shop.example": [PUBLIC_V6],
    "localhost": ["127.0.0.1", "::1"],
    "rebind.example": [PUBLIC_V4, "127.0.0.1"],  # one public answer and one inside
    "metadata.example": ["169.254.169.254"],
    "lan.example": ["192.168.1.10"],
    "ula.example": ["fd12:3456::1"],
    "mapped.example": ["::ffff:10.0.0.1"],
}

# (what is tried, URL, answer under the production policy: "allowed <ip>" or "refused <reason>")
ADDRESS_TABLE: list[tuple[str, str, str]] = [
    ("public name", "https://shop.example/", f"allowed {PUBLIC_V4}"),
    ("public name, IPv6 answer", "https://v6.shop.example/", f"allowed {PUBLIC_V6}"),
    ("public IPv4 literal", f"http://{PUBLIC_V4}/", f"allowed {PUBLIC_V4}"),
    ("public name on web port 8080", "http://shop.example:8080/", f"allowed {PUBLIC_V4}"),
    ("public name on port 22", "http://shop.example:22/", "refused port"),
    ("public name on port 6379", "http://shop.example:6379/", "refused port"),
    ("loopback literal", "http://127.0.0.1/", "refused loopback"),
    ("loopback, other /8 address", "http://127.1.2.3/", "refused loopback"),
    ("localhost", "http://localhost/", "refused loopback"),
    ("name with a public and a loopback answer", "http://rebind.example/", "refused loopback"),
    ("decimal IPv4", "http://2130706433/", "refused ipv4_spelling"),
    ("octal IPv4", "http://017700000001/", "refused ipv4_spelling"),
    ("hex IPv4", "http://0x7f000001/", "refused ipv4_spelling"),
    ("hex and short IPv4", "http://0x7f.1/", "refused ipv4_spelling"),
    ("short IPv4", "http://127.1/", "refused ipv4_spelling"),
    ("octal dotted IPv4 (the URL parser refuses it)", "http://0177.0.0.1/", "refused host"),
    ("zero", "http://0/", "refused ipv4_spelling"),
    ("five-part number", "http://1.2.3.4.5/", "refused host"),
    ("unspecified 0.0.0.0", "http://0.0.0.0/", "refused unspecified"),
    ("RFC 1918 10/8", "http://10.0.0.1/", "refused private"),
    ("RFC 1918 172.16/12", "http://172.16.5.4/", "refused private"),
    ("RFC 1918 192.168/16", "http://192.168.0.1/", "refused private"),
    ("name resolving to the LAN", "http://lan.example/", "refused private"),
    ("CGNAT 100.64/10", "http://100.64.0.1/", "refused shared"),
    ("cloud metadata 169.254.169.254", "http://169.254.169.254/latest/meta-data/", "refused link_local"),
    ("name resolving to metadata", "http://metadata.example/", "refused link_local"),
    ("multicast", "http://224.0.0.1/", "refused multicast"),
    ("broadcast", "http://255.255.255.255/", "refused reserved"),
    ("reserved 240/4", "http://240.0.0.1/", "refused reserved"),
    ("documentation 192.0.2/24", "http://192.0.2.1/", "refused reserved"),
    ("benchmarking 198.18/15", "http://198.18.0.1/", "refused reserved"),
    ("IPv6 loopback", "http://[::1]/", "refused loopback"),
    ("IPv6 unspecified", "http://[::]/", "refused unspecified"),
    ("IPv6 unique local", "http://[fd00::1]/", "refused private"),
    ("name resolving to IPv6 unique local", "http://ula.example/", "refused private"),
    ("IPv6 link local", "http://[fe80::1]/", "refused link_local"),
    ("IPv6 link local with a zone", "http://[fe80::1%25eth0]/", "refused host"),
    ("IPv6 multicast", "http://[ff02::1]/", "refused multicast"),
    ("IPv4-mapped loopback", "http://[::ffff:127.0.0.1]/", "refused loopback"),
    ("IPv4-mapped metadata", "http://[::ffff:a9fe:a9fe]/", "refused link_local"),
    ("name resolving to IPv4-mapped private", "http://mapped.example/", "refused private"),
    ("IPv4-compatible loopback", "http://[::127.0.0.1]/", "refused reserved"),
    ("NAT64 of metadata", "http://[64:ff9b::169.254.169.254]/", "refused link_local"),
    ("NAT64 of a public address", f"http://[64:ff9b::{PUBLIC_V4}]/", "allowed 64:ff9b::5db8:d70e"),
    ("6to4 of loopback", "http://[2002:7f00:1::1]/", "refused loopback"),
    ("6to4 of 10.0.0.1", "http://[2002:a00:1::]/", "refused private"),
    ("Teredo", "http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/", "refused reserved"),
    ("IPv6 documentation", "http://[2001:db8::1]/", "refused reserved"),
    ("credentials before a loopback host", "http://a@127.0.0.1/", "refused credentials"),
    ("credentials before a public host", "http://user:pw@shop.example/", "refused credentials"),
    ("backslash-at trick", "http://shop.example\\@127.0.0.1/", "refused credentials"),
    ("fragment-at trick", "http://127.0.0.1#@shop.example/", "refused loopback"),
    ("file scheme", "file:///etc/passwd", "refused scheme"),
    ("gopher scheme", "gopher://127.0.0.1:6379/_INFO", "refused scheme"),
    ("percent-encoded host", "http://%31%32%37.0.0.1/", "refused host"),
    ("no host", "http:///path", "refused host"),
]


def verdict(url: str, policy: FetchPolicy, dns: dict[str, list[str]] = DNS) -> str:
    try:
        target = netguard.check_url(url)
        if target.literal is not None:
            ip = netguard.check_address(target.literal, target.port, policy)
        else:
            ip = netguard.check_addresses(target, dns[target.host], policy)
    except URLRefused as exc:
        return f"refused {exc.reason}"
    return f"allowed {ip}"


@pytest.mark.parametrize(("what", "url", "answer"), ADDRESS_TABLE, ids=[row[0] for row in ADDRESS_TABLE])
def test_address_policy_table(what: str, url: str, answer: str) -> None:
    assert verdict(url, FetchPolicy()) == answer


def test_private_networks_open_only_by_setting_and_never_metadata() -> None:
    dev = FetchPolicy(allow_private_networks=True)
    assert verdict("http://127.0.0.1:8123/", dev) == "allowed 127.0.0.1"
    assert verdict("http://localhost:3000/", dev) == "allowed 127.0.0.1"
    assert verdict("http://[::ffff:192.168.0.7]:81/", dev) == "allowed 192.168.0.7"
    assert verdict("http://100.64.1.1/", dev) == "allowed 100.64.1.1"
    # Opening private networks opens neither link-local (metadata) nor odd public ports.
    assert verdict("http://169.254.169.254/", dev) == "refused link_local"
    assert verdict("http://0.0.0.0:8000/", dev) == "refused unspecified"
    assert verdict("http://shop.example:25/", dev) == "refused port"
    assert verdict("http://2130706433/", dev) == "refused ipv4_spelling"

    # An allow-list entry opens one network on one port, nothing next to it.
    one = FetchPolicy(allowed_networks=(AllowedNetwork.parse("127.0.0.1/32:8123"),))
    assert verdict("http://127.0.0.1:8123/", one) == "allowed 127.0.0.1"
    assert verdict("http://[::ffff:127.0.0.1]:8123/", one) == "allowed 127.0.0.1"
    assert verdict("http://127.0.0.1:8124/", one) == "refused loopback"
    assert verdict("http://127.0.0.2:8123/", one) == "refused loopback"
    lan = FetchPolicy.from_settings(False, ["10.1.0.0/16"])
    assert verdict("http://10.1.200.3:9000/", lan) == "allowed 10.1.200.3"
    assert verdict("http://10.2.0.1/", lan) == "refused private"
    for bad in ("10.0.0.0", "10.0.0.1/8", "127.0.0.1/32:0", "::1/128:http"):
        with pytest.raises(ValueError):
            AllowedNetwork.parse(bad)


def test_ipv4_numbers_are_read_as_browsers_and_inet_aton_read_them() -> None:
    cases = {"2130706433": "127.0.0.1", "0x7f.1": "127.0.0.1", "017700000001": "127.0.0.1",
             "0177.0.0.1": "127.0.0.1", "127.1": "127.0.0.1", "10.1.65535": "10.1.255.255",
             "0xa9.0xfe.0xa9.0xfe": "169.254.169.254", "4294967295": "255.255.255.255"}
    assert {h: str(netguard.parse_ipv4(h)) for h in cases} == cases
    for bad in ("4294967296", "1.2.3.4.5", "256.1.1.1", "08", "0x1g"):
        assert netguard.parse_ipv4(bad) is None, bad


# --- the fetcher against real loopback servers ---------------------------------------------

class Recording:
    """An ASGI app that records each request (path and Host header) before ``app`` answers."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.requests: list[tuple[str, str]] = []

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            host = dict(scope["headers"]).get(b"host", b"").decode()
            self.requests.append((scope["path"], host))
        await self.app(scope, receive, send)


class Slow:
    """A page whose body never ends: a chunk every ``every`` seconds until the client hangs up."""

    def __init__(self, chunk: bytes = b"<p>slow</p>", every: float = 0.1) -> None:
        self.chunk, self.every = chunk, every

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await Site()(scope, receive, send)
            return
        gone = asyncio.Event()

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()

        watcher = asyncio.create_task(watch())
        try:
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"text/html; charset=utf-8")]})
            while not gone.is_set():
                await send({"type": "http.response.body", "body": self.chunk, "more_body": True})
                await asyncio.sleep(self.every)
        finally:
            watcher.cancel()


@asynccontextmanager
async def two_servers() -> AsyncIterator[tuple[int, int, Recording, Recording]]:
    """The tenant's site (port A) and another loopback service (port B) nobody may reach."""
    inside = Recording(Site({"/": (200, "<html><title>internal admin</title></html>")}))
    site = Recording(Site({}))
    async with serve(site) as site_url, serve(inside) as inside_url:
        yield int(site_url.rsplit(":", 1)[1]), int(inside_url.rsplit(":", 1)[1]), site, inside


def resolver_for(names: dict[str, list[str]]):  # noqa: ANN201
    async def resolve(host: str, port: int) -> list[str]:
        if host not in names:
            raise OSError(f"unknown host {host}")
        return names[host]
    return resolve


async def test_every_redirect_hop_is_checked_and_the_checked_address_is_the_one_connected() -> None:
    async with two_servers() as (a, b, site, inside):
        # The policy opens 127.0.0.1 on port A only: the tenant's site at a public-looking name.
        policy = FetchPolicy(allowed_networks=(AllowedNetwork(ipaddress.ip_network("127.0.0.1/32"), a),))
        resolve = resolver_for({"shop.example": ["127.0.0.1"], "internal.example": ["127.0.0.1"],
                                "localhost": ["127.0.0.1"]})
        tricks = {
            "/to-other-port": (f"http://127.0.0.1:{b}/", "loopback"),
            "/to-localhost": (f"http://localhost:{b}/", "loopback"),
            "/to-internal-name": (f"http://internal.example:{b}/", "loopback"),
            "/to-mapped": (f"http://[::ffff:127.0.0.1]:{b}/", "loopback"),
            "/to-decimal": (f"http://2130706433:{b}/", "ipv4_spelling"),
            "/to-hex": (f"http://0x7f.1:{b}/", "ipv4_spelling"),
            "/to-metadata": ("http://169.254.169.254/latest/meta-data/iam/", "link_local"),
            "/to-credentials": (f"http://admin@127.0.0.1:{a}/ok", "credentials"),
            "/to-file": ("file:///etc/passwd", "scheme"),
        }
        site.app.pages = {path: (301, location) for path, (location, _) in tricks.items()}
        site.app.pages |= {
            "/ok": (200, "<html><head><title>Shop</title></head><body><a href='/a'>a</a></body></html>"),
            "/hop1": (301, "/hop2"), "/hop2": (301, f"http://shop.example:{a}/ok"),
            "/loop": (301, "/loop"),
            "/second-hop-inside": (301, "/hop-then-inside"), "/hop-then-inside": (301, f"http://127.0.0.1:{b}/"),
        }
        refused: dict[str, str] = {}
        for path in [*tricks, "/second-hop-inside"]:
            with pytest.raises(URLRefused) as info:
                await fetch_page(f"http://shop.example:{a}{path}", timeout=5, policy=policy, resolver=resolve)
            refused[path] = info.value.reason
            assert "redirected to" in info.value.message
        assert refused == {**{p: reason for p, (_, reason) in tricks.items()}, "/second-hop-inside": "loopback"}
        assert inside.requests == []  # nothing ever reached the other service

        # Allowed hops are followed (relative and absolute), and the connection to the pinned
        # address still names the host: Host header (and SNI for https) stay the site's.
        site.requests.clear()
        page = await fetch_page(f"http://shop.example:{a}/hop1", timeout=5, policy=policy, resolver=resolve)
        assert (page["ok"], page["title"], page["final_url"]) == (True, "Shop", f"http://shop.example:{a}/ok")
        assert page["links"] == [{"href": f"http://shop.example:{a}/a", "text": "a", "internal": True}]
        assert site.requests == [("/hop1", f"shop.example:{a}"), ("/hop2", f"shop.example:{a}"),
                                 ("/ok", f"shop.example:{a}")]
        looped = await fetch_page(f"http://shop.example:{a}/loop", timeout=5, policy=policy, resolver=resolve)
        assert looped["error"].startswith("TooManyRedirects") and looped["ok"] is False
        assert len(site.requests) == 3 + 6  # the first request and 5 redirects, then it stops

        # The same site under the production policy (no allow-list): refused at the first hop.
        with pytest.raises(URLRefused) as first:
            await fetch_page(f"http://shop.example:{a}/ok", timeout=5, resolver=resolve)
        assert first.value.reason == "loopback" and "redirected" not in first.value.message


def self_signed(host: str, directory: Path) -> tuple[Path, Path]:
    """A certificate for ``host`` (and its key), signed by itself: the test's own trust root."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


async def test_https_to_the_pinned_address_still_verifies_the_sites_name(tmp_path: Path) -> None:
    cert_file, key_file = self_signed("shop.example", tmp_path)
    port = free_port()
    site = Recording(Site({"/": (200, "<html><head><title>Secure shop</title></head></html>")}))
    server = uvicorn.Server(uvicorn.Config(site, host="127.0.0.1", port=port, log_level="warning", lifespan="off",
                                           ssl_certfile=str(cert_file), ssl_keyfile=str(key_file)))
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            await asyncio.sleep(0.02)
        policy = FetchPolicy(allowed_networks=(AllowedNetwork.parse(f"127.0.0.1/32:{port}"),))
        resolve = resolver_for({"shop.example": ["127.0.0.1"], "other.example": ["127.0.0.1"]})

        def trusting() -> httpx.AsyncHTTPTransport:
            return httpx.AsyncHTTPTransport(verify=ssl.create_default_context(cafile=str(cert_file)))

        page = await fetch_page(f"https://shop.example:{port}/", timeout=5, policy=policy, resolver=resolve,
                                transport=trusting())
        # Same address, another name: the certificate is checked against the name, not the IP.
        other = await fetch_page(f"https://other.example:{port}/", timeout=5, policy=policy, resolver=resolve,
                                 transport=trusting())
    finally:
        server.should_exit = True
        await task
    assert (page["ok"], page["title"], page["final_url"]) == (True, "Secure shop", f"https://shop.example:{port}/")
    assert site.requests == [("/", f"shop.example:{port}")]
    assert other["ok"] is False and other["error"].startswith("ConnectError") and "other.example" in other["error"]


async def test_one_deadline_bounds_a_page_that_trickles_forever_and_the_body_is_capped() -> None:
    policy = FetchPolicy(allow_private_networks=True)
    async with serve(Slow()) as slow_url, serve(Slow(chunk=b"x" * 65536, every=0)) as endless_url:
        started = time.monotonic()
        page = await asyncio.wait_for(fetch_page(f"{slow_url}/", timeout=1.0, policy=policy), 10)
        took = time.monotonic() - started
        assert page["error"] == "Timeout: the page did not load within 1 s" and page["ok"] is False
        assert 0.9 < took < 3
        # An endless fast body is read up to the cap and no further.
        big = await asyncio.wait_for(fetch_page(f"{endless_url}/", timeout=10, policy=policy, max_bytes=1 << 20), 15)
        assert big["status_code"] == 200 and big["error"] is None and big["word_count"] == 1


async def test_sandbox_with_the_production_policy_refuses_loopback_as_a_permanent_tool_error(
    db: asyncpg.Pool, mcp_sandbox: str, fixture_site: str
) -> None:
    tenant, strict = unique("seo"), unique("strict")
    env, mcp = ActivityEnvironment(), MCPActivities(db)

    def fetch(server: str, url: str, **arguments: Any) -> CallToolRequest:
        return CallToolRequest(tenant_id=tenant, server=server, tool="fetch_web_page",
                               arguments={"url": url, **arguments}, idempotency_key=f"{tenant}:fetch")

    async with serve_sandbox(db, fetch_policy=FetchPolicy()) as strict_url:
        await register_server(db, ServerConfig(name=strict, transport="streamable-http", url=strict_url))
        try:
            refused = {}
            for url in (f"{fixture_site}/", "http://169.254.169.254/latest/meta-data/", "http://[::1]:8000/",
                        "http://2130706433/"):
                with pytest.raises(ApplicationError) as info:
                    await env.run(mcp.call_tool, fetch(strict, url))
                assert info.value.type == "MCPToolError" and info.value.non_retryable
                refused[url] = info.value.message
            # The sandbox the tests and `bizosaas dev` run opens loopback explicitly: same page, fetched.
            page = (await env.run(mcp.call_tool, fetch("sandbox", f"{fixture_site}/old-home"))).content
            # A page that never finishes is a finding after timeout_seconds, not a hung tool retried forever.
            async with serve(Slow()) as slow_url:
                started = time.monotonic()
                slow = (await env.run(mcp.call_tool, fetch("sandbox", f"{slow_url}/", timeout_seconds=1))).content
                took = time.monotonic() - started
        finally:
            await mcp.aclose()
    assert "URL refused (loopback): 127.0.0.1 is a loopback address" in refused[f"{fixture_site}/"]
    assert "URL refused (loopback)" in refused["http://[::1]:8000/"]
    assert "URL refused (link_local)" in refused["http://169.254.169.254/latest/meta-data/"]
    assert "URL refused (ipv4_spelling)" in refused["http://2130706433/"]
    assert (page["status_code"], page["final_url"]) == (200, f"{fixture_site}/")
    assert slow["error"] == "Timeout: the page did not load within 1 s" and took < 5
