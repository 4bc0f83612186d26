"""Who is on the other end of a request: its address (through trusted proxies only), its client certificate,
and the CIDR allowlists that admit it."""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import ssl
from typing import Any, NamedTuple

from aiohttp import web

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class Allowlist:
    """CIDR blocks; empty admits every address."""

    def __init__(self, cidrs: tuple[str, ...]) -> None:
        self._networks = tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)

    def __bool__(self) -> bool:
        return bool(self._networks)

    def admits(self, ip: IPAddress | None) -> bool:
        if not self._networks:
            return True
        return ip is not None and any(ip in net for net in self._networks)


class Peer(NamedTuple):  # a NamedTuple: built on every request, and a frozen dataclass costs 4x more to make
    ip: IPAddress | None
    cert_fingerprint: str | None = None  # "sha256:<hex>" of a verified client certificate (mTLS)
    cert_cn: str | None = None

    @property
    def loopback(self) -> bool:
        return self.ip is not None and self.ip.is_loopback


PEER = web.RequestKey("peer", Peer)


def peer_of(request: web.BaseRequest, trusted_proxies: Allowlist) -> Peer:
    """The client's address is the socket's, unless the socket is a trusted proxy: then the right-most
    X-Forwarded-For entry that is not itself a trusted proxy (left-most entries are the client's to forge)."""
    ip = _ip(request.remote)
    if trusted_proxies and ip is not None and trusted_proxies.admits(ip):
        for hop in reversed(request.headers.get("X-Forwarded-For", "").split(",")):
            hop_ip = _ip(hop.strip())
            if hop_ip is None:
                break
            ip = hop_ip
            if not trusted_proxies.admits(hop_ip):
                break
    fingerprint = cn = None
    ssl_object: ssl.SSLObject | None = (
        request.transport.get_extra_info("ssl_object") if request.transport else None
    )
    if ssl_object is not None:
        der = ssl_object.getpeercert(binary_form=True)
        if der:  # only a certificate the CA verified gets here
            fingerprint = "sha256:" + hashlib.sha256(der).hexdigest()
            cn = _common_name(ssl_object.getpeercert())
    return Peer(ip=ip, cert_fingerprint=fingerprint, cert_cn=cn)


@functools.lru_cache(maxsize=4096)  # the same clients come back; ipaddress parses slowly (~10 µs)
def _ip(text: str | None) -> IPAddress | None:
    if not text:
        return None
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _common_name(cert: Any) -> str | None:
    for rdn in (cert or {}).get("subject", ()):
        for name, value in rdn:
            if name == "commonName":
                return str(value)
    return None
