"""SQLite persistence: rollout state, the decision history, the webhook outbox, stables,
and this store's identity (which names the processes the local deployer starts).

Every state change is written in one transaction together with the decision that caused
it, the events it announces and the stable it installs, so a crash leaves either all of
them or none. A row that cannot be read back is quarantined (kept, marked, reported)
instead of failing every listing.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from gate.core.errors import Conflict
from gate.core.spec import TERMINAL
from gate.core.state import RolloutState
from gate.database import Database

logger = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS rollouts (
    id TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    phase TEXT NOT NULL,
    active INTEGER NOT NULL,
    state TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS one_active_rollout_per_model
    ON rollouts(model) WHERE active = 1;
CREATE TABLE IF NOT EXISTS decisions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    rollout_id TEXT NOT NULL REFERENCES rollouts(id),
    at TEXT NOT NULL,
    phase TEXT NOT NULL,
    step_index INTEGER NOT NULL,
    canary_weight INTEGER NOT NULL,
    action TEXT NOT NULL,
    outcome TEXT,
    reason TEXT NOT NULL,
    evidence TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS decisions_by_rollout ON decisions(rollout_id, seq);
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    rollout_id TEXT NOT NULL,
    event TEXT NOT NULL,
    payload TEXT NOT NULL,
    created_at TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    delivered_at TEXT,
    gave_up_at TEXT,
    last_error TEXT
);
CREATE TABLE IF NOT EXISTS stables (
    model TEXT PRIMARY KEY,
    version TEXT NOT NULL,
    artifact_uri TEXT NOT NULL,
    endpoint TEXT,
    digest TEXT,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS quarantine (
    rollout_id TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    reason TEXT NOT NULL,
    at TEXT NOT NULL
);
"""


class ActiveRolloutExists(Conflict):
    def __init__(self, model: str) -> None:
        super().__init__(
            f"model {model} already has an active rollout (a post-promotion watch counts: "
            "promote it to end the watch now)"
        )
        self.model = model


class DecisionEntry(BaseModel):
    """One decision as the history shows it: the state it led to and its evidence."""

    at: datetime
    phase: str
    step_index: int
    canary_weight: int
    action: str
    outcome: str | None
    reason: str
    evidence: dict[str, Any]


class Decision(DecisionEntry):
    seq: int
    rollout_id: str


class Stable(BaseModel):
    model: str
    version: str
    artifact_uri: str
    endpoint: dict[str, Any] | None = None  # backend-specific: where it serves (local: pid, ports)
    digest: str | None = None  # "sha256:<hex>" of the model file it must serve


class Quarantined(BaseModel):
    """A stored rollout that could not be read back, and why."""

    rollout_id: str
    model: str
    reason: str
    at: datetime


class OutboxEvent(BaseModel):
    seq: int
    rollout_id: str
    event: str
    payload: dict[str, Any]
    attempts: int


def _now() -> str:
    return datetime.now(UTC).isoformat()


class SQLiteStore(Database):
    """One connection, serialised by a lock: the gate's write rate is a few per second."""

    def __init__(self, path: Path | str) -> None:
        super().__init__(path, "FULL", SCHEMA)
        self._db.row_factory = sqlite3.Row
        with self._lock:
            columns = {r["name"] for r in self._db.execute("PRAGMA table_info(stables)")}
            if "digest" not in columns:  # a database from before digests were pinned
                self._db.execute("ALTER TABLE stables ADD COLUMN digest TEXT")
            self._db.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('instance', ?)",
                (uuid.uuid4().hex[:16],),
            )
            row = self._db.execute("SELECT value FROM meta WHERE key = 'instance'").fetchone()
        self.instance: str = row["value"]
        """Random, made once per database: marks what this gate (across restarts) owns."""

    # --- rollouts -------------------------------------------------------------------------
    def create(
        self,
        state: RolloutState,
        decision: dict[str, Any] | None = None,
        event: tuple[str, dict[str, Any]] | None = None,
    ) -> None:
        try:
            with self._transaction() as db:
                db.execute(
                    "INSERT INTO rollouts (id, model, phase, active, state, created_at, "
                    "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        state.id,
                        state.model,
                        state.phase.value,
                        int(not state.terminal),
                        state.model_dump_json(),
                        state.created_at.isoformat(),
                        state.updated_at.isoformat(),
                    ),
                )
                self._record(db, state, decision, event)
        except sqlite3.IntegrityError as exc:
            raise ActiveRolloutExists(state.model) from exc

    def save(
        self,
        state: RolloutState,
        decision: dict[str, Any] | None = None,
        event: tuple[str, dict[str, Any]] | None = None,
        stable: Stable | None = None,
    ) -> None:
        """State, its decision record, its webhook event and the stable it installs: all
        or nothing."""
        with self._transaction() as db:
            if stable is not None:
                self._set_stable(db, stable)
            db.execute(
                "UPDATE rollouts SET phase = ?, active = ?, state = ?, updated_at = ? WHERE id = ?",
                (
                    state.phase.value,
                    int(state.phase not in TERMINAL),
                    state.model_dump_json(),
                    state.updated_at.isoformat(),
                    state.id,
                ),
            )
            self._record(db, state, decision, event)

    def _record(
        self,
        db: sqlite3.Connection,
        state: RolloutState,
        decision: dict[str, Any] | None,
        event: tuple[str, dict[str, Any]] | None,
    ) -> None:
        if decision is not None:
            db.execute(
                "INSERT INTO decisions (rollout_id, at, phase, step_index, canary_weight, "
                "action, outcome, reason, evidence) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    state.id,
                    _now(),
                    state.phase.value,
                    state.step_index,
                    state.canary_weight,
                    str(decision["action"]),
                    decision.get("outcome"),
                    decision.get("reason", ""),
                    json.dumps(decision.get("evidence", {})),
                ),
            )
        if event is not None:
            db.execute(
                "INSERT INTO outbox (rollout_id, event, payload, created_at) VALUES (?, ?, ?, ?)",
                (state.id, event[0], json.dumps(event[1]), _now()),
            )

    def get(self, rollout_id: str) -> RolloutState | None:
        """The rollout, or None if there is none or it is quarantined."""
        with self._lock:
            row = self._db.execute(
                "SELECT id, model, state FROM rollouts WHERE id = ? AND phase != 'corrupt'",
                (rollout_id,),
            ).fetchone()
        return self._read(row) if row else None

    def version(self, rollout_id: str) -> tuple[str, int] | None:
        """What changes when the rollout does (its ``updated_at`` and its last decision's
        seq), read from two indexed rows: how a watcher polls cheaply, loading the whole
        rollout only when this moved. None if there is none or it is quarantined."""
        with self._lock:
            row = self._db.execute(
                "SELECT updated_at, (SELECT coalesce(max(seq), 0) FROM decisions "
                "WHERE rollout_id = ?) FROM rollouts WHERE id = ? AND phase != 'corrupt'",
                (rollout_id, rollout_id),
            ).fetchone()
        return (str(row[0]), int(row[1])) if row else None

    def rollouts(self, active_only: bool = False) -> list[RolloutState]:
        """Readable rollouts, oldest first; an unreadable row is quarantined, not raised."""
        query = "SELECT id, model, state FROM rollouts WHERE phase != 'corrupt'"
        if active_only:
            query += " AND active = 1"
        with self._lock:
            rows = self._db.execute(query + " ORDER BY created_at").fetchall()
        states = [self._read(r) for r in rows]
        return [s for s in states if s is not None]

    def _read(self, row: sqlite3.Row) -> RolloutState | None:
        try:
            return RolloutState.model_validate_json(row["state"])
        except ValidationError as exc:
            reason = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:5]
            )
            self.quarantine(row["id"], row["model"], reason)
            return None

    def quarantine(self, rollout_id: str, model: str, reason: str) -> None:
        """Take a rollout out of every listing and the controller's loop; keep its row."""
        logger.error("rollout %s quarantined: %s", rollout_id, reason)
        with self._transaction() as db:
            db.execute(
                "UPDATE rollouts SET phase = 'corrupt', active = 0 WHERE id = ?", (rollout_id,)
            )
            db.execute(
                "INSERT OR REPLACE INTO quarantine (rollout_id, model, reason, at) "
                "VALUES (?, ?, ?, ?)",
                (rollout_id, model, reason[:2000], _now()),
            )

    def quarantined(self) -> list[Quarantined]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM quarantine ORDER BY at").fetchall()
        return [Quarantined.model_validate(dict(r)) for r in rows]

    def decisions(self, rollout_id: str) -> list[Decision]:
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM decisions WHERE rollout_id = ? ORDER BY seq", (rollout_id,)
            ).fetchall()
        return [
            Decision.model_validate({**dict(r), "evidence": json.loads(r["evidence"])})
            for r in rows
        ]

    # --- stables ---------------------------------------------------------------------------
    def stable(self, model: str) -> Stable | None:
        with self._lock:
            row = self._db.execute(
                "SELECT model, version, artifact_uri, endpoint, digest FROM stables "
                "WHERE model = ?",
                (model,),
            ).fetchone()
        if row is None:
            return None
        endpoint = json.loads(row["endpoint"]) if row["endpoint"] else None
        return Stable.model_validate({**dict(row), "endpoint": endpoint})

    def set_stable(self, stable: Stable) -> None:
        with self._transaction() as db:
            self._set_stable(db, stable)

    @staticmethod
    def _set_stable(db: sqlite3.Connection, stable: Stable) -> None:
        db.execute(
            "INSERT INTO stables (model, version, artifact_uri, endpoint, digest, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(model) DO UPDATE SET "
            "version = excluded.version, artifact_uri = excluded.artifact_uri, "
            "endpoint = excluded.endpoint, digest = excluded.digest, "
            "updated_at = excluded.updated_at",
            (
                stable.model,
                stable.version,
                stable.artifact_uri,
                json.dumps(stable.endpoint) if stable.endpoint is not None else None,
                stable.digest,
                _now(),
            ),
        )

    def stables(self) -> list[Stable]:
        with self._lock:
            rows = self._db.execute("SELECT model FROM stables ORDER BY model").fetchall()
        found = [self.stable(r["model"]) for r in rows]
        return [s for s in found if s is not None]

    # --- webhook outbox --------------------------------------------------------------------
    def pending_events(self, limit: int = 50) -> list[OutboxEvent]:
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, rollout_id, event, payload, attempts FROM outbox "
                "WHERE delivered_at IS NULL AND gave_up_at IS NULL ORDER BY seq LIMIT ?",
                (limit,),
            ).fetchall()
        return [
            OutboxEvent.model_validate({**dict(r), "payload": json.loads(r["payload"])})
            for r in rows
        ]

    def mark_event(self, seq: int, delivered: bool, error: str = "", give_up: bool = False) -> None:
        with self._transaction() as db:
            if delivered:
                db.execute(
                    "UPDATE outbox SET delivered_at = ?, attempts = attempts + 1 WHERE seq = ?",
                    (_now(), seq),
                )
            else:
                db.execute(
                    "UPDATE outbox SET attempts = attempts + 1, last_error = ?, "
                    "gave_up_at = ? WHERE seq = ?",
                    (error[:500], _now() if give_up else None, seq),
                )

    def event_counts(self) -> dict[str, int]:
        with self._lock:
            row = self._db.execute(
                "SELECT SUM(delivered_at IS NOT NULL) AS delivered, SUM(gave_up_at IS NOT NULL)"
                " AS gave_up, SUM(delivered_at IS NULL AND gave_up_at IS NULL) AS pending "
                "FROM outbox"
            ).fetchone()
        return {k: int(row[k] or 0) for k in ("delivered", "gave_up", "pending")}
