#!/usr/bin/env python3
"""Stand-alone OIDC token issuer for the integration tests.

It is deliberately independent of the server's own JWT code: tokens are
produced with PyJWT + cryptography, so a bug shared by our signer and our
verifier cannot make a broken verifier look correct.

Usage:
    python oidc_issuer.py --port-file PATH [--max-age SECONDS] [--issuer-suffix SUFFIX]

The issuer URL is http://127.0.0.1:PORT + SUFFIX, and every route below is
served relative to it:

    GET  /.well-known/openid-configuration
    GET  /jwks
    POST /rotate        {"alg", "kid"?, "keep_old"?, "publish"?}
    POST /mint          {"claims"?, "ttl"?, "iat_offset"?, "kid"?, "variant"?}
    GET  /stats
    POST /stats/reset

Nothing is logged per request: tokens must never end up in test output.
"""

import argparse
import base64
import hashlib
import hmac
import json
import os
import secrets
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

RSA_ALGS = ("RS256", "RS384", "RS512", "PS256")
EC_CURVES = {"ES256": ("P-256", ec.SECP256R1, 32), "ES384": ("P-384", ec.SECP384R1, 48)}
SUPPORTED_ALGS = RSA_ALGS + tuple(EC_CURVES) + ("EdDSA",)
VARIANTS = ("normal", "none", "hs256-public", "tampered", "no-kid", "wrong-alg-header")

# A request body larger than this is a test bug, not something to buffer.
MAX_BODY = 1 << 20


class BadRequest(Exception):
    """Raised by route handlers for a client error; becomes a 400 reply."""


def b64url(data: bytes) -> str:
    # JOSE uses unpadded base64url everywhere (RFC 7515 section 2).
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def int_bytes(value: int, length: int | None = None) -> bytes:
    # RSA n/e use the minimal big-endian form; EC coordinates must be
    # padded to the curve's full size (RFC 7518 section 6.2.1.2).
    if length is None:
        length = max(1, (value.bit_length() + 7) // 8)
    return value.to_bytes(length, "big")


def compact_json(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode("utf-8")


class Key:
    """One signing key. Keys are never deleted, only unpublished, so the
    tests can still sign with a key that the JWKS no longer shows."""

    def __init__(self, kid: str, alg: str):
        self.kid = kid
        self.alg = alg
        self.published = True
        if alg in RSA_ALGS:
            self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        elif alg in EC_CURVES:
            self.private = ec.generate_private_key(EC_CURVES[alg][1]())
        elif alg == "EdDSA":
            self.private = ed25519.Ed25519PrivateKey.generate()
        else:
            raise BadRequest(f"unsupported alg {alg!r}")
        self.public = self.private.public_key()

    @property
    def is_rsa(self) -> bool:
        return self.alg in RSA_ALGS

    def jwk(self) -> dict:
        out = {"kid": self.kid, "alg": self.alg, "use": "sig"}
        if self.is_rsa:
            nums = self.public.public_numbers()
            out.update(kty="RSA", n=b64url(int_bytes(nums.n)), e=b64url(int_bytes(nums.e)))
        elif self.alg in EC_CURVES:
            crv, _, size = EC_CURVES[self.alg]
            nums = self.public.public_numbers()
            out.update(
                kty="EC",
                crv=crv,
                x=b64url(int_bytes(nums.x, size)),
                y=b64url(int_bytes(nums.y, size)),
            )
        else:
            raw = self.public.public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw
            )
            out.update(kty="OKP", crv="Ed25519", x=b64url(raw))
        return out

    def public_pem(self) -> bytes:
        return self.public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


class Issuer:
    """All mutable state, behind one lock because ThreadingHTTPServer
    serves requests concurrently."""

    def __init__(self, max_age: int):
        self.lock = threading.Lock()
        self.max_age = max_age
        self.issuer_url = ""  # set once the port is known
        self.keys: dict[str, Key] = {}  # insertion order = rotation order
        self.current: Key | None = None
        self.next_number = 1
        self.jwks_fetches = 0
        self.discovery_fetches = 0
        self._add_key(Key(self._fresh_kid(), "RS256"))

    def _fresh_kid(self) -> str:
        # Skip numbers a test already used as an explicit kid.
        while True:
            kid = f"k{self.next_number}"
            self.next_number += 1
            if kid not in self.keys:
                return kid

    def _add_key(self, key: Key) -> None:
        self.keys[key.kid] = key
        self.current = key

    def published(self) -> list[Key]:
        return [k for k in self.keys.values() if k.published]

    # ---- routes -------------------------------------------------------

    def discovery(self) -> dict:
        with self.lock:
            self.discovery_fetches += 1
            algs = []
            for k in self.published():
                if k.alg not in algs:
                    algs.append(k.alg)
            # The field is REQUIRED and must not be empty; when nothing is
            # published, advertise what the issuer currently signs with.
            if not algs:
                algs.append(self.current.alg)
            return {
                "issuer": self.issuer_url,
                "jwks_uri": self.issuer_url + "/jwks",
                "response_types_supported": ["id_token"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": algs,
            }

    def jwks(self) -> dict:
        with self.lock:
            self.jwks_fetches += 1
            return {"keys": [k.jwk() for k in self.published()]}

    def stats(self) -> dict:
        with self.lock:
            return {"jwks_fetches": self.jwks_fetches, "discovery_fetches": self.discovery_fetches}

    def reset_stats(self) -> dict:
        with self.lock:
            self.jwks_fetches = 0
            self.discovery_fetches = 0
            return {"jwks_fetches": 0, "discovery_fetches": 0}

    def rotate(self, body: dict) -> dict:
        alg = body.get("alg", "RS256")
        if alg not in SUPPORTED_ALGS:
            raise BadRequest(f"alg must be one of {list(SUPPORTED_ALGS)}")
        kid = body.get("kid")
        if kid is not None and (not isinstance(kid, str) or not kid):
            raise BadRequest("kid must be a non-empty string")
        keep_old = body.get("keep_old", True)
        publish = body.get("publish", True)
        if not isinstance(keep_old, bool) or not isinstance(publish, bool):
            raise BadRequest("keep_old and publish must be booleans")

        # Key generation is slow (RSA); do it outside the lock so /jwks
        # fetches made meanwhile are not stalled.
        if kid is None:
            with self.lock:
                kid = self._fresh_kid()
        key = Key(kid, alg)
        key.published = publish

        with self.lock:
            if kid in self.keys:
                raise BadRequest(f"kid {kid!r} already exists")
            if not keep_old:
                for old in self.keys.values():
                    old.published = False
            self._add_key(key)
        return {"kid": key.kid, "alg": key.alg}

    def mint(self, body: dict) -> dict:
        claims_in = body.get("claims", {})
        if not isinstance(claims_in, dict):
            raise BadRequest("claims must be an object")
        ttl = body.get("ttl", 600)
        iat_offset = body.get("iat_offset", 0)
        for name, value in (("ttl", ttl), ("iat_offset", iat_offset)):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise BadRequest(f"{name} must be a number")
        variant = body.get("variant", "normal")
        if variant not in VARIANTS:
            raise BadRequest(f"variant must be one of {list(VARIANTS)}")
        kid = body.get("kid")

        with self.lock:
            if kid is None:
                key = self.current
            elif isinstance(kid, str) and kid in self.keys:
                key = self.keys[kid]
            else:
                raise BadRequest(f"unknown kid {kid!r}")
            issuer_url = self.issuer_url

        iat = int(time.time()) + int(iat_offset)
        claims = {"iss": issuer_url, "iat": iat, "exp": iat + int(ttl), "jti": secrets.token_hex(16)}
        claims.update(claims_in)
        # null means "leave this claim out", e.g. {"exp": null}.
        claims = {k: v for k, v in claims.items() if v is not None}
        return {"token": make_token(key, claims, variant)}


def sign(key: Key, alg: str, payload: bytes, with_kid: bool = True) -> str:
    # PyJWS signs raw payload bytes, so PyJWT's claim handling cannot
    # rewrite or reject the claims the tests ask for.
    headers = {"typ": "JWT"}
    if with_kid:
        headers["kid"] = key.kid
    return jwt.api_jws.PyJWS().encode(payload, key.private, algorithm=alg, headers=headers)


def make_token(key: Key, claims: dict, variant: str) -> str:
    payload = compact_json(claims)

    if variant == "normal":
        return sign(key, key.alg, payload)

    if variant == "no-kid":
        return sign(key, key.alg, payload, with_kid=False)

    if variant == "none":
        # Hand-built: PyJWT will not emit alg "none" with a kid.
        header = {"alg": "none", "typ": "JWT", "kid": key.kid}
        return f"{b64url(compact_json(header))}.{b64url(payload)}."

    if variant == "hs256-public":
        # Algorithm confusion: HMAC keyed with the public key's PEM, which a
        # verifier trusting the header's alg would accept. Hand-built
        # because PyJWT rightly refuses a PEM key as an HMAC secret.
        header = {"alg": "HS256", "typ": "JWT", "kid": key.kid}
        signing_input = f"{b64url(compact_json(header))}.{b64url(payload)}"
        mac = hmac.new(key.public_pem(), signing_input.encode("ascii"), hashlib.sha256).digest()
        return f"{signing_input}.{b64url(mac)}"

    if variant == "tampered":
        header_b64, _, signature_b64 = sign(key, key.alg, payload).split(".")
        evil = dict(claims)
        sub = evil.get("sub")
        evil["sub"] = sub + "-evil" if isinstance(sub, str) else "evil"
        return f"{header_b64}.{b64url(compact_json(evil))}.{signature_b64}"

    if variant == "wrong-alg-header":
        # A valid RSA signature, but made with a different algorithm than
        # the one the JWK pins, so only a verifier that checks the JWK's
        # alg against the header rejects it.
        if not key.is_rsa:
            raise BadRequest("wrong-alg-header needs an RSA key; pass an RSA kid")
        return sign(key, "RS256" if key.alg == "PS256" else "PS256", payload)

    raise BadRequest(f"unknown variant {variant!r}")


class Handler(BaseHTTPRequestHandler):
    # HTTP/1.1 so clients can keep connections alive; every reply below
    # carries Content-Length, which that requires.
    protocol_version = "HTTP/1.1"
    issuer: Issuer = None  # set in main()
    suffix = ""

    def log_message(self, format, *args):
        # Silence: request lines and errors could otherwise leak tokens.
        pass

    def _reply(self, status: int, obj, extra_headers=()) -> None:
        body = compact_json(obj)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in extra_headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _route(self) -> str | None:
        path = self.path.split("?", 1)[0].split("#", 1)[0]
        if self.suffix:
            if not path.startswith(self.suffix + "/"):
                return None
            path = path[len(self.suffix):]
        return path

    def _body(self) -> dict:
        length = self.headers.get("Content-Length")
        if length is None:
            if self.headers.get("Transfer-Encoding"):
                # Unsupported framing: we cannot find the end of the body,
                # so this connection cannot be reused.
                self.close_connection = True
                raise BadRequest("send a Content-Length body")
            return {}
        try:
            n = int(length)
        except ValueError:
            self.close_connection = True
            raise BadRequest("bad Content-Length")
        if n < 0 or n > MAX_BODY:
            self.close_connection = True
            raise BadRequest("body too large")
        raw = self.rfile.read(n)
        if not raw.strip():
            return {}
        try:
            obj = json.loads(raw)
        except ValueError:
            raise BadRequest("body is not JSON")
        if not isinstance(obj, dict):
            raise BadRequest("body must be a JSON object")
        return obj

    def _dispatch(self, method: str) -> None:
        try:
            # Read the body first so an error reply never leaves unread
            # bytes on a kept-alive connection.
            body = self._body() if method == "POST" else None
            path = self._route()
            iss = self.issuer
            if method == "GET" and path == "/.well-known/openid-configuration":
                self._reply(200, iss.discovery())
            elif method == "GET" and path == "/jwks":
                cache = "no-store" if iss.max_age == 0 else f"max-age={iss.max_age}"
                self._reply(200, iss.jwks(), [("Cache-Control", cache)])
            elif method == "GET" and path == "/stats":
                self._reply(200, iss.stats())
            elif method == "POST" and path == "/stats/reset":
                self._reply(200, iss.reset_stats())
            elif method == "POST" and path == "/rotate":
                self._reply(200, iss.rotate(body))
            elif method == "POST" and path == "/mint":
                self._reply(200, iss.mint(body))
            else:
                self._reply(404, {"error": "not found"})
        except BadRequest as e:
            self._reply(400, {"error": str(e)})
        except Exception as e:
            # Report only the exception type: its message could hold claims.
            self._reply(500, {"error": f"internal error: {type(e).__name__}"})

    def do_GET(self):
        self._dispatch("GET")

    def do_POST(self):
        self._dispatch("POST")

    def do_PUT(self):
        self._dispatch("PUT")

    def do_DELETE(self):
        self._dispatch("DELETE")

    def do_PATCH(self):
        self._dispatch("PATCH")


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True  # don't let a stuck client block exit

    def handle_error(self, request, client_address):
        # Clients (tests) hang up abruptly; a traceback here is just noise.
        pass


def normalize_suffix(suffix: str) -> str:
    # Accept "gh", "/gh" or "/gh/"; routes are always joined with "/".
    suffix = suffix.strip("/")
    return "/" + suffix if suffix else ""


def main() -> None:
    parser = argparse.ArgumentParser(description="Test OIDC issuer")
    parser.add_argument("--port-file", required=True)
    parser.add_argument("--max-age", type=int, default=300)
    parser.add_argument("--issuer-suffix", default="")
    args = parser.parse_args()
    if args.max_age < 0:
        parser.error("--max-age must be >= 0")

    suffix = normalize_suffix(args.issuer_suffix)
    issuer = Issuer(args.max_age)
    Handler.issuer = issuer
    Handler.suffix = suffix

    server = QuietServer(("127.0.0.1", 0), Handler)
    port = server.server_address[1]
    issuer.issuer_url = f"http://127.0.0.1:{port}{suffix}"

    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    # Written only once serving, and atomically, so a test polling for the
    # file never reads a partial number or connects too early.
    tmp = args.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(f"{port}\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, args.port_file)

    try:
        thread.join()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        sys.exit(0)


if __name__ == "__main__":
    main()
