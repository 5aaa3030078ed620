"""The release catalog: every built release, its artifact, and its lifecycle, in the state store.

Lifecycle (transitions are one flat table; only forward moves; ``revoked`` is terminal)::

    built --> canary --> stable
      \\         \\          \\
       +--------+----------+--> revoked

A revoked release is never rolled out again: rollouts call ``require_rollable`` first. Artifacts
are checked against their recorded sha256 before any use: ``verify_artifact``.
State changes are conditional UPDATEs (``WHERE state = <what we read>``), so two concurrent
promotions cannot both succeed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

from sqlalchemy import BigInteger, DateTime, Engine, Integer, String, Text, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, mapped_column

from edgefleet.errors import ArtifactError, ReleaseInputError, StateError
from edgefleet.state.db import Base, session_scope
from edgefleet.talos.config import ReleaseRef


class ReleaseState(StrEnum):
    built = "built"
    """Built and verified; not on any store yet."""
    canary = "canary"
    """Being rolled out to canary stores."""
    stable = "stable"
    """Cleared for the whole fleet."""
    revoked = "revoked"
    """Withdrawn for good: never rolled out again."""


TRANSITIONS: dict[ReleaseState, frozenset[ReleaseState]] = {
    ReleaseState.built: frozenset({ReleaseState.canary, ReleaseState.revoked}),
    ReleaseState.canary: frozenset({ReleaseState.stable, ReleaseState.revoked}),
    ReleaseState.stable: frozenset({ReleaseState.revoked}),
    ReleaseState.revoked: frozenset(),
}
ROLLABLE = frozenset({ReleaseState.built, ReleaseState.canary, ReleaseState.stable})


def check_transition(name: str, current: ReleaseState, target: ReleaseState) -> None:
    """Raise ReleaseInputError unless ``current -> target`` is in TRANSITIONS."""
    if target not in TRANSITIONS[current]:
        allowed = ", ".join(sorted(TRANSITIONS[current])) or "none: revoked is final"
        raise ReleaseInputError(f"release {name} is {current}; it cannot become {target} (allowed: {allowed})")


class ReleaseRow(Base):
    __tablename__ = "releases"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(63), unique=True, nullable=False)
    artifact_path: Mapped[str] = mapped_column(Text, nullable=False)
    sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    size: Mapped[int] = mapped_column(BigInteger, nullable=False)
    talos_version: Mapped[str] = mapped_column(String(40), nullable=False)
    kubernetes_version: Mapped[str] = mapped_column(String(40), nullable=False)
    installer_image: Mapped[str] = mapped_column(Text, nullable=False)
    extensions: Mapped[str] = mapped_column(Text, nullable=False)  # JSON list
    kernel_args: Mapped[str] = mapped_column(Text, nullable=False)  # JSON list
    upstream_sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    template_hash: Mapped[str] = mapped_column(String(64), nullable=False)
    build_seconds: Mapped[float] = mapped_column(nullable=False, default=0.0)
    state: Mapped[str] = mapped_column(String(16), nullable=False, default=ReleaseState.built.value)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    state_changed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    note: Mapped[str] = mapped_column(Text, nullable=False, default="")


@dataclass(frozen=True, slots=True)
class Release:
    """A catalog entry."""

    name: str
    artifact_path: Path
    sha256: str
    size: int
    talos_version: str
    kubernetes_version: str
    installer_image: str
    extensions: tuple[str, ...]
    kernel_args: tuple[str, ...]
    upstream_sha256: str
    template_hash: str
    build_seconds: float
    state: ReleaseState
    created_at: datetime
    state_changed_at: datetime
    note: str = ""

    def ref(self) -> ReleaseRef:
        """What a machine config needs of this release (versions and installer image)."""
        return ReleaseRef(name=self.name, talos_version=self.talos_version,
                          kubernetes_version=self.kubernetes_version, installer_image=self.installer_image)

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "state": self.state.value, "artifact_path": str(self.artifact_path),
                "sha256": self.sha256, "size": self.size, "talos_version": self.talos_version,
                "kubernetes_version": self.kubernetes_version, "installer_image": self.installer_image,
                "extensions": list(self.extensions), "kernel_args": list(self.kernel_args),
                "upstream_sha256": self.upstream_sha256, "template_hash": self.template_hash,
                "build_seconds": round(self.build_seconds, 3), "created_at": self.created_at.isoformat(),
                "state_changed_at": self.state_changed_at.isoformat(), "note": self.note}


def _utc(dt: datetime) -> datetime:
    # SQLite hands back naive datetimes even for timezone=True columns; we only ever store UTC.
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def _from_row(row: ReleaseRow) -> Release:
    return Release(name=row.name, artifact_path=Path(row.artifact_path), sha256=row.sha256, size=row.size,
                   talos_version=row.talos_version, kubernetes_version=row.kubernetes_version,
                   installer_image=row.installer_image, extensions=tuple(json.loads(row.extensions)),
                   kernel_args=tuple(json.loads(row.kernel_args)), upstream_sha256=row.upstream_sha256,
                   template_hash=row.template_hash, build_seconds=row.build_seconds,
                   state=ReleaseState(row.state), created_at=_utc(row.created_at),
                   state_changed_at=_utc(row.state_changed_at), note=row.note)


class ReleaseCatalog:
    """Releases in the state store behind ``engine`` (see ``edgefleet.state.db.open_state``)."""

    def __init__(self, engine: Engine):
        self.engine = engine

    def add(self, release: Release) -> Release:
        """Record a new release; ReleaseInputError if the name is taken."""
        row = ReleaseRow(name=release.name, artifact_path=str(release.artifact_path), sha256=release.sha256,
                         size=release.size, talos_version=release.talos_version,
                         kubernetes_version=release.kubernetes_version, installer_image=release.installer_image,
                         extensions=json.dumps(list(release.extensions)),
                         kernel_args=json.dumps(list(release.kernel_args)), upstream_sha256=release.upstream_sha256,
                         template_hash=release.template_hash, build_seconds=release.build_seconds,
                         state=release.state.value, created_at=release.created_at,
                         state_changed_at=release.state_changed_at, note=release.note)
        try:
            with session_scope(self.engine) as s:
                s.add(row)
        except IntegrityError as e:
            raise ReleaseInputError(f"release {release.name} already exists in the catalog; pick a new name") from e
        return release

    def find(self, name: str) -> Release | None:
        with session_scope(self.engine) as s:
            row = s.scalars(select(ReleaseRow).where(ReleaseRow.name == name)).one_or_none()
            return _from_row(row) if row else None

    def get(self, name: str) -> Release:
        release = self.find(name)
        if release is None:
            known = ", ".join(r.name for r in self.list()[-10:]) or "none yet"
            raise ReleaseInputError(f"unknown release {name!r} (recent: {known})")
        return release

    def list(self, state: ReleaseState | None = None) -> list[Release]:
        """Releases, oldest first."""
        with session_scope(self.engine) as s:
            q = select(ReleaseRow).order_by(ReleaseRow.created_at, ReleaseRow.id)
            if state is not None:
                q = q.where(ReleaseRow.state == state.value)
            return [_from_row(r) for r in s.scalars(q)]

    def transition(self, name: str, target: ReleaseState, *, now: datetime, note: str = "") -> Release:
        """Move a release to ``target`` if the lifecycle allows it (atomically against racing writers)."""
        current = self.get(name)
        check_transition(name, current.state, target)
        with session_scope(self.engine) as s:
            result = s.execute(update(ReleaseRow)
                               .where(ReleaseRow.name == name, ReleaseRow.state == current.state.value)
                               .values(state=target.value, state_changed_at=now, note=note or current.note))
            if result.rowcount != 1:  # type: ignore[attr-defined]
                raise StateError(f"release {name} changed state while promoting it to {target}; retry")
        return self.get(name)

    def promote(self, name: str, target: ReleaseState, *, now: datetime, note: str = "") -> Release:
        if target is ReleaseState.revoked:
            raise ReleaseInputError("use revoke to revoke a release")
        return self.transition(name, target, now=now, note=note)

    def revoke(self, name: str, *, now: datetime, reason: str) -> Release:
        if not reason.strip():
            raise ReleaseInputError(f"revoking release {name} needs a reason")
        return self.transition(name, ReleaseState.revoked, now=now, note=reason)

    def require_rollable(self, name: str) -> Release:
        """The release, if it may be rolled out; ReleaseInputError if unknown or revoked."""
        release = self.get(name)
        if release.state not in ROLLABLE:
            raise ReleaseInputError(f"release {name} is {release.state} ({release.note or 'no reason recorded'}) "
                                    "and can never be rolled out; build a new release")
        return release


def verify_artifact(release: Release) -> Path:
    """The release's image path after re-hashing it; ArtifactError if it is missing or altered."""
    from edgefleet.releases.upstream import sha256_file

    path = release.artifact_path
    if not path.is_file():
        raise ArtifactError(f"release {release.name}: artifact {path} is missing; rebuild the release "
                            "under a new name or restore the file")
    actual = sha256_file(path)
    if actual != release.sha256:
        raise ArtifactError(f"release {release.name}: artifact {path} has sha256 {actual}, the catalog "
                            f"recorded {release.sha256}; the file was altered: do not use it")
    size = path.stat().st_size
    if size != release.size:  # cannot differ when the hash matches, unless the catalog row was edited
        raise ArtifactError(f"release {release.name}: artifact {path} is {size} bytes, catalog says {release.size}")
    return path
