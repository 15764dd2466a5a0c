"""The registry folder: layout, manifests, atomic publish, aliases, integrity.

Layout (a public contract, documented in the README)::

    <root>/<name>/model.yaml                 spec, human-editable
    <root>/<name>/versions/<n>/artifact.pkl  the fitted forecaster (pickle)
    <root>/<name>/versions/<n>/training.parquet   the training table
    <root>/<name>/versions/<n>/forecast.parquet   precomputed default forecast (optional)
    <root>/<name>/versions/<n>/manifest.json     written last; lists every file's sha256
    <root>/<name>/aliases.json               {"production": 3, ...}

A version is written under ``versions/.staging-*`` and renamed into place only when
complete and fsync'd, so a reader never sees half a version. A deleted version's folder
is renamed to ``versions/.deleting-*`` and removed; ``versions/<n>/.deleted`` stays behind
so that number is never given out again.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import hmac
import io
import json
import logging
import os
import pickle
import platform
import re
import shutil
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as dist_version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from filelock import FileLock

from service.documents import load_document
from service.errors import (
    AliasesUnreadable,
    AliasNotFound,
    Conflict,
    IntegrityError,
    InvalidName,
    ModelNotFound,
    SpecError,
    SpecFileInvalid,
    VersionLoadError,
    VersionNotFound,
)
from service.fileio import atomic_write, fsync_dir, fsync_write, sha256_bytes

if TYPE_CHECKING:  # pandas and the table helpers are imported by the readers that need them:
    import pandas as pd  # listing the registry (`forecast-service models list`) imports neither

log = logging.getLogger(__name__)

NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
ALIAS_PATTERN = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
MANIFEST = "manifest.json"
ARTIFACT = "artifact.pkl"
TRAINING = "training.parquet"
FORECAST = "forecast.parquet"
SPEC_FILE = "model.yaml"
ALIASES = "aliases.json"
ALIAS_SIGNATURE = "_signature"  # a key no alias can have (aliases start with a letter)
STAGING_PREFIX = ".staging-"
DELETING_PREFIX = ".deleting-"
TOMBSTONE = ".deleted"  # in an emptied versions/<n>/: the number stays taken
MANIFEST_FORMAT = 1
SHARD_SERIES = 1000  # series per shard of a panel version (`FORECAST_SHARD_SERIES`), chosen by measurement
LIBRARIES = ("sktime", "scikit-learn", "xgboost", "lightgbm", "statsmodels", "pandas", "numpy", "scipy", "pyarrow")
# other distributions of the same import package, same versions: xgboost-cpu is what we install
# (the `xgboost` wheel bundles CUDA and, through nvidia-nccl-cu12, ~700 MB a CPU server never uses)
LIBRARY_BUILDS = {"xgboost": ("xgboost-cpu", "xgboost-cu12", "xgboost-cu13")}


def validate_name(name: Any, what: str = "model") -> str:
    """Names become folder names: a-z 0-9 . _ -, starting with a letter or digit."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name) or ".." in name:
        raise InvalidName(
            f"invalid {what} name {name!r}: use 1-64 characters a-z 0-9 . _ - starting with a letter or digit",
            field="name",
            value=str(name)[:100],
        )
    return name


def validate_alias(alias: Any) -> str:
    if not isinstance(alias, str) or not ALIAS_PATTERN.fullmatch(alias):
        raise InvalidName(
            f"invalid alias {alias!r}: use 1-32 characters a-z 0-9 _ - starting with a letter",
            field="alias",
            value=str(alias)[:100],
        )
    return alias


def library_versions() -> dict[str, str | None]:
    """Installed versions by library, whichever of its builds is installed (`LIBRARY_BUILDS`)."""
    found: dict[str, str | None] = {"python": platform.python_version()}
    for name in LIBRARIES:
        found[name] = None
        for distribution in (name, *LIBRARY_BUILDS.get(name, ())):
            try:
                found[name] = dist_version(distribution)
                break
            except PackageNotFoundError:
                continue
    return found


@dataclass(frozen=True)
class LoadedArtifact:
    forecaster: Any
    manifest: dict[str, Any]


class StagedVersion:
    """A version being written: files go in with `write` (or are written by workers into
    ``path`` and declared with `add`), the manifest lists each with its sha256 and size."""

    def __init__(self, registry: Registry, name: str, path: Path) -> None:
        self.registry, self.name, self.path = registry, name, path
        self.files: dict[str, dict[str, Any]] = {}

    def write(self, filename: str, data: bytes) -> dict[str, Any]:
        entry = write_staged_file(self.path, filename, data)
        self.files[filename] = entry
        return entry

    def add(self, filename: str, entry: Mapping[str, Any]) -> None:
        """A file a worker wrote (with `write_staged_file`) into ``path``."""
        self.files[filename] = {"sha256": entry["sha256"], "size": entry["size"]}

    def commit(self, manifest: dict[str, Any]) -> int:
        """Number, sign and rename into place; ``manifest['files']`` gets every file written
        (each checked for its size first: a worker that did not share the folder is caught here)."""
        for filename, entry in self.files.items():
            try:
                size = (self.path / filename).stat().st_size
            except FileNotFoundError:
                raise IntegrityError(f"{self.name}: {filename} was not written into the staging folder") from None
            if size != entry["size"]:
                raise IntegrityError(f"{self.name}: {filename} has {size} bytes in staging, {entry['size']} expected")
        manifest["files"] = {**manifest.get("files", {}), **self.files}
        return self.registry.commit_staged(self.name, self.path, manifest)


def write_staged_file(staging: Path | str, filename: str, data: bytes) -> dict[str, Any]:
    """Write one file of a staged version (any process that sees the folder), fsync'd; returns
    its manifest entry. ``filename`` is relative, at most one folder deep, no path tricks."""
    parts = Path(filename).parts
    if not 1 <= len(parts) <= 2 or any(not NAME_PATTERN.fullmatch(p) for p in parts):
        raise InvalidName(f"invalid file name {filename!r} in a version", field="file")
    path = Path(staging) / filename
    path.parent.mkdir(exist_ok=True)
    fsync_write(path, data)
    return {"sha256": sha256_bytes(data), "size": len(data)}


class Registry:
    """One registry folder. Safe for several threads and processes at once."""

    def __init__(self, root: Path | str, signing_key: bytes | None = None, shard_series: int = SHARD_SERIES) -> None:
        """``shard_series``: series per shard when a panel of per-series models is published
        (0: always one artifact); the publisher decides what can be sharded."""
        self.root = Path(root).resolve()
        self.signing_key = signing_key
        self.shard_series = int(shard_series)
        self._last_good_aliases: dict[str, dict[str, int]] = {}
        self._alias_seq: dict[str, int] = {}  # highest signed sequence seen per model: older files are replays

    # ------------------------------------------------------------------ paths
    def model_dir(self, name: str) -> Path:
        path = (self.root / validate_name(name)).resolve()
        if path.parent != self.root:
            raise InvalidName(f"invalid model name {name!r}", field="name")
        return path

    def version_dir(self, name: str, version: int) -> Path:
        return self.model_dir(name) / "versions" / str(int(version))

    @contextlib.contextmanager
    def _model_lock(self, name: str) -> Iterator[None]:
        directory = self.model_dir(name)
        directory.mkdir(parents=True, exist_ok=True)
        with FileLock(str(directory / ".lock")):
            yield

    # ------------------------------------------------------------------ listing
    def list_models(self) -> list[str]:
        if not self.root.is_dir():
            return []
        names = []
        for entry in sorted(self.root.iterdir()):
            if not entry.is_dir() or not NAME_PATTERN.fullmatch(entry.name):
                continue
            if (entry / SPEC_FILE).is_file() or (entry / "versions").is_dir():
                names.append(entry.name)
        return names

    def exists(self, name: str) -> bool:
        directory = self.model_dir(name)
        return (directory / SPEC_FILE).is_file() or (directory / "versions").is_dir()

    def require_model(self, name: str) -> None:
        if not self.exists(name):
            raise ModelNotFound(f"no model named '{name}' in the registry", model=name)

    def list_versions(self, name: str) -> list[int]:
        """Complete versions only: integer-named dirs that hold a manifest."""
        versions_dir = self.model_dir(name) / "versions"
        if not versions_dir.is_dir():
            return []
        found = []
        for entry in versions_dir.iterdir():
            if entry.name.isdigit() and (entry / MANIFEST).is_file():
                found.append(int(entry.name))
        return sorted(found)

    # ------------------------------------------------------------------ spec
    def spec_path(self, name: str) -> Path:
        return self.model_dir(name) / SPEC_FILE

    def read_spec_raw(self, name: str) -> dict[str, Any] | None:
        path = self.spec_path(name)
        if not path.is_file():
            return None
        origin = f"{name}/{SPEC_FILE}"
        try:
            raw = load_document(path.read_bytes(), "yaml", origin)
        except SpecError as exc:
            raise SpecFileInvalid.about(origin, exc.detail) from None
        if not isinstance(raw, dict):
            raise SpecFileInvalid.about(origin, "not a mapping")
        return raw

    def write_spec_document(self, name: str, raw: Mapping[str, Any]) -> None:
        """Replace ``model.yaml`` atomically (the caller has validated the document)."""
        text = yaml.safe_dump(dict(raw), sort_keys=False, allow_unicode=True)
        with self._model_lock(name):
            atomic_write(self.spec_path(name), text.encode("utf-8"))

    # ------------------------------------------------------------------ manifests
    def read_manifest(self, name: str, version: int) -> dict[str, Any]:
        path = self.version_dir(name, version) / MANIFEST
        try:
            return json.loads(path.read_bytes())
        except FileNotFoundError:
            self.require_model(name)
            raise VersionNotFound(f"model '{name}' has no version {version}", model=name, version=version) from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise VersionLoadError(f"manifest of {name} v{version} is not valid JSON: {exc}") from None

    def verified_manifest(self, name: str, version: int) -> dict[str, Any]:
        """The manifest, its HMAC checked when a signing key is set (unsigned: refused)."""
        manifest = self.read_manifest(name, version)
        if manifest.get("model") != name or manifest.get("version") != version:
            # the signature covers these two fields: a version copied elsewhere is refused
            raise IntegrityError(
                f"{name} v{version}: the manifest belongs to {str(manifest.get('model'))[:64]} "
                f"v{str(manifest.get('version'))[:20]}; a version copied to another place is refused"
            )
        if self.signing_key is None:
            return manifest
        signature = manifest.get("signature") or {}
        if not signature.get("value"):
            raise IntegrityError(f"{name} v{version} is not signed and a signing key is set; refused")
        expected = sign_manifest(manifest, self.signing_key)
        if signature.get("alg") != "HMAC-SHA256" or not hmac.compare_digest(expected, str(signature["value"])):
            raise IntegrityError(f"{name} v{version}: manifest signature (HMAC) does not match; refused")
        return manifest

    # ------------------------------------------------------------------ aliases
    def read_aliases(self, name: str) -> dict[str, int]:
        """``aliases.json`` as ``{alias: version}``; a missing file is no aliases. Invalid JSON,
        wrong types, or (with a signing key) a missing, wrong or replayed signature raise
        `AliasesUnreadable`: callers keep the last good aliases and report it."""
        path = self.model_dir(name) / ALIASES
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return {}
        try:
            raw = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise AliasesUnreadable(
                f"{name}/{ALIASES} is not valid JSON ({exc.msg if hasattr(exc, 'msg') else exc})", model=name
            ) from None
        if not isinstance(raw, dict):
            raise AliasesUnreadable(f"{name}/{ALIASES} must be an object of alias -> version", model=name)
        signature = raw.pop(ALIAS_SIGNATURE, None)
        aliases: dict[str, int] = {}
        for alias, version in raw.items():
            if not isinstance(alias, str) or not ALIAS_PATTERN.fullmatch(alias):
                raise AliasesUnreadable(f"{name}/{ALIASES}: {str(alias)[:40]!r} is not an alias name", model=name)
            if not isinstance(version, int) or isinstance(version, bool) or version < 1:
                raise AliasesUnreadable(
                    f"{name}/{ALIASES}: alias '{alias}' must point at a version number, not {str(version)[:40]!r}",
                    model=name,
                )
            aliases[alias] = version
        if self.signing_key is not None:
            self._check_alias_signature(name, aliases, signature)
        self._last_good_aliases[name] = aliases
        return dict(aliases)

    def _check_alias_signature(self, name: str, aliases: dict[str, int], signature: Any) -> None:
        assert self.signing_key is not None
        if not isinstance(signature, dict) or not signature.get("value"):
            raise AliasesUnreadable(f"{name}/{ALIASES} is not signed and a signing key is set", model=name)
        seq = signature.get("seq")
        if not isinstance(seq, int) or isinstance(seq, bool):
            raise AliasesUnreadable(f"{name}/{ALIASES}: signature has no sequence number", model=name)
        expected = sign_aliases(name, aliases, seq, self.signing_key)
        if signature.get("alg") != "HMAC-SHA256" or not hmac.compare_digest(expected, str(signature["value"])):
            raise AliasesUnreadable(
                f"{name}/{ALIASES}: signature (HMAC over model name, aliases and sequence) does not match", model=name
            )
        seen = self._alias_seq.get(name, 0)
        if seq < seen:
            raise AliasesUnreadable(
                f"{name}/{ALIASES}: sequence {seq} is older than {seen} seen before (a replayed file)", model=name
            )
        self._alias_seq[name] = seq

    def set_alias(self, name: str, alias: str, version: int) -> dict[str, int]:
        """Point ``alias`` at an existing version: one atomic file replace (signed, with a
        sequence number one above the last, when a signing key is set)."""
        validate_alias(alias)
        self.require_model(name)
        with self._model_lock(name):
            if version not in self.list_versions(name):
                raise VersionNotFound(f"model '{name}' has no version {version}", model=name, version=version)
            try:
                aliases = self.read_aliases(name)
                if not aliases and not (self.model_dir(name) / ALIASES).exists():
                    aliases = dict(self._last_good_aliases.get(name, {}))  # deleted: keep the others
            except AliasesUnreadable as exc:  # rewrite from what this process last read as good
                aliases = dict(self._last_good_aliases.get(name, {}))
                log.warning("%s; rewriting it from the last good aliases %s", exc.detail, aliases)
            aliases[alias] = int(version)
            document: dict[str, Any] = dict(sorted(aliases.items()))
            if self.signing_key is not None:
                seq = max(self._alias_seq.get(name, 0), self._file_seq(name)) + 1
                document[ALIAS_SIGNATURE] = {
                    "alg": "HMAC-SHA256",
                    "seq": seq,
                    "value": sign_aliases(name, aliases, seq, self.signing_key),
                }
                self._alias_seq[name] = seq
            atomic_write(self.model_dir(name) / ALIASES, json.dumps(document, indent=2).encode())
            self._last_good_aliases[name] = dict(aliases)
        return aliases

    def _file_seq(self, name: str) -> int:
        """The sequence number written in aliases.json, whatever its state (0 if none)."""
        try:
            raw = json.loads((self.model_dir(name) / ALIASES).read_bytes())
            seq = raw[ALIAS_SIGNATURE]["seq"]
            return seq if isinstance(seq, int) else 0
        except (OSError, ValueError, KeyError, TypeError):
            return 0

    def resolve(self, name: str, version: int | None = None, alias: str | None = None) -> int:
        """A version number from an explicit version, an alias, or ``production``."""
        self.require_model(name)
        if version is not None:
            if version not in self.list_versions(name):
                raise VersionNotFound(f"model '{name}' has no version {version}", model=name, version=version)
            return int(version)
        alias = alias or "production"
        aliases = self.read_aliases(name)
        if alias not in aliases:
            raise AliasNotFound(f"model '{name}' has no alias '{alias}'", model=name, alias=alias)
        return aliases[alias]

    # ------------------------------------------------------------------ publish
    def write_version(self, name: str, files: Mapping[str, bytes], manifest: dict[str, Any]) -> int:
        """Write ``files`` and ``manifest.json`` (last) as the next version: staged, fsync'd,
        numbered and signed under the model's lock, renamed into place; returns its number.
        A reader never sees half a version."""
        with self.new_version(name) as staged:
            for filename, data in files.items():
                staged.write(filename, data)
            return staged.commit(manifest)

    @contextlib.contextmanager
    def new_version(self, name: str) -> Iterator[StagedVersion]:
        """A staging folder for the next version: files are written into it (by this process or
        by workers that share the folder, see `StagedVersion`), then `StagedVersion.commit`
        numbers, signs and renames it into place. Leaving the block without a commit, or by an
        exception, removes it; a staging folder whose writer died is removed on start."""
        validate_name(name)
        versions_dir = self.model_dir(name) / "versions"
        versions_dir.mkdir(parents=True, exist_ok=True)
        staging = versions_dir / f"{STAGING_PREFIX}{uuid.uuid4().hex}"
        staging.mkdir()
        owner = open(staging / ".owner", "a+")  # noqa: SIM115 - held while we write: cleanup skips live stagings
        try:
            fcntl.flock(owner.fileno(), fcntl.LOCK_EX)
            yield StagedVersion(self, name, staging)
        finally:
            owner.close()
            shutil.rmtree(staging, ignore_errors=True)  # gone after a commit: renamed into place

    def commit_staged(self, name: str, staging: Path, manifest: dict[str, Any]) -> int:
        """Number, sign and rename a staged folder into place (see `new_version`)."""
        versions_dir = staging.parent
        with self._model_lock(name):
            version = max([0, *self.list_versions(name), *self._reserved_numbers(versions_dir)]) + 1
            manifest["version"] = version
            if self.signing_key is not None:
                manifest["signature"] = {"alg": "HMAC-SHA256", "value": sign_manifest(manifest, self.signing_key)}
            fsync_write(staging / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True).encode())
            (staging / ".owner").unlink()
            for folder in {(staging / f).parent for f in manifest.get("files", {})} - {staging}:
                fsync_dir(folder)
            fsync_dir(staging)
            os.rename(staging, versions_dir / str(version))
            fsync_dir(versions_dir)
        log.info("published %s v%d", name, version)
        return version

    # ------------------------------------------------------------------ delete, retention
    def delete_version(self, name: str, version: int) -> None:
        """Delete a version no alias points at (`Conflict` if one does). Under the model's
        lock the directory is renamed away (readers stop seeing it at once) and a tombstone
        keeps its number, so no later version reuses it; then the files are removed."""
        self.require_model(name)
        with self._model_lock(name):
            self._delete_locked(name, int(version))

    def prune_versions(self, name: str, keep: int) -> list[int]:
        """Retention: delete the versions older than the newest ``keep`` that no alias points
        at; returns the deleted numbers."""
        deleted = []
        with self._model_lock(name):
            versions = self.list_versions(name)
            pinned = set(self.read_aliases(name).values())
            for version in versions[: max(len(versions) - int(keep), 0)]:
                if version not in pinned:
                    self._delete_locked(name, version)
                    deleted.append(version)
        if deleted:
            log.info("retention of %s (keep %d): deleted versions %s", name, keep, deleted)
        return deleted

    def _delete_locked(self, name: str, version: int) -> None:
        if version not in self.list_versions(name):
            raise VersionNotFound(f"model '{name}' has no version {version}", model=name, version=version)
        pointing = sorted(a for a, v in self.read_aliases(name).items() if v == version)
        if pointing:
            raise Conflict(
                f"{name} v{version} is what alias(es) {', '.join(pointing)} point at: move them first",
                model=name,
                version=version,
                aliases=pointing,
            )
        directory = self.version_dir(name, version)
        doomed = directory.with_name(f"{DELETING_PREFIX}{version}-{uuid.uuid4().hex}")
        os.rename(directory, doomed)
        directory.mkdir()
        fsync_write(directory / TOMBSTONE, b"")  # keeps the number: never reused
        fsync_dir(directory.parent)
        shutil.rmtree(doomed, ignore_errors=True)
        log.info("deleted %s v%d", name, version)

    @staticmethod
    def _reserved_numbers(versions_dir: Path) -> list[int]:
        """Integer dirs without a manifest (hand-made or damaged): never reuse their number."""
        return [int(e.name) for e in versions_dir.iterdir() if e.name.isdigit()]

    # ------------------------------------------------------------------ housekeeping
    def cleanup_staging(self) -> list[Path]:
        """Remove staging dirs left by dead publishers (a live one holds its owner lock)."""
        removed = []
        for name in self.list_models():
            versions_dir = self.model_dir(name) / "versions"
            if not versions_dir.is_dir():
                continue
            for entry in versions_dir.iterdir():
                if entry.name.startswith(DELETING_PREFIX) and entry.is_dir():  # a delete that died midway
                    shutil.rmtree(entry, ignore_errors=True)
                    removed.append(entry)
                    continue
                if entry.name.startswith(STAGING_PREFIX) and entry.is_dir() and not _owner_alive(entry):
                    shutil.rmtree(entry, ignore_errors=True)
                    removed.append(entry)
                    log.warning("removed leftover staging dir %s", entry)
        return removed

    # ------------------------------------------------------------------ loading
    def read_verified(self, name: str, version: int, filename: str, manifest: Mapping[str, Any]) -> bytes:
        """A file the manifest lists, its size and sha256 checked."""
        return self._read_verified(name, version, filename, manifest)

    def verify_files(self, name: str, version: int, manifest: Mapping[str, Any], prefix: str) -> int:
        """Check size and sha256 of every listed file under ``prefix`` (e.g. ``shards/``) without
        keeping them; returns their total bytes. A version is refused whole for one bad file."""
        total = 0
        for filename in sorted(f for f in manifest.get("files", {}) if f.startswith(prefix)):
            total += len(self._read_verified(name, version, filename, manifest))
        return total

    def load_object(self, name: str, version: int, filename: str, manifest: Mapping[str, Any]) -> Any:
        """Unpickle a listed file after its size and sha256 are checked (the same bytes)."""
        data = self._read_verified(name, version, filename, manifest)
        try:
            return pickle.loads(data)
        except Exception as exc:
            raise VersionLoadError(
                f"{name} v{version}: {filename} cannot be unpickled: {type(exc).__name__}: {exc}"
            ) from exc

    def _read_verified(self, name: str, version: int, filename: str, manifest: Mapping[str, Any]) -> bytes:
        entry = manifest.get("files", {}).get(filename)
        if entry is None:
            raise IntegrityError(f"{name} v{version}: manifest does not list {filename}")
        path = self.version_dir(name, version) / filename
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise IntegrityError(f"{name} v{version}: {filename} is missing") from None
        if len(data) != entry["size"]:
            raise IntegrityError(
                f"{name} v{version}: {filename} has {len(data)} bytes, the manifest says {entry['size']}"
            )
        if sha256_bytes(data) != entry["sha256"]:
            raise IntegrityError(f"{name} v{version}: {filename} sha256 does not match its manifest; refused")
        return data

    def load(self, name: str, version: int) -> LoadedArtifact:
        """Check the manifest's HMAC (with a signing key), read the artifact bytes once,
        check size and sha256, then unpickle those same bytes."""
        manifest = self.verified_manifest(name, version)
        check_libraries(manifest)
        return LoadedArtifact(forecaster=self.load_object(name, version, ARTIFACT, manifest), manifest=manifest)

    def read_training(self, name: str, version: int, manifest: Mapping[str, Any] | None = None) -> pd.DataFrame:
        manifest = manifest or self.verified_manifest(name, version)
        from service.tables import Schema, read_parquet

        data = self._read_verified(name, version, TRAINING, manifest)
        return read_parquet(io.BytesIO(data), Schema.from_dict(manifest["schema"]))

    def read_precomputed(self, name: str, version: int, manifest: Mapping[str, Any]) -> pd.DataFrame | None:
        if not manifest.get("precomputed", {}).get("file"):
            return None
        from service.tables import Schema, read_parquet

        data = self._read_verified(name, version, FORECAST, manifest)
        return read_parquet(io.BytesIO(data), Schema.from_dict(manifest["schema"]))


def sign_aliases(name: str, aliases: Mapping[str, int], seq: int, key: bytes) -> str:
    """HMAC-SHA256 over the model name, the aliases and the file's sequence number: a signed
    file copied to another model, or an older one put back, does not verify."""
    body = {"model": name, "aliases": dict(sorted(aliases.items())), "seq": seq}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return hmac.new(key, canonical, hashlib.sha256).hexdigest()


def sign_manifest(manifest: Mapping[str, Any], key: bytes) -> str:
    """HMAC-SHA256 over the canonical JSON of the manifest without its signature
    (it includes every file's sha256, the artifact's among them)."""
    body = {k: v for k, v in manifest.items() if k != "signature"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    return hmac.new(key, canonical, hashlib.sha256).hexdigest()


def _owner_alive(staging: Path) -> bool:
    owner = staging / ".owner"
    try:
        handle = open(owner, "a+")  # noqa: SIM115 - closed by the with below
    except FileNotFoundError:
        return False
    with handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                return True
            raise
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        return False


def check_libraries(manifest: Mapping[str, Any]) -> None:
    """A major version change of a library the artifact was pickled with is refused;
    a minor one is logged as a warning."""
    recorded = manifest.get("libraries") or {}
    current = library_versions()
    for lib in ("sktime", "scikit-learn", "xgboost", "lightgbm", "pandas"):
        then, now = recorded.get(lib), current.get(lib)
        if not then or not now or then == now:
            continue
        then_parts, now_parts = then.split("."), now.split(".")
        if then_parts[0] != now_parts[0]:
            raise VersionLoadError(
                f"{manifest.get('model')} v{manifest.get('version')} was built with {lib} {then}; "
                f"this server runs {lib} {now} (major version differs): retrain or publish again"
            )
        if then_parts[:2] != now_parts[:2]:
            log.warning(
                "%s v%s was built with %s %s, running %s",
                manifest.get("model"),
                manifest.get("version"),
                lib,
                then,
                now,
            )
