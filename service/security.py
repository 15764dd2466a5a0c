"""API keys and roles: kept as sha256 hashes, compared in constant time, never logged."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from pathlib import Path

from service.errors import Forbidden, Unauthorized

ROLES = ("read", "admin")


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def parse_keys(text: str, origin: str) -> list[tuple[str, str]]:
    """``role:key`` entries separated by commas or new lines; ``#`` starts a comment."""
    entries = []
    for raw in text.replace(",", "\n").splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        role, sep, key = line.partition(":")
        role, key = role.strip(), key.strip()
        if not sep or role not in ROLES or len(key) < 16:
            raise ValueError(
                f"{origin}: each API key entry is 'read:KEY' or 'admin:KEY' with a key of at least 16 characters"
            )
        entries.append((role, key))
    return entries


@dataclass(frozen=True)
class KeyRing:
    hashes: dict[str, str] = field(default_factory=dict)  # sha256(key) -> role

    @classmethod
    def load(cls, keys: str | None, keys_file: Path | None) -> KeyRing:
        entries = parse_keys(keys, "FORECAST_API_KEYS") if keys else []
        if keys_file is not None:
            entries += parse_keys(Path(keys_file).read_text(encoding="utf-8"), str(keys_file))
        return cls({_hash(key): role for role, key in entries})

    @property
    def open(self) -> bool:
        """No keys configured: the server runs open (loopback only, see Settings)."""
        return not self.hashes

    def caller_id(self, authorization: str | None) -> str:
        """Who is calling, for per-key limits: a short hash of the key ("open" without keys)."""
        if self.open:
            return "open"
        _, _, credentials = (authorization or "").partition(" ")
        return "key:" + _hash(credentials.strip())[:16]

    def role_of(self, presented: str) -> str | None:
        digest = _hash(presented)
        found = None
        for stored, role in self.hashes.items():  # every entry, so timing does not tell which matched
            if hmac.compare_digest(stored, digest):
                found = role
        return found

    def authorize(self, authorization: str | None, needed: str) -> str:
        """The caller's role, or Unauthorized (no/invalid key) / Forbidden (role too low)."""
        if self.open:
            return "admin"
        scheme, _, credentials = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not credentials.strip():
            raise Unauthorized("send an API key as 'Authorization: Bearer <key>'")
        role = self.role_of(credentials.strip())
        if role is None:
            raise Unauthorized("the API key is not valid")
        if needed == "admin" and role != "admin":
            raise Forbidden("this request needs an admin key; the key given has role 'read'", role=role)
        return role
