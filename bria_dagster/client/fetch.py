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

Server-side request forgery (SSRF) defence for http(s):

- the host is resolved once (``loop.getaddrinfo``) and refused if *any* address
  is loopback, private, link-local, carrier-grade NAT, multicast, reserved,
  unspecified or otherwise not globally routable (see :func:`classify_address`);
  IPv4 embedded in IPv6 (``::ffff:a.b.c.d``, NAT64, 6to4) is classified as IPv4;
- redirects are followed by hand, re-checking scheme and host at every hop;
- **DNS rebinding**: checking a name and then letting httpx resolve it again
  would let a hostile DNS server answer a public address to the check and
  ``127.0.0.1`` to the connection. We avoid the second resolution: the request
  is sent to the checked IP address itself, with the original ``Host`` header
  and, for https, the original name as TLS SNI and certificate hostname
  (httpcore's ``sni_hostname`` extension), so certificates are still verified
  against the hostname. Pinned https requests send ``Connection: close`` so a
  pooled TLS connection verified for one hostname is never reused for another
  name that happens to share the IP address. Remaining limitation: a client
  configured with a proxy lets the proxy resolve and connect (the default client
  built here ignores proxy environment variables).
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import re
import socket
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import unquote, urljoin, urlsplit, urlunsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..errors import FetchFailedError, FetchRefusedError, ImageDecodeError
from .images import parse_data_uri, sniff_content_type

__all__ = [
    "DEFAULT_SCHEMES",
    "FetchPolicy",
    "Fetched",
    "classify_address",
    "fetch_bytes",
    "fetch_client",
    "resolve_and_check",
    "sanitize_url",
]

DEFAULT_SCHEMES = frozenset({"http", "https", "s3", "gs", "data", "file"})
_SUPPORTED_SCHEMES = DEFAULT_SCHEMES
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_CHUNK = 64 * 1024

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Cloud instance-metadata endpoints: refused even with allow_private_networks,
# unless listed in allowed_hosts. (AWS/GCP/Azure/OpenStack, AWS IPv6, AWS ECS task
# metadata, Alibaba Cloud.)
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in ("169.254.169.254", "fd00:ec2::254", "169.254.170.2", "100.100.100.200")
)
_METADATA_NAMES = frozenset({"metadata.google.internal", "metadata.goog", "metadata"})
_LOOPBACK_NAMES = frozenset(
    {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback", "localhost6"}
)
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_ULA = ipaddress.ip_network("fc00::/7")
_RFC1918 = tuple(ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"))


class FetchPolicy(BaseModel):
    """What :func:`fetch_bytes` may read. The defaults are safe for untrusted vendor URLs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    allowed_schemes: frozenset[str] = DEFAULT_SCHEMES
    #: file:// URLs and bare paths are allowed only under these directories
    #: (compared after realpath, so ``../`` and symlinks cannot escape); empty
    #: refuses every local file.
    file_roots: tuple[str, ...] = ()
    #: allow loopback/private/link-local/CGNAT/... addresses (not cloud metadata).
    allow_private_networks: bool = False
    #: hostnames, IP addresses or CIDR networks allowed even if private or loopback.
    allowed_hosts: tuple[str, ...] = ()
    max_bytes: int = Field(default=50 * 1024 * 1024, gt=0)
    #: total seconds per fetch, DNS, redirects and body included.
    timeout_s: float = Field(default=30.0, gt=0)
    max_redirects: int = Field(default=5, ge=0)
    user_agent: str = "bria-dagster/0.1 (catalog image fetch)"

    @field_validator("allowed_schemes", mode="before")
    @classmethod
    def _lower_schemes(cls, value: object) -> object:
        if isinstance(value, str):
            value = [value]
        if isinstance(value, Iterable):
            return frozenset(str(s).lower().rstrip(":") for s in value)
        return value

    @field_validator("file_roots", "allowed_hosts", mode="before")
    @classmethod
    def _tuple_of_str(cls, value: object) -> object:
        if isinstance(value, str):
            return (value,)
        return value

    @field_validator("file_roots")
    @classmethod
    def _roots_not_empty(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if any(not str(root).strip() for root in value):
            raise ValueError("file_roots entries must be non-empty directory paths")
        return tuple(str(root) for root in value)


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


# --------------------------------------------------------------------------- messages


def sanitize_url(url: str, *, limit: int = 200) -> str:
    """``url`` safe for messages and logs: no userinfo, query string or fragment.

    ``data:`` URIs are shortened to their header and payload length.
    """
    text = str(url)
    if text[:5].lower() == "data:":
        header = text[5:].split(",", 1)[0][:60]
        return f"data:{header},... ({len(text)} chars)"
    try:
        parts = urlsplit(text)
    except ValueError:
        cut = re.split(r"[?#]", text, maxsplit=1)[0]
        return cut[:limit]
    netloc = parts.netloc.rsplit("@", 1)[-1]
    clean = urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    if len(clean) > limit:
        clean = clean[: limit - 3] + "..."
    return clean


def _mib(n: int) -> str:
    if n < 1024 * 1024:
        return f"{n} bytes"
    return f"{n} bytes ({n / (1024 * 1024):.1f} MiB)"


def _too_large(shown: str, size: int | None, policy: FetchPolicy) -> FetchFailedError:
    what = f"is {_mib(size)}" if size is not None else "is larger than the limit"
    return FetchFailedError(
        f"{shown} {what}, over FetchPolicy.max_bytes={_mib(policy.max_bytes)}; "
        "raise max_bytes or give a smaller image",
        url=shown,
    )


# --------------------------------------------------------------------------- addresses


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.sixtofour is not None:
        return ip.sixtofour
    return None


def classify_address(address: str | IPAddress) -> str | None:
    """Why ``address`` is not a public internet address, or ``None`` if it is.

    The reason is a short phrase such as ``"loopback"`` or ``"private (RFC 1918)"``.
    """
    ip = ipaddress.ip_address(address) if isinstance(address, str) else address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id:
            ip = ipaddress.IPv6Address(str(ip).split("%", 1)[0])
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            inner = classify_address(embedded)
            return f"{inner} (IPv4 {embedded} embedded in IPv6)" if inner else None
    if ip in METADATA_ADDRESSES:
        return "a cloud instance-metadata endpoint"
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    if isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT:
        return "carrier-grade NAT (100.64.0.0/10)"
    if isinstance(ip, ipaddress.IPv6Address) and ip in _ULA:
        return "private (unique local fc00::/7)"
    if isinstance(ip, ipaddress.IPv4Address) and any(ip in net for net in _RFC1918):
        return "private (RFC 1918)"
    if ip.is_reserved:
        return "reserved"
    if ip.is_private:
        return "private / special-purpose"
    if not ip.is_global:
        return "not globally routable"
    return None


def _normalise_host(host: str) -> str:
    return host.strip().strip("[]").rstrip(".").lower()


def _parse_ip(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(_normalise_host(host))
    except ValueError:
        return None


def _host_listed(host: str, policy: FetchPolicy) -> bool:
    name = _normalise_host(host)
    ip = _parse_ip(name)
    return any(
        (ip is not None and _ip_listed(ip, (entry,))) or _normalise_host(entry) == name
        for entry in policy.allowed_hosts
    )


def _ip_listed(ip: IPAddress, entries: Iterable[str]) -> bool:
    for entry in entries:
        text = _normalise_host(entry)
        try:
            if "/" in text:
                if ip in ipaddress.ip_network(text, strict=False):
                    return True
            elif ip == ipaddress.ip_address(text):
                return True
        except ValueError:
            continue
    return False


async def _resolve_host(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (tests monkeypatch this)."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    seen: list[str] = []
    for _family, _type, _proto, _canon, sockaddr in infos:
        addr = str(sockaddr[0])
        if addr not in seen:
            seen.append(addr)
    return seen


async def resolve_and_check(host: str, port: int, policy: FetchPolicy, *, shown: str) -> list[str]:
    """Resolve ``host`` and return its addresses if the policy allows all of them.

    Raises FetchRefusedError naming the first offending address and the setting
    that would allow it, FetchFailedError if the name does not resolve.
    """
    name = _normalise_host(host)
    listed_name = _host_listed(name, policy)
    literal = _parse_ip(name)
    if not name:
        raise FetchRefusedError(f"{shown} has no host; give an absolute http(s) URL")

    if literal is None and not listed_name:
        if name in _METADATA_NAMES:
            raise FetchRefusedError(
                f"{shown} names the cloud metadata service ({name}); refused always "
                "unless the host is listed in FetchPolicy.allowed_hosts"
            )
        if (
            name in _LOOPBACK_NAMES or name.endswith(".localhost")
        ) and not policy.allow_private_networks:
            raise FetchRefusedError(
                f"{shown} names the local machine ({name}); refused by default. "
                "Set FetchPolicy.allow_private_networks=True or list the host in allowed_hosts"
            )

    if literal is not None:
        addresses = [str(literal)]
    else:
        try:
            addresses = await _resolve_host(name, port)
        except (OSError, UnicodeError) as exc:
            raise FetchFailedError(
                f"could not resolve host {name!r} of {shown}: {exc}; "
                "check the URL's host name and this machine's DNS",
                url=shown,
            ) from None
        if not addresses:
            raise FetchFailedError(
                f"host {name!r} of {shown} resolved to no address; check the URL", url=shown
            )

    if listed_name:
        return addresses
    for addr in addresses:
        ip = ipaddress.ip_address(addr)
        reason = classify_address(ip)
        if reason is None or _ip_listed(ip, policy.allowed_hosts):
            continue
        is_metadata = "cloud instance-metadata" in reason
        if policy.allow_private_networks and not is_metadata:
            continue
        via = "" if literal is not None else f" (host {name!r} resolves to it)"
        if is_metadata:
            hint = (
                "refused even with allow_private_networks; list "
                f"{addr!r} in FetchPolicy.allowed_hosts to allow it"
            )
        else:
            listed = f"{addr!r}" if literal is not None else f"{name!r} or {addr!r}"
            hint = (
                "set FetchPolicy.allow_private_networks=True or list "
                f"{listed} in FetchPolicy.allowed_hosts"
            )
        raise FetchRefusedError(f"{shown}: address {addr} is {reason}{via}; {hint}")
    return addresses


# --------------------------------------------------------------------------- dispatch

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):")


def _scheme_of(url: str) -> str | None:
    match = _SCHEME.match(url)
    if match is None or len(match.group(1)) == 1:  # no scheme, or a Windows drive letter
        return None
    return match.group(1).lower()


def _check_scheme(scheme: str, shown: str, policy: FetchPolicy, *, what: str = "") -> None:
    allowed = ", ".join(sorted(policy.allowed_schemes & _SUPPORTED_SCHEMES)) or "none"
    if scheme not in _SUPPORTED_SCHEMES:
        raise FetchRefusedError(
            f"{what}{shown}: scheme {scheme!r} is not supported (supported: "
            f"{', '.join(sorted(_SUPPORTED_SCHEMES))}; allowed by this policy: {allowed}); "
            "give the image as one of those"
        )
    if scheme not in policy.allowed_schemes:
        raise FetchRefusedError(
            f"{what}{shown}: scheme {scheme!r} is not in FetchPolicy.allowed_schemes "
            f"({allowed}); add it there to allow it"
        )


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
    scheme = _scheme_of(text)
    _check_scheme(scheme or "file", shown, policy)
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
        raise _too_large(shown, estimate, policy)
    try:
        data, content_type = parse_data_uri(text)
    except ImageDecodeError as exc:
        raise FetchFailedError(f"{shown}: {exc}", url=shown) from None
    if len(data) > policy.max_bytes:
        raise _too_large(shown, len(data), policy)
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
                f"local file {shown} is {_mib(info.st_size)}, over FetchPolicy.max_bytes="
                f"{_mib(max_bytes)}; raise max_bytes or give a smaller image",
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
            f"local file {shown} grew over FetchPolicy.max_bytes={_mib(max_bytes)} while "
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
                f"{shown} is {_mib(int(size))}, over FetchPolicy.max_bytes={_mib(max_bytes)}; "
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
            f"{shown} is larger than FetchPolicy.max_bytes={_mib(max_bytes)}; "
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
                scheme = _scheme_of(target) or ""
                where = f"redirect from {current_shown} to "
                if scheme not in ("http", "https"):
                    raise FetchRefusedError(
                        f"{where}{target_shown}: scheme {scheme or '(none)'!r} refused; "
                        "redirects may only lead to http or https URLs"
                    )
                _check_scheme(scheme, target_shown, policy, what=where)
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
    literal = _parse_ip(host) is not None
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
        raise _too_large(shown, int(declared), policy)
    chunks: list[bytes] = []
    total = 0
    try:
        async for chunk in response.aiter_bytes(_CHUNK):
            total += len(chunk)
            if total > policy.max_bytes:
                raise _too_large(shown, None, policy)
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
