"""What a fetch may read: the policy over vendor image URLs, and its SSRF defence.

A :class:`FetchPolicy` says which schemes, hosts, local folders, sizes and times a
fetch (:func:`~bria_dagster.client.fetch.fetch_bytes`) may use; the functions here
decide, before any byte is read, whether an input is allowed, and every refusal
names the sanitised URL and the setting that would allow it.

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
import re
import socket
from collections.abc import Iterable
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..errors import FetchFailedError, FetchRefusedError

__all__ = [
    "DEFAULT_SCHEMES",
    "FetchPolicy",
    "check_scheme",
    "classify_address",
    "mib",
    "parse_ip",
    "resolve_and_check",
    "sanitize_url",
    "scheme_of",
    "too_large",
]

DEFAULT_SCHEMES = frozenset({"http", "https", "s3", "gs", "data", "file"})
SUPPORTED_SCHEMES = DEFAULT_SCHEMES

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


def mib(n: int) -> str:
    if n < 1024 * 1024:
        return f"{n} bytes"
    return f"{n} bytes ({n / (1024 * 1024):.1f} MiB)"


def too_large(shown: str, size: int | None, policy: FetchPolicy) -> FetchFailedError:
    what = f"is {mib(size)}" if size is not None else "is larger than the limit"
    return FetchFailedError(
        f"{shown} {what}, over FetchPolicy.max_bytes={mib(policy.max_bytes)}; "
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


def parse_ip(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(_normalise_host(host))
    except ValueError:
        return None


def _host_listed(host: str, policy: FetchPolicy) -> bool:
    name = _normalise_host(host)
    ip = parse_ip(name)
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
    literal = parse_ip(name)
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


# --------------------------------------------------------------------------- schemes

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):")


def scheme_of(url: str) -> str | None:
    match = _SCHEME.match(url)
    if match is None or len(match.group(1)) == 1:  # no scheme, or a Windows drive letter
        return None
    return match.group(1).lower()


def check_scheme(scheme: str, shown: str, policy: FetchPolicy, *, what: str = "") -> None:
    allowed = ", ".join(sorted(policy.allowed_schemes & SUPPORTED_SCHEMES)) or "none"
    if scheme not in SUPPORTED_SCHEMES:
        raise FetchRefusedError(
            f"{what}{shown}: scheme {scheme!r} is not supported (supported: "
            f"{', '.join(sorted(SUPPORTED_SCHEMES))}; allowed by this policy: {allowed}); "
            "give the image as one of those"
        )
    if scheme not in policy.allowed_schemes:
        raise FetchRefusedError(
            f"{what}{shown}: scheme {scheme!r} is not in FetchPolicy.allowed_schemes "
            f"({allowed}); add it there to allow it"
        )
