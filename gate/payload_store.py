"""SQLite persistence of live payloads and the shadow phase's pairs, bounded.

Logged requests and answers (:mod:`gate.providers.payloads`) arrive at the rate of live
traffic, far above the rollout tables' few writes a second, so they live in tables of
their own, behind a connection of their own (WAL lets both connections work at once) with
``synchronous=NORMAL``: a killed gate loses nothing committed (that takes a power cut).
Each POST is one transaction. Retention is by age and by row count, so disk and memory stay
bounded whatever the traffic; the joins have their indices.

The shadow replayer's position is stored with each pair in the same transaction, so a
gate killed at any moment resumes after the last pair it kept: no pair lost, none made
twice.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from gate.core.answers import Unreadable, paired_score, read_answer, score
from gate.core.paired import PairedEvidence
from gate.database import Database
from gate.providers.payloads import PayloadEvent

SCHEMA = """
CREATE TABLE IF NOT EXISTS payloads (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    model TEXT NOT NULL,
    request_id TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    content_type TEXT NOT NULL,
    request BLOB,
    response BLOB,
    received_at REAL NOT NULL,
    labelled INTEGER,
    correct INTEGER,
    UNIQUE (model, request_id, endpoint)
);
CREATE INDEX IF NOT EXISTS payloads_by_model ON payloads(model, endpoint, seq);
CREATE INDEX IF NOT EXISTS payloads_by_age ON payloads(received_at);
CREATE TABLE IF NOT EXISTS shadow_pairs (
    rollout_id TEXT NOT NULL,
    payload_seq INTEGER NOT NULL,
    model TEXT NOT NULL,
    request_id TEXT NOT NULL,
    outcome TEXT NOT NULL,
    rows INTEGER NOT NULL DEFAULT 0,
    disagreements INTEGER NOT NULL DEFAULT 0,
    flips TEXT NOT NULL DEFAULT '{}',
    shift_rows INTEGER NOT NULL DEFAULT 0,
    shift_sum REAL NOT NULL DEFAULT 0,
    latency_ms REAL NOT NULL DEFAULT 0,
    stable_classes TEXT NOT NULL DEFAULT '[]',
    candidate_classes TEXT NOT NULL DEFAULT '[]',
    detail TEXT NOT NULL DEFAULT '',
    at REAL NOT NULL,
    labelled INTEGER,
    correct INTEGER,
    stable_correct INTEGER,
    only_stable INTEGER,
    only_candidate INTEGER,
    PRIMARY KEY (rollout_id, payload_seq)
);
CREATE INDEX IF NOT EXISTS shadow_pairs_by_request ON shadow_pairs(model, request_id);
CREATE INDEX IF NOT EXISTS shadow_pairs_by_age ON shadow_pairs(at);
CREATE TABLE IF NOT EXISTS labels (
    model TEXT NOT NULL,
    request_id TEXT NOT NULL,
    label TEXT NOT NULL,
    received_at REAL NOT NULL,
    PRIMARY KEY (model, request_id)
);
CREATE INDEX IF NOT EXISTS labels_by_age ON labels(received_at);
CREATE TABLE IF NOT EXISTS shadow_progress (
    rollout_id TEXT PRIMARY KEY,
    cursor INTEGER NOT NULL,
    skipped INTEGER NOT NULL DEFAULT 0
);
"""

PAIRED, CANDIDATE_ERROR, NOT_COMPARABLE = "paired", "error", "not_comparable"
_UPSERT = (
    "INSERT INTO payloads (model, request_id, endpoint, content_type, {0}, received_at) "
    "VALUES (?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (model, request_id, endpoint) DO UPDATE SET {0} = excluded.{0}"
)
_UPSERT_REQUEST = _UPSERT.format("request")
_UPSERT_RESPONSE = _UPSERT.format("response")
# What the shadow replayer reads: the model's exchanges stable answered, both halves in.
_STABLE_EXCHANGES = (
    "FROM payloads WHERE model = ? AND endpoint = 'default' "
    "AND request IS NOT NULL AND response IS NOT NULL"
)


@dataclass(frozen=True)
class LoggedExchange:
    """A request stable answered with 200, both bodies as logged."""

    seq: int
    request_id: str
    content_type: str
    request: bytes
    response: bytes


@dataclass(frozen=True)
class PairRecord:
    """What replaying one logged request to the candidate gave."""

    outcome: str  # PAIRED, CANDIDATE_ERROR or NOT_COMPARABLE
    rows: int = 0
    disagreements: int = 0
    flips: dict[str, int] | None = None
    shift_rows: int = 0
    shift_sum: float = 0.0
    latency_ms: float = 0.0
    stable_classes: tuple[str, ...] = ()
    candidate_classes: tuple[str, ...] = ()
    detail: str = ""


class PayloadStore(Database):
    def __init__(
        self,
        path: Path | str,
        retention_s: float = 86_400.0,
        max_payloads: int = 200_000,
    ) -> None:
        super().__init__(path, "NORMAL", SCHEMA)
        with self._transaction() as db:  # stores made before the discordant counts
            columns = {row[1] for row in db.execute("PRAGMA table_info(shadow_pairs)")}
            for column in ("only_stable", "only_candidate"):
                if column not in columns:
                    db.execute(f"ALTER TABLE shadow_pairs ADD COLUMN {column} INTEGER")
        self.retention_s = retention_s
        self.max_payloads = max_payloads
        self._inserted_since_prune = 0

    # --- ingestion ------------------------------------------------------------------------
    def ingest(self, events: list[PayloadEvent], now: float | None = None) -> int:
        """Keep the events (a request and its answer may come in either order, or twice:
        the last copy wins). Returns how many were kept."""
        received = time.time() if now is None else now
        with self._transaction() as db:
            for event in events:
                db.execute(
                    _UPSERT_REQUEST if event.kind == "request" else _UPSERT_RESPONSE,
                    (
                        event.model,
                        event.id,
                        event.endpoint,
                        event.content_type,
                        event.data,
                        received,
                    ),
                )
                if event.kind == "response":
                    label = _label(db, event.model, event.id)
                    if label is not None:
                        _score_payload(db, event.model, event.id, event.endpoint, event.data, label)
        self._inserted_since_prune += len(events)
        if self._inserted_since_prune >= 1_000:
            self._inserted_since_prune = 0
            self.prune(received)
        return len(events)

    def prune(self, now: float | None = None) -> int:
        """Drop payloads and pairs past the retention age, then the oldest payloads past
        the row cap."""
        cutoff = (time.time() if now is None else now) - self.retention_s
        with self._transaction() as db:
            gone = db.execute("DELETE FROM payloads WHERE received_at < ?", (cutoff,)).rowcount
            db.execute("DELETE FROM shadow_pairs WHERE at < ?", (cutoff,))
            db.execute("DELETE FROM labels WHERE received_at < ?", (cutoff,))
            row = db.execute("SELECT MAX(seq) - ? FROM payloads", (self.max_payloads,)).fetchone()
            if row[0] is not None and row[0] > 0:
                gone += db.execute("DELETE FROM payloads WHERE seq <= ?", (row[0],)).rowcount
        return gone

    def payload_count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM payloads").fetchone()[0])

    # --- the shadow replayer ---------------------------------------------------------------
    def cursor(self, rollout_id: str, since_seq: int) -> int:
        """The last logged exchange this rollout's replayer dealt with (``since_seq`` when
        it has not started: what was logged before the shadow phase does not count)."""
        with self._lock:
            row = self._db.execute(
                "SELECT cursor FROM shadow_progress WHERE rollout_id = ?", (rollout_id,)
            ).fetchone()
        return int(row[0]) if row else since_seq

    def seq_before(self, at: float) -> int:
        """The last position logged before ``at`` (unix seconds): where a shadow phase
        that began then starts reading."""
        with self._lock:
            row = self._db.execute(
                "SELECT MAX(seq) FROM payloads WHERE received_at < ?", (at,)
            ).fetchone()
        return int(row[0] or 0)

    def exchanges(self, model: str, after_seq: int, limit: int) -> list[LoggedExchange]:
        """Stable's complete exchanges after ``after_seq``, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, request_id, content_type, request, response "
                f"{_STABLE_EXCHANGES} AND seq > ? ORDER BY seq LIMIT ?",
                (model, after_seq, limit),
            ).fetchall()
        return [LoggedExchange(r[0], r[1], r[2], bytes(r[3]), bytes(r[4])) for r in rows]

    def backlog(self, model: str, after_seq: int) -> int:
        with self._lock:
            row = self._db.execute(
                f"SELECT COUNT(*) {_STABLE_EXCHANGES} AND seq > ?",
                (model, after_seq),
            ).fetchone()
        return int(row[0])

    def exchanges_from_end(self, model: str, keep: int) -> int | None:
        """The position after which exactly the ``keep`` newest complete exchanges lie."""
        with self._lock:
            row = self._db.execute(
                f"SELECT seq {_STABLE_EXCHANGES} ORDER BY seq DESC LIMIT 1 OFFSET ?",
                (model, keep),
            ).fetchone()
        return int(row[0]) if row else None

    def skip(self, rollout_id: str, to_seq: int, skipped: int) -> None:
        """Move the cursor past exchanges the rate bound leaves out, counting them."""
        with self._transaction() as db:
            db.execute(
                "INSERT INTO shadow_progress (rollout_id, cursor, skipped) VALUES (?, ?, ?) "
                "ON CONFLICT (rollout_id) DO UPDATE SET cursor = MAX(cursor, excluded.cursor), "
                "skipped = skipped + excluded.skipped",
                (rollout_id, to_seq, skipped),
            )

    def add_pair(
        self, rollout_id: str, model: str, exchange: LoggedExchange, record: PairRecord
    ) -> None:
        """The pair and the cursor past it, in one transaction."""
        stable = json.dumps(list(record.stable_classes))
        candidate = json.dumps(list(record.candidate_classes))
        with self._transaction() as db:
            db.execute(
                "INSERT OR IGNORE INTO shadow_pairs (rollout_id, payload_seq, model, request_id, "
                "outcome, rows, disagreements, flips, shift_rows, shift_sum, latency_ms, "
                "stable_classes, candidate_classes, detail, at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    rollout_id,
                    exchange.seq,
                    model,
                    exchange.request_id,
                    record.outcome,
                    record.rows,
                    record.disagreements,
                    json.dumps(record.flips or {}),
                    record.shift_rows,
                    record.shift_sum,
                    record.latency_ms,
                    stable,
                    candidate,
                    record.detail[:500],
                    time.time(),
                ),
            )
            label = _label(db, model, exchange.request_id)
            if label is not None and record.outcome == PAIRED:
                _score_pair(db, rollout_id, exchange.seq, stable, candidate, label)
            db.execute(
                "INSERT INTO shadow_progress (rollout_id, cursor) VALUES (?, ?) "
                "ON CONFLICT (rollout_id) DO UPDATE SET cursor = MAX(cursor, excluded.cursor)",
                (rollout_id, exchange.seq),
            )

    # --- delayed labels ---------------------------------------------------------------------
    def add_labels(self, model: str, labels: list[tuple[str, tuple[str, ...]]]) -> tuple[int, int]:
        """Keep true labels by request id (again for the same id: the last wins) and score
        every recorded answer to those requests. Returns (kept, ids with no recorded
        answer yet): unknown ids are kept too, as an answer may still be on its way."""
        now = time.time()
        unknown = 0
        with self._transaction() as db:
            for request_id, label in labels:
                db.execute(
                    "INSERT INTO labels (model, request_id, label, received_at) VALUES (?, ?, ?, ?)"
                    " ON CONFLICT (model, request_id) DO UPDATE SET label = excluded.label, "
                    "received_at = excluded.received_at",
                    (model, request_id, json.dumps(list(label)), now),
                )
                answers = db.execute(
                    "SELECT endpoint, response FROM payloads WHERE model = ? AND request_id = ? "
                    "AND response IS NOT NULL",
                    (model, request_id),
                ).fetchall()
                for endpoint, response in answers:
                    _score_payload(db, model, request_id, endpoint, bytes(response), label)
                pairs = db.execute(
                    "SELECT rollout_id, payload_seq, stable_classes, candidate_classes "
                    "FROM shadow_pairs WHERE model = ? AND request_id = ? AND outcome = ?",
                    (model, request_id, PAIRED),
                ).fetchall()
                for rollout_id, seq, stable, candidate in pairs:
                    _score_pair(db, rollout_id, seq, stable, candidate, label)
                unknown += not answers
        return len(labels), unknown

    def label_evidence(self, model: str, since_seq: int) -> dict[str, tuple[int, int]]:
        """Per endpoint (``default`` = stable, ``canary``): (labelled rows, correct rows)
        of the answers logged after ``since_seq``."""
        with self._lock:
            rows = self._db.execute(
                "SELECT endpoint, COALESCE(SUM(labelled), 0), COALESCE(SUM(correct), 0) "
                "FROM payloads WHERE model = ? AND seq > ? AND labelled IS NOT NULL "
                "GROUP BY endpoint",
                (model, since_seq),
            ).fetchall()
        return {str(endpoint): (int(n), int(ok)) for endpoint, n, ok in rows}

    def paired_evidence(self, rollout_id: str) -> PairedEvidence:
        """The rollout's pairs, summed."""
        with self._lock:
            totals = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(rows), 0), COALESCE(SUM(disagreements), 0), "
                "COALESCE(SUM(shift_rows), 0), COALESCE(SUM(shift_sum), 0), "
                "COALESCE(SUM(outcome = ?), 0), COALESCE(SUM(outcome = ?), 0), "
                "COALESCE(SUM(latency_ms), 0), COALESCE(SUM(labelled), 0), "
                "COALESCE(SUM(correct), 0), COALESCE(SUM(stable_correct), 0), "
                "COALESCE(SUM(only_stable), 0), COALESCE(SUM(only_candidate), 0) "
                "FROM shadow_pairs WHERE rollout_id = ?",
                (CANDIDATE_ERROR, NOT_COMPARABLE, rollout_id),
            ).fetchone()
            flips = self._db.execute(
                "SELECT key, SUM(value) FROM shadow_pairs, json_each(shadow_pairs.flips) "
                "WHERE rollout_id = ? GROUP BY key",
                (rollout_id,),
            ).fetchall()
            progress = self._db.execute(
                "SELECT skipped FROM shadow_progress WHERE rollout_id = ?", (rollout_id,)
            ).fetchone()
        return PairedEvidence(
            requests=totals[0],
            rows=totals[1],
            disagreements=totals[2],
            shift_rows=totals[3],
            shift_sum=totals[4],
            candidate_errors=totals[5],
            not_comparable=totals[6],
            latency_ms_sum=totals[7],
            labelled_rows=totals[8],
            candidate_correct=totals[9],
            stable_correct=totals[10],
            only_stable_correct=totals[11],
            only_candidate_correct=totals[12],
            flips={str(key): int(count) for key, count in flips},
            skipped=int(progress[0]) if progress else 0,
        )


def _label(db: sqlite3.Connection, model: str, request_id: str) -> tuple[str, ...] | None:
    row = db.execute(
        "SELECT label FROM labels WHERE model = ? AND request_id = ?", (model, request_id)
    ).fetchone()
    return tuple(json.loads(row[0])) if row else None


def _score_payload(
    db: sqlite3.Connection,
    model: str,
    request_id: str,
    endpoint: str,
    response: bytes,
    label: tuple[str, ...],
) -> None:
    try:
        scored = score(read_answer(response).classes, label)
    except Unreadable:
        scored = None
    labelled, correct = scored if scored else (None, None)
    db.execute(
        "UPDATE payloads SET labelled = ?, correct = ? "
        "WHERE model = ? AND request_id = ? AND endpoint = ?",
        (labelled, correct, model, request_id, endpoint),
    )


def _score_pair(
    db: sqlite3.Connection,
    rollout_id: str,
    seq: int,
    stable: str,
    candidate: str,
    label: tuple[str, ...],
) -> None:
    """Both models' answers to the same labelled request: a paired accuracy."""
    scored = paired_score(tuple(json.loads(stable)), tuple(json.loads(candidate)), label)
    if scored is None:
        return
    rows, stable_right, candidate_right, only_stable, only_candidate = scored
    db.execute(
        "UPDATE shadow_pairs SET labelled = ?, correct = ?, stable_correct = ?, "
        "only_stable = ?, only_candidate = ? WHERE rollout_id = ? AND payload_seq = ?",
        (rows, candidate_right, stable_right, only_stable, only_candidate, rollout_id, seq),
    )


__all__ = [
    "CANDIDATE_ERROR",
    "NOT_COMPARABLE",
    "PAIRED",
    "LoggedExchange",
    "PairRecord",
    "PayloadStore",
]
