"""fetch_bytes: policy-checked fetching of vendor image URLs.

Every HTTP test talks to an aiohttp server this module starts on 127.0.0.1;
host names are answered by a monkeypatched resolver (never real DNS).
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
import pytest
import trustme
from aiohttp import web
from pydantic import ValidationError

from bria_dagster.client import fetch_policy
from bria_dagster.client.fetch import Fetched, fetch_bytes
from bria_dagster.client.fetch_policy import (
    FetchPolicy,
    classify_address,
    resolve_and_check,
    sanitize_url,
)
from bria_dagster.client.images import to_data_uri
from bria_dagster.engine.synthetic import make_product_photo
from bria_dagster.errors import BriaError, FetchFailedError, FetchRefusedError

LOCAL = FetchPolicy(allowed_hosts=("127.0.0.1",))
SMALL_LIMIT = 4096


@pytest.fixture(scope="module")
def photo() -> bytes:
    jpeg, _alpha = make_product_photo("white_studio", 7, (96, 80))
    return jpeg


@dataclass
class Server:
    base: str
    port: int
    seen_hosts: list[str] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)


def _app(server: Server, photo: bytes) -> web.Application:
    async def image(request: web.Request) -> web.Response:
        server.seen_hosts.append(request.headers.get("Host", ""))
        return web.Response(body=photo, content_type="image/jpeg")

    async def host(request: web.Request) -> web.Response:
        return web.Response(text=request.headers.get("Host", ""), content_type="text/plain")

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound(request.query["to"])

    async def chain(request: web.Request) -> web.Response:
        n = int(request.match_info["n"])
        if n == 0:
            return web.Response(body=photo, content_type="image/jpeg")
        raise web.HTTPFound(f"/chain/{n - 1}")  # relative Location

    async def slow(request: web.Request) -> web.Response:
        await server.release.wait()
        return web.Response(body=photo, content_type="image/jpeg")

    async def big(request: web.Request) -> web.Response:
        return web.Response(body=b"x" * (SMALL_LIMIT + 1), content_type="image/jpeg")

    async def big_chunked(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        for _ in range(8):
            await response.write(b"y" * 1024)
        await response.write_eof()
        return response

    async def no_location(request: web.Request) -> web.Response:
        return web.Response(status=302)

    app = web.Application()
    app.router.add_get("/image.jpg", image)
    app.router.add_get("/host", host)
    app.router.add_get("/redirect", redirect)
    app.router.add_get("/chain/{n}", chain)
    app.router.add_get("/slow", slow)
    app.router.add_get("/big", big)
    app.router.add_get("/big-chunked", big_chunked)
    app.router.add_get("/no-location", no_location)
    return app


async def _start(photo: bytes, ssl_context: ssl.SSLContext | None = None):
    server = Server(base="", port=0)
    runner = web.AppRunner(_app(server, photo), shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    server.port = port
    server.base = f"http://127.0.0.1:{port}"
    return server, runner


@pytest.fixture
async def server(photo: bytes) -> AsyncIterator[Server]:
    srv, runner = await _start(photo)
    try:
        yield srv
    finally:
        srv.release.set()
        await runner.cleanup()


@pytest.fixture
def resolver(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """name -> addresses; any other name fails like an unknown host. Records calls."""
    table: dict[str, list[str]] = {}
    calls: list[str] = []

    async def fake_resolve(host: str, port: int) -> list[str]:
        calls.append(host)
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return list(table[host])

    monkeypatch.setattr(fetch_policy, "_resolve_host", fake_resolve)
    table["__calls__"] = calls  # type: ignore[assignment]
    return table


# --------------------------------------------------------------------------- classifier


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("127.9.9.9", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "RFC 1918"),
        ("172.16.0.9", "RFC 1918"),
        ("172.31.255.255", "RFC 1918"),
        ("192.168.1.1", "RFC 1918"),
        ("100.64.0.1", "carrier-grade NAT"),
        ("100.127.255.254", "carrier-grade NAT"),
        ("169.254.10.10", "link-local"),
        ("fe80::1", "link-local"),
        ("169.254.169.254", "metadata"),
        ("fd00:ec2::254", "metadata"),
        ("fc00::1", "unique local"),
        ("fd12:3456::1", "unique local"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("240.0.0.1", "reserved"),
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:169.254.169.254", "metadata"),
        ("64:ff9b::a9fe:a9fe", "metadata"),
        ("2002:7f00:1::", "loopback"),
    ],
)
def test_classifier_names_the_reason_for_non_public_addresses(address: str, reason: str):
    found = classify_address(address)
    assert found is not None
    assert reason in found


@pytest.mark.parametrize("address", ["8.8.8.8", "93.184.216.34", "172.32.0.1", "2606:4700::1111"])
def test_classifier_accepts_public_addresses(address: str):
    assert classify_address(address) is None


# --------------------------------------------------------------------------- policy model


def test_policy_defaults_and_validation():
    policy = FetchPolicy()
    assert policy.allowed_schemes == frozenset({"http", "https", "s3", "gs", "data", "file"})
    assert policy.file_roots == ()
    assert policy.allow_private_networks is False
    assert policy.max_bytes == 50 * 1024 * 1024
    with pytest.raises(ValidationError):
        FetchPolicy(max_bytes=0)
    with pytest.raises(ValidationError):
        FetchPolicy(max_redirects=-1)
    with pytest.raises(ValidationError):
        policy.max_bytes = 1  # frozen
    assert FetchPolicy(allowed_schemes=["HTTPS"]).allowed_schemes == frozenset({"https"})


def test_sanitize_url_strips_userinfo_query_and_fragment():
    assert sanitize_url("https://user:pw@cdn.test:8443/a/b.jpg?sig=SECRET#x") == (
        "https://cdn.test:8443/a/b.jpg"
    )
    shown = sanitize_url(to_data_uri(b"abc" * 1000, "image/png"))
    assert shown.startswith("data:image/png;base64,...")
    assert len(shown) < 80


# --------------------------------------------------------------------------- http basics


async def test_allowed_loopback_host_is_fetched(server: Server, photo: bytes):
    got = await fetch_bytes(f"{server.base}/image.jpg", LOCAL)
    assert isinstance(got, Fetched)
    assert got.data == photo
    assert got.content_type == "image/jpeg"
    assert got.final_url == f"{server.base}/image.jpg"


async def test_loopback_is_refused_by_default_without_connecting(server: Server):
    with pytest.raises(FetchRefusedError) as info:
        await fetch_bytes(f"{server.base}/image.jpg?token=SECRET", FetchPolicy())
    message = str(info.value)
    assert "127.0.0.1 is loopback" in message
    assert "allow_private_networks" in message and "allowed_hosts" in message
    assert "SECRET" not in message
    assert server.seen_hosts == []


async def test_allow_private_networks_allows_loopback(server: Server, photo: bytes):
    got = await fetch_bytes(f"{server.base}/image.jpg", FetchPolicy(allow_private_networks=True))
    assert got.data == photo


async def test_allowed_hosts_accepts_a_cidr_network(server: Server, photo: bytes):
    got = await fetch_bytes(f"{server.base}/image.jpg", FetchPolicy(allowed_hosts=("127.0.0.0/8",)))
    assert got.data == photo


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.5/img.jpg",
        "http://192.168.1.20/img.jpg",
        "http://172.16.3.4/img.jpg",
        "http://100.64.1.1/img.jpg",
        "http://[::1]/img.jpg",
        "http://[fe80::1]/img.jpg",
        "http://[fd00::7]/img.jpg",
        "http://0.0.0.0/img.jpg",
        "https://169.254.169.254/latest/meta-data/",
    ],
)
async def test_private_literal_addresses_are_refused(url: str):
    with pytest.raises(FetchRefusedError) as info:
        await fetch_bytes(url, FetchPolicy())
    assert sanitize_url(url) in str(info.value)


async def test_metadata_address_stays_refused_with_private_networks_allowed():
    policy = FetchPolicy(allow_private_networks=True)
    for url in ("http://169.254.169.254/latest/meta-data/", "http://[fd00:ec2::254]/"):
        with pytest.raises(FetchRefusedError, match="metadata") as info:
            await fetch_bytes(url, policy)
        assert "allowed_hosts" in str(info.value)
    # ... and other link-local / private addresses are then allowed by the check.
    assert await resolve_and_check("169.254.1.1", 80, policy, shown="x") == ["169.254.1.1"]
    assert await resolve_and_check("10.0.0.1", 80, policy, shown="x") == ["10.0.0.1"]
    listed = FetchPolicy(allowed_hosts=("169.254.169.254",))
    assert await resolve_and_check("169.254.169.254", 80, listed, shown="x") == ["169.254.169.254"]


async def test_404_names_status_sanitised_url_and_what_to_do(server: Server):
    url = f"http://user:hunter22@127.0.0.1:{server.port}/missing.jpg?sig=SECRET"
    with pytest.raises(FetchFailedError) as info:
        await fetch_bytes(url, LOCAL)
    message = str(info.value)
    assert "HTTP 404" in message
    assert f"http://127.0.0.1:{server.port}/missing.jpg" in message
    assert "SECRET" not in message and "hunter22" not in message
    assert "image_url" in message
    assert info.value.status_code == 404


async def test_slow_server_hits_the_total_timeout(server: Server):
    policy = FetchPolicy(allowed_hosts=("127.0.0.1",), timeout_s=0.3)
    with pytest.raises(FetchFailedError, match="timeout_s"):
        await fetch_bytes(f"{server.base}/slow", policy)


async def test_body_over_limit_with_content_length(server: Server):
    policy = FetchPolicy(allowed_hosts=("127.0.0.1",), max_bytes=SMALL_LIMIT)
    with pytest.raises(FetchFailedError, match="max_bytes") as info:
        await fetch_bytes(f"{server.base}/big", policy)
    assert str(SMALL_LIMIT + 1) in str(info.value)  # the declared size is reported


async def test_body_over_limit_without_content_length(server: Server):
    policy = FetchPolicy(allowed_hosts=("127.0.0.1",), max_bytes=SMALL_LIMIT)
    with pytest.raises(FetchFailedError, match="max_bytes"):
        await fetch_bytes(f"{server.base}/big-chunked", policy)
    roomy = FetchPolicy(allowed_hosts=("127.0.0.1",), max_bytes=8 * 1024)
    got = await fetch_bytes(f"{server.base}/big-chunked", roomy)
    assert got.data == b"y" * 8 * 1024


async def test_connection_refused_is_a_fetch_failure():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(FetchFailedError, match="could not connect"):
        await fetch_bytes(f"http://127.0.0.1:{port}/x.jpg", LOCAL)


async def test_shared_client_is_used_and_its_redirect_setting_ignored(server: Server):
    # trust_env=False: conftest's SSL_CERT_FILE (the fal test CA) may not be written yet.
    async with httpx.AsyncClient(follow_redirects=True, trust_env=False) as client:
        target = "http://169.254.169.254/latest/meta-data/"
        with pytest.raises(FetchRefusedError, match="metadata"):
            await fetch_bytes(f"{server.base}/redirect?to={target}", LOCAL, client=client)
        got = await fetch_bytes(f"{server.base}/chain/1", LOCAL, client=client)
        assert got.content_type == "image/jpeg"


# --------------------------------------------------------------------------- redirects


async def test_redirect_to_metadata_address_is_refused(server: Server):
    target = "http://169.254.169.254/latest/meta-data/iam/"
    with pytest.raises(FetchRefusedError) as info:
        await fetch_bytes(f"{server.base}/redirect?to={target}", LOCAL)
    assert "169.254.169.254" in str(info.value)
    assert "metadata" in str(info.value)


async def test_redirect_to_private_name_is_refused_after_resolution(server: Server, resolver):
    resolver["internal.vendor.test"] = ["10.0.0.7"]
    with pytest.raises(FetchRefusedError, match=r"10\.0\.0\.7 is private"):
        await fetch_bytes(f"{server.base}/redirect?to=http://internal.vendor.test/a.jpg", LOCAL)


@pytest.mark.parametrize(
    "target", ["file:///etc/passwd", "ftp://127.0.0.1/a.jpg", "data:image/png;base64,AAAA"]
)
async def test_redirect_to_disallowed_scheme_is_refused(server: Server, target: str):
    with pytest.raises(FetchRefusedError, match="redirect") as info:
        await fetch_bytes(f"{server.base}/redirect?to={target}", LOCAL)
    assert "http or https" in str(info.value)


async def test_redirect_to_scheme_outside_policy_is_refused(server: Server):
    policy = FetchPolicy(allowed_schemes={"http"}, allowed_hosts=("127.0.0.1",))
    with pytest.raises(FetchRefusedError, match="allowed_schemes"):
        await fetch_bytes(f"{server.base}/redirect?to=https://127.0.0.1:1/a.jpg", policy)


async def test_redirects_are_followed_up_to_the_limit(server: Server, photo: bytes):
    policy = FetchPolicy(allowed_hosts=("127.0.0.1",), max_redirects=3)
    got = await fetch_bytes(f"{server.base}/chain/3", policy)
    assert got.data == photo
    assert got.final_url == f"{server.base}/chain/0"
    with pytest.raises(FetchFailedError, match="max_redirects=3"):
        await fetch_bytes(f"{server.base}/chain/4", policy)
    no_redirects = FetchPolicy(allowed_hosts=("127.0.0.1",), max_redirects=0)
    with pytest.raises(FetchFailedError, match="max_redirects=0"):
        await fetch_bytes(f"{server.base}/chain/1", no_redirects)


async def test_redirect_without_location_fails(server: Server):
    with pytest.raises(FetchFailedError, match="without a Location"):
        await fetch_bytes(f"{server.base}/no-location", LOCAL)


# --------------------------------------------------------------------------- names & pinning


async def test_name_is_resolved_once_and_connection_pinned(server: Server, resolver, photo):
    resolver["images.vendor.test"] = ["127.0.0.1"]
    url = f"http://images.vendor.test:{server.port}/host"
    got = await fetch_bytes(url, LOCAL)
    # the server saw the original Host header although we connected to the checked IP
    assert got.data.decode() == f"images.vendor.test:{server.port}"
    assert resolver["__calls__"] == ["images.vendor.test"]  # httpx did not resolve again
    got = await fetch_bytes(f"http://images.vendor.test:{server.port}/image.jpg", LOCAL)
    assert got.data == photo


async def test_international_name_is_resolved_and_sent_in_idna_form(server: Server, resolver):
    resolver["xn--bcher-kva.test"] = ["127.0.0.1"]
    got = await fetch_bytes(f"http://bücher.test:{server.port}/host", LOCAL)
    assert got.data.decode() == f"xn--bcher-kva.test:{server.port}"


async def test_any_private_resolved_address_refuses_the_name(resolver):
    resolver["mixed.vendor.test"] = ["93.184.216.34", "192.168.0.10"]
    with pytest.raises(FetchRefusedError) as info:
        await fetch_bytes("http://mixed.vendor.test/a.jpg", FetchPolicy())
    assert "192.168.0.10" in str(info.value) and "mixed.vendor.test" in str(info.value)


async def test_public_resolution_passes_the_check(resolver):
    resolver["cdn.vendor.test"] = ["93.184.216.34", "2606:2800:220:1::1"]
    addresses = await resolve_and_check("cdn.vendor.test", 443, FetchPolicy(), shown="u")
    assert addresses == ["93.184.216.34", "2606:2800:220:1::1"]


async def test_listed_hostname_allows_its_private_addresses(server: Server, resolver, photo):
    resolver["nas.office.test"] = ["127.0.0.1"]
    policy = FetchPolicy(allowed_hosts=("NAS.office.test",))
    got = await fetch_bytes(f"http://nas.office.test:{server.port}/image.jpg", policy)
    assert got.data == photo


async def test_unknown_name_is_a_fetch_failure(resolver):
    with pytest.raises(FetchFailedError, match=r"could not resolve host 'nowhere\.vendor\.test'"):
        await fetch_bytes("https://nowhere.vendor.test/a.jpg", FetchPolicy())


@pytest.mark.parametrize("host", ["localhost", "LOCALHOST.", "app.localhost", "ip6-localhost"])
async def test_localhost_names_refused_before_resolution(resolver, host: str):
    with pytest.raises(FetchRefusedError, match="local machine"):
        await fetch_bytes(f"http://{host}/a.jpg", FetchPolicy())
    assert resolver["__calls__"] == []


async def test_metadata_name_refused_even_with_private_networks(resolver):
    resolver["metadata.google.internal"] = ["169.254.169.254"]
    policy = FetchPolicy(allow_private_networks=True)
    with pytest.raises(FetchRefusedError, match="metadata"):
        await fetch_bytes("http://metadata.google.internal/computeMetadata/v1/", policy)
    assert resolver["__calls__"] == []


async def test_https_pinned_to_ip_verifies_certificate_for_the_name(photo: bytes, resolver):
    ca = trustme.CA()
    cert = ca.issue_cert("images.vendor.test")  # no IP SAN: only SNI/hostname can match
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    srv, runner = await _start(photo, ssl_context=server_ctx)
    try:
        resolver["images.vendor.test"] = ["127.0.0.1"]
        resolver["other.vendor.test"] = ["127.0.0.1"]
        async with httpx.AsyncClient(verify=client_ctx) as client:
            got = await fetch_bytes(
                f"https://images.vendor.test:{srv.port}/image.jpg", LOCAL, client=client
            )
            assert got.data == photo
            assert srv.seen_hosts == [f"images.vendor.test:{srv.port}"]
            # the certificate does not cover this name: verification must fail
            with pytest.raises(FetchFailedError, match=r"(?i)certificate"):
                await fetch_bytes(
                    f"https://other.vendor.test:{srv.port}/image.jpg", LOCAL, client=client
                )
    finally:
        await runner.cleanup()


# --------------------------------------------------------------------------- schemes


async def test_unsupported_scheme_is_refused():
    with pytest.raises(FetchRefusedError) as info:
        await fetch_bytes("ftp://files.vendor.test/a.jpg", FetchPolicy())
    message = str(info.value)
    assert "'ftp'" in message
    assert "https" in message and "data" in message  # the allowed ones are listed


async def test_scheme_outside_policy_is_refused():
    policy = FetchPolicy(allowed_schemes={"https"})
    with pytest.raises(FetchRefusedError, match="allowed_schemes") as info:
        await fetch_bytes("http://93.184.216.34/a.jpg", policy)
    assert "'http'" in str(info.value)


async def test_data_uri_decoded_and_limited(photo: bytes):
    uri = to_data_uri(photo, "image/jpeg")
    got = await fetch_bytes(uri, FetchPolicy())
    assert got.data == photo and got.content_type == "image/jpeg"
    with pytest.raises(FetchFailedError, match="max_bytes"):
        await fetch_bytes(uri, FetchPolicy(max_bytes=len(photo) - 1))
    assert (await fetch_bytes(uri, FetchPolicy(max_bytes=len(photo)))).data == photo
    with pytest.raises(FetchFailedError, match="base64"):
        await fetch_bytes("data:image/png;base64,@@not base64@@", FetchPolicy())
    with pytest.raises(FetchRefusedError, match="allowed_schemes"):
        await fetch_bytes(uri, FetchPolicy(allowed_schemes={"https"}))


# --------------------------------------------------------------------------- local files


@pytest.fixture
def tree(tmp_path, photo: bytes):
    root = tmp_path / "root"
    (root / "sub dir").mkdir(parents=True)
    (root / "sub dir" / "p.jpg").write_bytes(photo)
    outside = tmp_path / "outside.jpg"
    outside.write_bytes(b"secret outside the root")
    (tmp_path / "elsewhere").mkdir()
    return root, outside


async def test_file_url_and_bare_path_under_root(tree, photo: bytes):
    root, _ = tree
    policy = FetchPolicy(file_roots=(str(root),))
    path = root / "sub dir" / "p.jpg"
    got = await fetch_bytes(path.as_uri(), policy)  # percent-encoded space
    assert got.data == photo and got.content_type == "image/jpeg"
    assert got.final_url == os.path.realpath(path)
    assert (await fetch_bytes(str(path), policy)).data == photo
    inner_link = root / "link.jpg"
    inner_link.symlink_to(path)  # a symlink that stays inside the root is fine
    assert (await fetch_bytes(str(inner_link), policy)).data == photo


async def test_files_outside_root_are_refused(tree):
    root, outside = tree
    policy = FetchPolicy(file_roots=(str(root),))
    escape = f"{root}/sub dir/../../outside.jpg"
    (root / "escape.jpg").symlink_to(outside)
    (root / "dirlink").symlink_to(outside.parent / "elsewhere")
    (outside.parent / "elsewhere" / "x.jpg").write_bytes(b"x")
    for candidate in (
        str(outside),
        outside.as_uri(),
        escape,
        str(root / "escape.jpg"),
        (root / "escape.jpg").as_uri(),
        str(root / "dirlink" / "x.jpg"),
    ):
        with pytest.raises(FetchRefusedError, match=r"outside FetchPolicy\.file_roots"):
            await fetch_bytes(candidate, policy)
    # a sibling directory sharing the root's name as a prefix is outside too
    sibling = root.parent / "root-evil"
    sibling.mkdir()
    (sibling / "a.jpg").write_bytes(b"a")
    with pytest.raises(FetchRefusedError):
        await fetch_bytes(str(sibling / "a.jpg"), policy)


async def test_local_files_refused_without_roots_or_file_scheme(tree):
    root, _ = tree
    path = root / "sub dir" / "p.jpg"
    with pytest.raises(FetchRefusedError, match="file_roots is empty"):
        await fetch_bytes(str(path), FetchPolicy())
    no_file = FetchPolicy(file_roots=(str(root),), allowed_schemes={"https", "data"})
    with pytest.raises(FetchRefusedError, match="'file'"):
        await fetch_bytes(str(path), no_file)
    with pytest.raises(FetchRefusedError, match="remote host"):
        await fetch_bytes("file://fileserver/share/p.jpg", FetchPolicy(file_roots=(str(root),)))


async def test_local_file_failures(tree, photo: bytes):
    root, _ = tree
    policy = FetchPolicy(file_roots=(str(root),))
    with pytest.raises(FetchFailedError, match="does not exist"):
        await fetch_bytes(str(root / "missing.jpg"), policy)
    with pytest.raises(FetchFailedError, match="not a regular file"):
        await fetch_bytes(str(root / "sub dir"), policy)
    os.mkfifo(root / "pipe.jpg")  # must be refused without blocking on open
    with pytest.raises(FetchFailedError, match="not a regular file"):
        await fetch_bytes(str(root / "pipe.jpg"), policy)
    small = FetchPolicy(file_roots=(str(root),), max_bytes=len(photo) - 1)
    with pytest.raises(FetchFailedError, match="max_bytes"):
        await fetch_bytes(str(root / "sub dir" / "p.jpg"), small)


# --------------------------------------------------------------------------- buckets


@pytest.mark.parametrize(("scheme", "package"), [("s3", "s3fs"), ("gs", "gcsfs")])
async def test_bucket_without_its_fsspec_package_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, scheme: str, package: str
):
    monkeypatch.setitem(sys.modules, package, None)  # import fails as if not installed
    with pytest.raises(FetchFailedError) as info:
        await fetch_bytes(f"{scheme}://bucket/a.jpg?X-Amz-Signature=SECRET", FetchPolicy())
    message = str(info.value)
    assert f"pip install {package}" in message
    assert f"{scheme}://bucket/a.jpg" in message and "SECRET" not in message


async def test_bucket_read_through_fsspec_with_limit(monkeypatch: pytest.MonkeyPatch, photo):
    from fsspec.implementations.memory import MemoryFileSystem

    class FakeS3(MemoryFileSystem):
        protocol = ("s3",)
        store: dict = {}  # noqa: RUF012 - fsspec keeps the store on the class
        pseudo_dirs: list = [""]  # noqa: RUF012

        @classmethod
        def _strip_protocol(cls, path):
            return "/" + str(path).removeprefix("s3://").strip("/")

    monkeypatch.setitem(sys.modules["fsspec.registry"]._registry, "s3", FakeS3)
    fs = FakeS3(skip_instance_cache=True)
    fs.pipe("s3://bucket/a.jpg", photo)
    got = await fetch_bytes("s3://bucket/a.jpg", FetchPolicy())
    assert got.data == photo and got.content_type == "image/jpeg"
    with pytest.raises(FetchFailedError, match="max_bytes"):
        await fetch_bytes("s3://bucket/a.jpg", FetchPolicy(max_bytes=len(photo) - 1))
    with pytest.raises(FetchFailedError, match="does not exist"):
        await fetch_bytes("s3://bucket/missing.jpg", FetchPolicy())


def test_errors_are_bria_errors():
    assert issubclass(FetchFailedError, BriaError)
    assert issubclass(FetchRefusedError, BriaError)
    assert not issubclass(FetchFailedError, FetchRefusedError)
