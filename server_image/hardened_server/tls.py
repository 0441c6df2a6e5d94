"""TLS on the public port: TLS 1.2 and 1.3 only, forward-secret AEAD ciphers, optional client certificates,
and certificates rotated without a restart.

Rotation: the server listens with one context whose SNI callback (OpenSSL calls it for every ClientHello, with
``None`` when the client sends no server name) hands each new handshake the *current* context. When the
mounted files change (cert-manager renews the Secret; the kubelet swaps the mounted files atomically), a new
context is built and checked first; only a context that loaded replaces the current one, so a half-written or
mismatched pair never reaches a client, and connections already open keep the session they have.
"""
from __future__ import annotations

import logging
import os
import ssl
import time

# TLS 1.2 suites with ECDHE key exchange and AEAD encryption (Mozilla "intermediate"); TLS 1.3 suites are all
# of that kind already.
CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


def server_context(cert: str, key: str, client_ca: str | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_RENEGOTIATION
    ctx.set_alpn_protocols(["http/1.1"])
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"{cert} / {key}: cannot load the certificate and key: {exc}") from None
    if client_ca:
        try:
            ctx.load_verify_locations(cafile=client_ca)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"{client_ca}: cannot load the client CA: {exc}") from None
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


class ReloadingTls:
    """``context`` goes to the server; files are checked at most every ``check_every`` seconds, on handshakes."""

    def __init__(self, cert: str, key: str, client_ca: str | None = None, *, check_every: float = 5.0,
                 logger: logging.Logger | None = None):
        self.files = [f for f in (cert, key, client_ca) if f]
        self.cert, self.key, self.client_ca = cert, key, client_ca
        self.check_every = check_every
        self.logger = logger or logging.getLogger("hardened.tls")
        self.current = server_context(cert, key, client_ca)
        self._stamp = self._stamps()
        self._checked = time.monotonic()
        self.context = server_context(cert, key, client_ca)
        self.context.sni_callback = self._handshake
        self.reloads = 0

    def _stamps(self) -> tuple:
        out = []
        for f in self.files:
            try:
                st = os.stat(f)
                out.append((st.st_mtime_ns, st.st_size, st.st_ino))
            except OSError:
                out.append(None)
        return tuple(out)

    def maybe_reload(self) -> None:
        now = time.monotonic()
        if now - self._checked < self.check_every:
            return
        self._checked = now
        stamp = self._stamps()
        if stamp == self._stamp:
            return
        try:
            ctx = server_context(self.cert, self.key, self.client_ca)
        except ValueError as exc:  # mid-update or broken: keep serving the current certificate
            self.logger.warning("tls reload failed; keeping the current certificate",
                                extra={"fields": {"error": str(exc)}})
            return
        self.current, self._stamp = ctx, stamp
        self.reloads += 1
        self.logger.info("tls certificate reloaded", extra={"fields": {"cert": self.cert}})

    def _handshake(self, sslobj: ssl.SSLObject, server_name, _ctx) -> None:
        self.maybe_reload()
        sslobj.context = self.current
        return None
