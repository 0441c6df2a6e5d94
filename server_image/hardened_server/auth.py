"""Who is calling: API keys (with plans and client ids), JWT bearer tokens, and the caller's address.

API keys come from a mounted file, one per line, ``#`` comments::

    hm_3f9c...           # a key alone: client id = its key id, plan = rateLimit.perKey
    hm_81d2... plan=gold client=acme-batch

Keys are kept as SHA-256 digests and every digest is compared with ``hmac.compare_digest`` (no early exit),
so timing reveals nothing. A client is known by its client id (``client=``, else the key's *key id*, the first
12 hex digits of its digest) in logs, metrics and limiter keys: never by the key. Two keys may share a client
id (rotation): they share its limits and quota.

JWT bearer tokens are verified with PyJWT against a JWKS file (a Secret or ConfigMap key), re-read when it
changes: signature by a key of the set (by ``kid``), the configured algorithms only (``none`` never; HS*
only when listed), ``iss``, ``aud``, ``exp`` (required) and ``nbf`` with leeway. The client id is a claim
(default ``sub``), and an optional claim names the plan.
"""
from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import ipaddress
import json
import os
import re
import time

from .errors import Unauthorized

CLIENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@:-]{0,62}$")


@dataclasses.dataclass(frozen=True)
class Principal:
    client: str  # bounded, safe to log and to use as a metric label
    plan: str | None  # a rateLimit plan's name, or None for rateLimit.perKey


def key_id(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:12]


class _Watched:
    """A mounted file re-read when its mtime, size or inode changes (a Secret update swaps it atomically);
    a broken update keeps what was loaded."""

    def __init__(self, path: str, check_every: float):
        self.path, self.check_every = path, check_every
        self._stamp: tuple | None = None
        self._checked = 0.0

    def _changed(self) -> bool:
        st = os.stat(self.path)
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        return True

    def reload(self) -> None:
        """Load the file when it changed; a version that fails to load is tried again next time."""
        stamp = self._stamp
        if not self._changed():
            return
        try:
            self._load()
        except (OSError, ValueError):
            self._stamp = stamp
            raise

    def _load(self) -> None:
        raise NotImplementedError

    def maybe_reload(self) -> None:
        now = time.monotonic()
        if now - self._checked >= self.check_every:
            self._checked = now
            try:
                self.reload()
            except (OSError, ValueError):
                pass  # keep what we have; the next change is tried again


class ApiKeys(_Watched):
    """API keys from a file, hashed at load; reloaded when the file changes."""

    def __init__(self, path: str, *, plans: frozenset[str] = frozenset(), check_every: float = 2.0):
        super().__init__(path, check_every)
        self.plans = plans
        self.entries: list[tuple[bytes, Principal]] = []
        self.reload()

    @property
    def digests(self) -> list[bytes]:
        return [d for d, _ in self.entries]

    def _load(self) -> None:
        entries = []
        with open(self.path, encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                words = line.split()
                if not words or words[0].startswith("#"):
                    continue
                key, opts = words[0], {}
                for word in words[1:]:
                    if word.startswith("#"):
                        break
                    name, sep, value = word.partition("=")
                    if not sep or name not in ("plan", "client") or name in opts:
                        raise ValueError(f"{self.path}: line {n}: expected KEY [plan=NAME] [client=ID], got {word!r}")
                    opts[name] = value
                if len(key) < 16:
                    raise ValueError(f"{self.path}: line {n}: API keys must have at least 16 characters")
                plan = opts.get("plan")
                if plan is not None and plan not in self.plans:
                    raise ValueError(f"{self.path}: line {n}: plan={plan!r} is not in rateLimit.plans "
                                     f"({', '.join(sorted(self.plans)) or 'none configured'})")
                client = opts.get("client") or key_id(key)
                if not CLIENT_ID.match(client):
                    raise ValueError(f"{self.path}: line {n}: client={client!r}: 1-63 letters, digits, ._@:-")
                entries.append((hashlib.sha256(key.encode()).digest(), Principal(client, plan)))
        self.entries = entries

    def authenticate(self, presented: str | None) -> Principal:
        if not presented:
            raise Unauthorized("missing API key (Authorization: Bearer <key> or X-API-Key)", field="Authorization")
        digest = hashlib.sha256(presented.encode("utf-8", "surrogateescape")).digest()
        found = None
        for known, principal in self.entries:  # no early exit: constant time in the number of keys
            if hmac.compare_digest(digest, known):
                found = principal
        if found is None:
            raise Unauthorized("unknown API key", field="Authorization")
        return found


def looks_like_jwt(token: str) -> bool:
    """Three base64url segments whose first decodes to a JSON object: a JWS compact token, not an API key."""
    parts = token.split(".")
    if len(parts) != 3 or not parts[0]:
        return False
    try:
        header = json.loads(base64.urlsafe_b64decode(parts[0] + "=" * (-len(parts[0]) % 4)))
    except (ValueError, UnicodeDecodeError):
        return False
    return isinstance(header, dict)


class JwtVerifier(_Watched):
    """Verifies bearer JWTs against a JWKS file with PyJWT; ``settings`` is the spec's serving.auth.jwt."""

    def __init__(self, path: str, settings, *, plans: frozenset[str] = frozenset(), check_every: float = 2.0):
        super().__init__(path, check_every)
        self.settings, self.plans = settings, plans
        self.keys: dict[str | None, object] = {}
        self.reload()

    def _load(self) -> None:
        import jwt

        try:
            with open(self.path, encoding="utf-8") as fh:
                doc = json.load(fh)
            keys = jwt.PyJWKSet.from_dict(doc).keys
        except (OSError, ValueError, jwt.PyJWKSetError, jwt.PyJWKError) as exc:
            raise ValueError(f"{self.path}: not a usable JWKS: {exc}") from None
        self.keys = {k.key_id: k for k in keys}  # PyJWT refuses a key whose type does not fit the algorithm

    def authenticate(self, token: str) -> Principal:
        import jwt

        def refuse(why: str):
            raise Unauthorized(f"invalid token: {why}", field="Authorization",
                               headers={"WWW-Authenticate": f'Bearer error="invalid_token", '
                                                            f'error_description="{why}"'})

        s = self.settings
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            refuse("malformed")
        alg = header.get("alg")
        if alg not in s.algorithms:  # covers "none" and HS* unless listed
            refuse(f"algorithm {alg!r} is not accepted")
        kid = header.get("kid")
        key = self.keys.get(kid) if kid is not None else (next(iter(self.keys.values())) if len(self.keys) == 1
                                                          else None)
        if key is None:
            refuse("signing key not in the JWKS" if kid is not None else "no kid and the JWKS has several keys")
        try:
            claims = jwt.decode(token, key.key, algorithms=[alg], audience=s.audience, issuer=s.issuer,
                                leeway=s.leeway_seconds, options={"require": ["exp", "iss", "aud"]})
        except jwt.ExpiredSignatureError:
            refuse("expired")
        except jwt.ImmatureSignatureError:
            refuse("not yet valid (nbf)")
        except jwt.InvalidAudienceError:
            refuse("wrong audience")
        except jwt.InvalidIssuerError:
            refuse("wrong issuer")
        except jwt.MissingRequiredClaimError as exc:
            refuse(f"missing claim {exc.claim}")
        except jwt.InvalidSignatureError:
            refuse("bad signature")
        except jwt.InvalidTokenError as exc:
            refuse(type(exc).__name__)
        client = claims.get(s.client_id_claim)
        if not isinstance(client, str) or not client:
            refuse(f"claim {s.client_id_claim} missing or not a string")
        if not CLIENT_ID.match(client):  # an unbounded or odd subject still gets a bounded, safe label
            client = "jwt-" + hashlib.sha256(client.encode()).hexdigest()[:12]
        plan = None
        if s.plan_claim:
            plan = claims.get(s.plan_claim)
            if plan is not None and plan not in self.plans:
                refuse(f"claim {s.plan_claim} names no configured plan")
        return Principal(client, plan)


class ClientAddress:
    """The caller's address for failed-authentication budgets: the connection's peer, or, when the peer is a
    trusted proxy, the last X-Forwarded-For address that is not one. IPv6 addresses count per /64 (one host
    usually holds a whole /64)."""

    def __init__(self, trusted: list[str] | None):
        self.trusted = [ipaddress.ip_network(c, strict=False) for c in trusted or ()]

    def _trusted(self, addr) -> bool:
        return any(addr.version == net.version and addr in net for net in self.trusted)

    @staticmethod
    def _parse(text: str):
        try:
            return ipaddress.ip_address(text.strip().strip("[]"))
        except ValueError:
            return None

    def __call__(self, peer: str | None, forwarded_for: str | None) -> str:
        addr = self._parse(peer or "")
        if addr is None:
            return peer or "unknown"
        if self.trusted and forwarded_for and self._trusted(addr):
            for hop in reversed(forwarded_for.split(",")):
                hop_addr = self._parse(hop)
                if hop_addr is None:
                    break  # a malformed hop: stop at the last address we could trust
                addr = hop_addr
                if not self._trusted(hop_addr):
                    break
        if addr.version == 6:
            if addr.ipv4_mapped is not None:
                return str(addr.ipv4_mapped)
            return str(ipaddress.ip_network(f"{addr}/64", strict=False))
        return str(addr)
