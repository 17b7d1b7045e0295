"""Safe fetching of catalog image URLs (they come from vendors, so trust none of them).

:func:`fetch_bytes` reads ``http(s)://``, ``data:``, ``file://`` (and bare local
paths), ``s3://`` and ``gs://`` inputs under a :class:`FetchPolicy`. It raises
only two errors:

- :class:`~bria_dagster.errors.FetchRefusedError` when the policy forbids the
  input (scheme, host or address, local path outside ``file_roots``);
- :class:`~bria_dagster.errors.FetchFailedError` when an allowed input could not
  be read (HTTP error status, timeout, too large, too many redirects, DNS or
  connection failure, missing file, malformed data URI, missing s3fs/gcsfs).

Every message names the sanitised URL (no userinfo, no query string), the reason,
and the ``FetchPolicy`` setting that would allow it.

Whether an input may be read at all (and the SSRF defence for http(s): addresses
checked once, connections pinned to them, redirects re-checked at every hop) is
:mod:`bria_dagster.client.fetch_policy`'s; this module reads what it allows.
"""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import unquote, urljoin, urlsplit

import httpx

from ..errors import FetchFailedError, FetchRefusedError, ImageDecodeError
from .fetch_policy import (
    FetchPolicy,
    check_scheme,
    mib,
    parse_ip,
    resolve_and_check,
    sanitize_url,
    scheme_of,
    too_large,
)
from .images import parse_data_uri, sniff_content_type

__all__ = ["Fetched", "fetch_bytes", "fetch_client"]

_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_CHUNK = 64 * 1024


@dataclass(frozen=True)
class Fetched:
    """Bytes read by :func:`fetch_bytes`, their media type (if known) and the final URL."""

    data: bytes
    #: media type without parameters (HTTP Content-Type, data: header, or sniffed
    #: from the bytes for files and buckets); None when unknown.
    content_type: str | None
    #: where the bytes came from after redirects, sanitised (no userinfo, query or
    #: fragment) so it is safe to log and store; the real path for local files.
    final_url: str


def fetch_client(policy: FetchPolicy) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` to share across many :func:`fetch_bytes` calls.

    Building a client costs an SSL context (~0.1 s of blocking work); a batch of
    fetches should build one, not one per URL.
    """
    return httpx.AsyncClient(
        follow_redirects=False,
        timeout=policy.timeout_s,
        trust_env=False,  # proxies would resolve names themselves
    )


async def fetch_bytes(
    url: str, policy: FetchPolicy, *, client: httpx.AsyncClient | None = None
) -> Fetched:
    """Read ``url`` under ``policy`` and return its bytes.

    ``url`` may be ``http(s)://``, ``data:``, ``file://``, a bare local path
    (needs ``"file"`` in allowed_schemes and a matching ``file_roots`` entry),
    ``s3://`` or ``gs://`` (need s3fs / gcsfs installed). ``client`` is an
    optional shared ``httpx.AsyncClient``; redirects are never left to it. The
    whole fetch (resolution, redirects, body) is bounded by ``policy.timeout_s``.

    DNS rebinding: names are resolved and checked once, and the connection goes
    to the checked address (Host header and TLS SNI keep the name), so httpx
    never resolves the name a second time. See the module docstring for the
    proxy caveat.

    Raises FetchRefusedError (policy) or FetchFailedError (could not read).
    """
    text = str(url).strip()
    shown = sanitize_url(text)
    scheme = scheme_of(text)
    check_scheme(scheme or "file", shown, policy)
    try:
        async with asyncio.timeout(policy.timeout_s):
            if scheme is None:
                return await _fetch_file(text, text, shown, policy)
            if scheme == "data":
                return _fetch_data(text, shown, policy)
            if scheme == "file":
                return await _fetch_file(_file_url_path(text, shown), text, shown, policy)
            if scheme in ("s3", "gs"):
                return await _fetch_fsspec(text, scheme, shown, policy)
            return await _fetch_http(text, shown, policy, client)
    except TimeoutError:
        raise FetchFailedError(
            f"{shown} did not finish within FetchPolicy.timeout_s={policy.timeout_s}s; "
            "the server is slow or unreachable: retry later or raise timeout_s",
            url=shown,
        ) from None


# --------------------------------------------------------------------------- data:


def _fetch_data(text: str, shown: str, policy: FetchPolicy) -> Fetched:
    payload_len = len(text) - text.find(",") - 1 if "," in text else 0
    header = text[5 : text.find(",")] if "," in text else ""
    estimate = payload_len * 3 // 4 if "base64" in header.split(";")[1:] else payload_len
    if estimate > policy.max_bytes + 3:  # base64 padding slack; exact check below
        raise too_large(shown, estimate, policy)
    try:
        data, content_type = parse_data_uri(text)
    except ImageDecodeError as exc:
        raise FetchFailedError(f"{shown}: {exc}", url=shown) from None
    if len(data) > policy.max_bytes:
        raise too_large(shown, len(data), policy)
    return Fetched(data=data, content_type=content_type, final_url=shown)


# --------------------------------------------------------------------------- file


def _file_url_path(text: str, shown: str) -> str:
    parts = urlsplit(text)
    if parts.netloc not in ("", "localhost"):
        raise FetchRefusedError(
            f"{shown}: file URL names a remote host ({parts.netloc!r}); only local files "
            "(file:///path) are read"
        )
    return unquote(parts.path)


def _under_root(real: str, roots: Iterable[str]) -> bool:
    for root in roots:
        real_root = os.path.realpath(os.path.expanduser(root))
        try:
            if os.path.commonpath([real, real_root]) == real_root:
                return True
        except ValueError:  # different drives on Windows
            continue
    return False


async def _fetch_file(path: str, original: str, shown: str, policy: FetchPolicy) -> Fetched:
    if not policy.file_roots:
        raise FetchRefusedError(
            f"local file {shown} refused: FetchPolicy.file_roots is empty, so no local file "
            "may be read; add the directory holding the images to file_roots"
        )
    real = os.path.realpath(os.path.expanduser(path))
    if not _under_root(real, policy.file_roots):
        raise FetchRefusedError(
            f"local file {shown} resolves to {real!r}, outside FetchPolicy.file_roots "
            f"{list(policy.file_roots)} (../ and symlinks are resolved); move the file "
            "under a root or add its directory to file_roots"
        )
    data = await asyncio.to_thread(_read_regular_file, real, shown, policy.max_bytes)
    content_type = sniff_content_type(data)
    return Fetched(
        data=data,
        content_type=None if content_type == "application/octet-stream" else content_type,
        final_url=real,
    )


def _read_regular_file(real: str, shown: str, max_bytes: int) -> bytes:
    # O_NOFOLLOW: the resolved path must not have become a symlink since the
    # check; O_NONBLOCK: a FIFO must not block the open (it is refused below).
    flags = os.O_RDONLY
    for extra in ("O_NOFOLLOW", "O_NONBLOCK", "O_BINARY"):
        flags |= getattr(os, extra, 0)
    try:
        fd = os.open(real, flags)
    except FileNotFoundError:
        raise FetchFailedError(
            f"local file {shown} does not exist; check the catalog path", url=shown
        ) from None
    except OSError as exc:
        raise FetchFailedError(
            f"local file {shown} could not be opened: {exc.strerror or exc}", url=shown
        ) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise FetchFailedError(
                f"local file {shown} is not a regular file; give the path of an image file",
                url=shown,
            )
        if info.st_size > max_bytes:
            raise FetchFailedError(
                f"local file {shown} is {mib(info.st_size)}, over FetchPolicy.max_bytes="
                f"{mib(max_bytes)}; raise max_bytes or give a smaller image",
                url=shown,
            )
        handle = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with handle:
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise FetchFailedError(
            f"local file {shown} grew over FetchPolicy.max_bytes={mib(max_bytes)} while "
            "being read; raise max_bytes or give a smaller image",
            url=shown,
        )
    return data


# --------------------------------------------------------------------------- s3 / gs

_FSSPEC_PACKAGES = {"s3": "s3fs", "gs": "gcsfs"}


async def _fetch_fsspec(text: str, scheme: str, shown: str, policy: FetchPolicy) -> Fetched:
    return await asyncio.to_thread(_read_fsspec, text, scheme, shown, policy.max_bytes)


def _read_fsspec(text: str, scheme: str, shown: str, max_bytes: int) -> Fetched:
    import fsspec

    package = _FSSPEC_PACKAGES[scheme]
    try:
        fs, path = fsspec.core.url_to_fs(text)
    except ImportError:
        raise FetchFailedError(
            f"{shown}: reading {scheme}:// URLs needs the {package} package, which is not "
            f"installed; run `pip install {package}` (and configure its credentials)",
            url=shown,
        ) from None
    try:
        size = fs.size(path)
        if size is not None and size > max_bytes:
            raise FetchFailedError(
                f"{shown} is {mib(int(size))}, over FetchPolicy.max_bytes={mib(max_bytes)}; "
                "raise max_bytes or give a smaller image",
                url=shown,
            )
        with fs.open(path, "rb") as handle:
            data = handle.read(max_bytes + 1)
    except FetchFailedError:
        raise
    except FileNotFoundError:
        raise FetchFailedError(
            f"{shown} does not exist; check the catalog's image URL", url=shown
        ) from None
    except Exception as exc:
        raise FetchFailedError(
            f"{shown} could not be read through {package}: {type(exc).__name__}: {exc}; "
            "check the bucket, the key and the credentials",
            url=shown,
        ) from None
    if len(data) > max_bytes:
        raise FetchFailedError(
            f"{shown} is larger than FetchPolicy.max_bytes={mib(max_bytes)}; "
            "raise max_bytes or give a smaller image",
            url=shown,
        )
    return Fetched(data=data, content_type=_sniffed(data), final_url=shown)


def _sniffed(data: bytes) -> str | None:
    kind = sniff_content_type(data)
    return None if kind == "application/octet-stream" else kind


# --------------------------------------------------------------------------- http(s)


def _what_to_do(status: int) -> str:
    if status in (404, 410):
        return "the image is gone or the URL is wrong: check the catalog's image_url"
    if status in (401, 403):
        return "the server refused access: the URL may need credentials or a fresh signed URL"
    if status == 429 or status >= 500:
        return "the vendor server is overloaded or failing: retry later"
    return "check the catalog's image_url"


async def _fetch_http(
    text: str, shown: str, policy: FetchPolicy, client: httpx.AsyncClient | None
) -> Fetched:
    own_client = client is None
    if client is None:
        client = fetch_client(policy)
    try:
        return await _follow(text, shown, policy, client)
    finally:
        if own_client:
            await client.aclose()


async def _follow(text: str, shown: str, policy: FetchPolicy, client: httpx.AsyncClient) -> Fetched:
    current = text
    current_shown = shown
    for hop in range(policy.max_redirects + 1):
        response = await _send_checked(current, current_shown, policy, client)
        try:
            if response.status_code in _REDIRECT_STATUSES:
                location = response.headers.get("location")
                if not location:
                    raise FetchFailedError(
                        f"{current_shown} answered {response.status_code} without a Location "
                        "header; the server is misconfigured: report it to the vendor",
                        url=current_shown,
                        status_code=response.status_code,
                    )
                target = urljoin(current, location.strip())
                target_shown = sanitize_url(target)
                scheme = scheme_of(target) or ""
                where = f"redirect from {current_shown} to "
                if scheme not in ("http", "https"):
                    raise FetchRefusedError(
                        f"{where}{target_shown}: scheme {scheme or '(none)'!r} refused; "
                        "redirects may only lead to http or https URLs"
                    )
                check_scheme(scheme, target_shown, policy, what=where)
                if hop == policy.max_redirects:
                    raise FetchFailedError(
                        f"{shown} redirected more than FetchPolicy.max_redirects="
                        f"{policy.max_redirects} times (last to {target_shown}); give the "
                        "final image URL or raise max_redirects",
                        url=shown,
                        status_code=response.status_code,
                    )
                current, current_shown = target, target_shown
                continue
            if response.status_code >= 400 or response.status_code < 200:
                raise FetchFailedError(
                    f"{current_shown} answered HTTP {response.status_code} "
                    f"{response.reason_phrase}".rstrip()
                    + f"; {_what_to_do(response.status_code)}",
                    url=current_shown,
                    status_code=response.status_code,
                )
            if response.status_code != 200:
                raise FetchFailedError(
                    f"{current_shown} answered HTTP {response.status_code} "
                    f"{response.reason_phrase} instead of 200 with the image; "
                    "check the catalog's image_url",
                    url=current_shown,
                    status_code=response.status_code,
                )
            data = await _read_body(response, current_shown, policy)
            content_type = response.headers.get("content-type")
            if content_type:
                content_type = content_type.split(";", 1)[0].strip().lower() or None
            return Fetched(data=data, content_type=content_type, final_url=current_shown)
        finally:
            await response.aclose()
    raise AssertionError("unreachable: the redirect loop always returns or raises")


async def _send_checked(
    url: str, shown: str, policy: FetchPolicy, client: httpx.AsyncClient
) -> httpx.Response:
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError) as exc:
        raise FetchRefusedError(f"{shown} is not a valid URL ({exc}); fix the catalog") from None
    host = parsed.raw_host.decode("ascii")  # IDNA-encoded: what DNS, Host and SNI need
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    addresses = await resolve_and_check(host, port, policy, shown=shown)

    headers = {"User-Agent": policy.user_agent, "Accept": "image/*, */*;q=0.5"}
    literal = parse_ip(host) is not None
    last_error: Exception | None = None
    for address in [host] if literal else addresses:
        extensions: dict[str, object] = {}
        target = parsed
        if not literal:
            # Pin the checked address: no second DNS lookup inside httpx.
            target = parsed.copy_with(host=address)
            headers["Host"] = parsed.netloc.decode("ascii").rsplit("@", 1)[-1]
            if parsed.scheme == "https":
                extensions["sni_hostname"] = host
                headers["Connection"] = "close"
        request = client.build_request(
            "GET", target, headers=headers, extensions=extensions, timeout=policy.timeout_s
        )
        try:
            return await client.send(request, stream=True, follow_redirects=False)
        except httpx.ConnectError as exc:
            last_error = exc  # try the next checked address
        except httpx.InvalidURL as exc:
            # httpx parses a redirect's Location even when not following it, and
            # gives up on targets such as data: URIs before we can read them.
            raise FetchRefusedError(
                f"{shown} redirected to a URL that is not a valid http(s) URL ({exc}); "
                "redirects may only lead to http or https URLs: give the final image URL"
            ) from None
        except httpx.TimeoutException as exc:
            raise FetchFailedError(
                f"{shown} timed out ({type(exc).__name__}); the server is slow or unreachable: "
                "retry later or raise FetchPolicy.timeout_s",
                url=shown,
            ) from None
        except httpx.HTTPError as exc:
            raise FetchFailedError(
                f"{shown} could not be fetched: {type(exc).__name__}: {exc}; "
                "check the URL and that the server is reachable",
                url=shown,
            ) from None
    raise FetchFailedError(
        f"could not connect to {shown} (tried {', '.join(addresses)}): {last_error}; "
        "check that the server is up and reachable",
        url=shown,
    )


async def _read_body(response: httpx.Response, shown: str, policy: FetchPolicy) -> bytes:
    declared = response.headers.get("content-length")
    if declared is not None and declared.strip().isdigit() and int(declared) > policy.max_bytes:
        raise too_large(shown, int(declared), policy)
    chunks: list[bytes] = []
    total = 0
    try:
        async for chunk in response.aiter_bytes(_CHUNK):
            total += len(chunk)
            if total > policy.max_bytes:
                raise too_large(shown, None, policy)
            chunks.append(chunk)
    except httpx.TimeoutException as exc:
        raise FetchFailedError(
            f"{shown} timed out while sending the body ({type(exc).__name__}); "
            "retry later or raise FetchPolicy.timeout_s",
            url=shown,
        ) from None
    except httpx.HTTPError as exc:
        raise FetchFailedError(
            f"{shown} broke off while sending the body: {type(exc).__name__}: {exc}; retry later",
            url=shown,
        ) from None
    return b"".join(chunks)
