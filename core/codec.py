"""The AES-256-GCM payload codec: personal data in Temporal history is ciphertext.

Every payload the platform's clients and workers hand to Temporal (workflow and activity inputs
and results, signals, updates, queries, memos, failure details) is encrypted with the first key
of ``BIZ_CODEC_KEYS``; its key id travels in the payload's metadata, and every configured key
decrypts, so keys rotate by adding the new key first and dropping the old one once no history
needs it. A payload this codec did not encrypt (history written before it was enabled) passes
through unchanged. A payload that fails authentication, or names a key that is not configured,
raises :class:`CodecError`: never silently garbage.

Search attributes are not payloads the codec sees: the server must index them, so they hold no
personal data (tenant, capability, approval audience, role and due time only).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload
from temporalio.converter import PayloadCodec

from core.settings import ConfigError, Settings

log = logging.getLogger(__name__)

ENCODING = b"binary/encrypted"
KEY_ID = "encryption-key-id"
CIPHER = "encryption-cipher"
CIPHER_NAME = b"AES-256-GCM"
KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
# Bound into every ciphertext with its key id: a payload of another format or version never
# decrypts as this one.
_AAD_PREFIX = b"bizosaas-codec-v1:"
_KID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class CodecError(ValueError):
    """A payload that cannot be decrypted: tampered with, truncated, or under an unknown key."""


@dataclass(frozen=True)
class CodecKey:
    kid: str
    key: bytes = field(repr=False)


def _b64(text: str) -> bytes:
    """Standard or URL-safe base64, padded or not; anything else is refused."""
    s = text.strip().replace("-", "+").replace("_", "/")
    return base64.b64decode(s + "=" * (-len(s) % 4), validate=True)


def parse_keys(raw: str) -> list[CodecKey]:
    """``kid:base64key`` entries, comma-separated or as a JSON list. Errors name the entry by
    position and key id, never its key."""
    text = raw.strip()
    if text.startswith(("[", "{")):
        try:
            entries = json.loads(text)
        except ValueError:
            raise ConfigError("BIZ_CODEC_KEYS is not valid JSON (a list of \"kid:base64key\" strings)") from None
        if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
            raise ConfigError("BIZ_CODEC_KEYS as JSON must be a list of \"kid:base64key\" strings")
    else:
        entries = [e for e in text.split(",") if e.strip()]
    if not entries:
        raise ConfigError("BIZ_CODEC_KEYS holds no key")
    keys: list[CodecKey] = []
    for n, entry in enumerate(entries, 1):
        kid, sep, material = entry.strip().partition(":")
        if not sep or not _KID.match(kid):
            raise ConfigError(f"BIZ_CODEC_KEYS entry {n} is not \"kid:base64key\" (kid: letters, digits, . _ -)")
        try:
            key = _b64(material)
        except (binascii.Error, ValueError):
            raise ConfigError(f"BIZ_CODEC_KEYS entry {n} ({kid!r}): the key is not base64") from None
        if len(key) != KEY_BYTES:
            raise ConfigError(f"BIZ_CODEC_KEYS entry {n} ({kid!r}): the key must be {KEY_BYTES} bytes, not {len(key)}")
        if any(k.kid == kid for k in keys):
            raise ConfigError(f"BIZ_CODEC_KEYS names key id {kid!r} twice")
        keys.append(CodecKey(kid, key))
    return keys


def new_key(kid: str) -> str:
    """A fresh ``kid:base64key`` entry."""
    return f"{kid}:{base64.b64encode(os.urandom(KEY_BYTES)).decode()}"


class AesGcmCodec(PayloadCodec):
    """Encrypts with the first key, decrypts with whichever key the payload names."""

    def __init__(self, keys: Sequence[CodecKey]) -> None:
        if not keys:
            raise ValueError("the codec needs at least one key")
        self._kid = keys[0].kid
        self._ciphers = {k.kid: AESGCM(k.key) for k in keys}

    @property
    def encrypting_key_id(self) -> str:
        return self._kid

    @property
    def key_ids(self) -> list[str]:
        return list(self._ciphers)

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.encrypt(p) for p in payloads]

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.decrypt(p) for p in payloads]

    def encrypt(self, payload: Payload) -> Payload:
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._ciphers[self._kid].encrypt(nonce, payload.SerializeToString(), _AAD_PREFIX + self._kid.encode())
        return Payload(
            metadata={"encoding": ENCODING, KEY_ID: self._kid.encode(), CIPHER: CIPHER_NAME},
            data=nonce + sealed,
        )

    def decrypt(self, payload: Payload) -> Payload:
        if payload.metadata.get("encoding") != ENCODING:
            return payload  # written before encryption was enabled, or a null payload
        kid = payload.metadata.get(KEY_ID, b"").decode("utf-8", "replace")
        cipher = self._ciphers.get(kid)
        if cipher is None:
            raise CodecError(
                f"payload encrypted under key id {kid!r}, which is not among BIZ_CODEC_KEYS ({', '.join(self._ciphers)})"
            )
        data = payload.data
        if len(data) < NONCE_BYTES + TAG_BYTES:
            raise CodecError(f"encrypted payload (key id {kid!r}) is truncated")
        try:
            plain = cipher.decrypt(data[:NONCE_BYTES], data[NONCE_BYTES:], _AAD_PREFIX + kid.encode())
        except InvalidTag:
            raise CodecError(
                f"encrypted payload (key id {kid!r}) failed authentication: tampered with, or not sealed with this key"
            ) from None
        try:
            return Payload.FromString(plain)
        except Exception:  # noqa: BLE001 - protobuf's DecodeError
            raise CodecError(f"encrypted payload (key id {kid!r}) does not hold a payload") from None


def payload_codec(settings: Settings) -> AesGcmCodec | None:
    """The codec of ``BIZ_CODEC_KEYS``; production refuses to run without it. Dev without keys
    (tests, benchmarks) keeps payloads in clear."""
    environment = settings.require_environment()
    raw = settings.codec.keys.get_secret_value() if settings.codec.keys is not None else ""
    if not raw.strip():
        if environment == "production":
            raise ConfigError(
                "BIZ_CODEC_KEYS is not set: production encrypts every Temporal payload; set it to "
                "kid:base64 of 32 random bytes, e.g. BIZ_CODEC_KEYS=\"k1:$(openssl rand -base64 32)\""
            )
        return None
    return AesGcmCodec(parse_keys(raw))
