"""Settings, read once at start from the environment (SPEC 2) into a frozen object. Pure: no Faust."""

from __future__ import annotations

import math
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from records.errors import SettingsError

Guarantee = Literal["at_least_once", "exactly_once"]
SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]

# Kafka's own rule for topic names; APP_ID follows it too because it prefixes
# the changelog and re-keying topics the app creates.
_KAFKA_NAME = re.compile(r"[A-Za-z0-9._-]+")
MAX_TOPIC_CHARS = 249
# Leaves room for the suffixes Faust and we append ("-<table>-changelog", ...).
MAX_APP_ID_CHARS = 200


@dataclass(frozen=True, slots=True)
class Settings:
    broker_url: str
    app_id: str
    store: str
    datadir: str
    web_port: int
    web_bind: str
    web_host: str
    processing_guarantee: Guarantee
    topic_partitions: int
    table_standby_replicas: int
    transactions_topic: str
    features_topic: str
    dlq_topic: str
    allowed_lateness_s: float
    max_clock_skew_s: float
    user_ttl_s: float  # 0: users are never forgotten (SPEC 4, Expiry)
    # Ours, beyond SPEC 2 (documented in the README).
    user_cache_size: int
    state_chunk_rows: int
    producer_linger_ms: int
    producer_max_batch_size: int
    consumer_max_fetch_size: int
    consumer_fetch_max_wait_ms: int
    broker_max_poll_records: int
    broker_session_timeout_s: float
    expiry_sweep_interval_s: float
    rocksdb_write_buffer_mb: int
    rocksdb_block_cache_mb: int
    # Pipeline health (issue: metrics, timers, live page).
    health_log_interval_s: float
    lag_warn_messages: int
    freshness_warn_s: float
    health_topic: str
    # The fraud loop (SPEC 10).
    scoring: bool
    model: str
    predictions_topic: str
    labels_topic: str
    label_wait_s: float  # 0: no prediction log, no label join
    feature_drift_topic: str
    pred_drift_topic: str
    drift_window_s: float
    drift_reference: str  # "previous" or the path of a profile file (faust -A app train --profile)
    drift_reference_s: float
    drift_psi_warn: float
    drift_min_count: int
    drift_features: tuple[str, ...]
    prediction_threshold: float
    # Production connections and access (SPEC 2 names; README "Production").
    kafka_security_protocol: SecurityProtocol
    kafka_sasl_mechanism: SaslMechanism
    kafka_sasl_username: str | None
    kafka_sasl_password: str | None
    kafka_ssl_cafile: str | None
    kafka_ssl_certfile: str | None
    kafka_ssl_keyfile: str | None
    http_auth_tokens_file: str | None
    http_open_paths: tuple[str, ...]  # served without a token even with HTTP_AUTH_TOKENS_FILE
    http_peer_token: str | None  # what this worker sends to the others (scope "peer")
    web_ssl_certfile: str | None
    web_ssl_keyfile: str | None
    max_message_bytes: int
    http_max_user_id_chars: int
    http_request_timeout_s: float

    @property
    def monitoring_topic(self) -> str:
        """Internal: every worker's partial drift sketches and every joined label, to one aggregator."""
        return f"{self.app_id}-monitoring"

    @property
    def rekey_topic(self) -> str:
        """Internal hop for messages whose key or partition is not the user's."""
        return f"{self.app_id}-{self.transactions_topic}-rekeyed"


def _on_off(env: Mapping[str, str], name: str, default: bool) -> bool:
    value = env.get(name, "on" if default else "off").strip().lower()
    if value not in ("on", "off"):
        raise SettingsError(f"{name}={value!r} must be on or off")
    return value == "on"


def _text(env: Mapping[str, str], name: str, default: str) -> str:
    value = env.get(name, default).strip()
    if not value:
        raise SettingsError(f"{name} must not be empty")
    return value


def _kafka_name(env: Mapping[str, str], name: str, default: str, max_chars: int) -> str:
    value = _text(env, name, default)
    if not _KAFKA_NAME.fullmatch(value) or value in (".", ".."):
        raise SettingsError(f"{name}={value!r} may only contain ASCII letters, digits, '.', '_' and '-'")
    if len(value) > max_chars:
        raise SettingsError(f"{name}={value!r} is longer than {max_chars} characters")
    return value


def _int(env: Mapping[str, str], name: str, default: int, minimum: int, maximum: int | None = None) -> int:
    raw = env.get(name, str(default)).strip()
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not an integer") from None
    if value < minimum or (maximum is not None and value > maximum):
        bound = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"
        raise SettingsError(f"{name}={raw!r} must be {bound}")
    return value


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, str(default)).strip()
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a number of seconds") from None
    if not math.isfinite(value) or value < 0:
        raise SettingsError(f"{name}={raw!r} must be a finite number >= 0")
    return value


def _positive_seconds(env: Mapping[str, str], name: str, default: float) -> float:
    value = _seconds(env, name, default)
    if value <= 0:
        raise SettingsError(f"{name}={env.get(name)!r} must be > 0")
    return value


def _session_timeout(env: Mapping[str, str]) -> float:
    # The broker refuses sessions outside group.min/max.session.timeout.ms (6 s and 30 min by default).
    value = _seconds(env, "BROKER_SESSION_TIMEOUT_S", 60.0)
    if not 6.0 <= value <= 1800.0:
        raw = env.get("BROKER_SESSION_TIMEOUT_S")
        raise SettingsError(f"BROKER_SESSION_TIMEOUT_S={raw!r} must be between 6 and 1800 seconds")
    return value


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Build :class:`Settings` from ``env`` (default: ``os.environ``)."""
    env = os.environ if env is None else env
    app_id = _kafka_name(env, "APP_ID", "velocity", MAX_APP_ID_CHARS)
    broker_url = _text(env, "BROKER_URL", "kafka://localhost:9092")
    if not all(part.strip() for part in broker_url.split(";")):
        raise SettingsError(f"BROKER_URL={broker_url!r} has an empty server")
    store = _text(env, "APP_STORE", "rocksdb://")
    if store not in ("rocksdb://", "memory://"):
        raise SettingsError(f"APP_STORE={store!r} must be rocksdb:// or memory://")
    guarantee = _text(env, "PROCESSING_GUARANTEE", "at_least_once")
    if guarantee not in ("at_least_once", "exactly_once"):
        raise SettingsError(f"PROCESSING_GUARANTEE={guarantee!r} must be at_least_once or exactly_once")
    topics = {
        name: _kafka_name(env, name, default, MAX_TOPIC_CHARS)
        for name, default in (
            ("TRANSACTIONS_TOPIC", "transactions"),
            ("FEATURES_TOPIC", "ml-features"),
            ("DLQ_TOPIC", "transactions-dlq"),
        )
    }
    if len(set(topics.values())) != len(topics):
        raise SettingsError(f"TRANSACTIONS_TOPIC, FEATURES_TOPIC and DLQ_TOPIC must differ: {topics}")
    rekey_topic = f"{app_id}-{topics['TRANSACTIONS_TOPIC']}-rekeyed"  # as Settings.rekey_topic
    if len(rekey_topic) > MAX_TOPIC_CHARS:
        raise SettingsError(
            f"APP_ID and TRANSACTIONS_TOPIC are too long together: the re-keying topic {rekey_topic!r} "
            f"would exceed {MAX_TOPIC_CHARS} characters"
        )
    if rekey_topic in (topics["FEATURES_TOPIC"], topics["DLQ_TOPIC"]):
        raise SettingsError(
            f"FEATURES_TOPIC and DLQ_TOPIC must differ from the re-keying topic {rekey_topic!r} "
            "(APP_ID-TRANSACTIONS_TOPIC-rekeyed)"
        )
    return Settings(
        broker_url=broker_url,
        app_id=app_id,
        store=store,
        datadir=_text(env, "APP_DATADIR", f"./data/{app_id}"),
        web_port=_int(env, "WEB_PORT", 6066, 1, 65535),
        web_bind=_text(env, "WEB_BIND", "0.0.0.0"),
        web_host=_text(env, "WEB_HOST", socket.gethostname()),
        processing_guarantee=guarantee,  # type: ignore[arg-type]
        topic_partitions=_int(env, "TOPIC_PARTITIONS", 8, 1, 10000),
        table_standby_replicas=_int(env, "TABLE_STANDBY_REPLICAS", 1, 0, 16),
        transactions_topic=topics["TRANSACTIONS_TOPIC"],
        features_topic=topics["FEATURES_TOPIC"],
        dlq_topic=topics["DLQ_TOPIC"],
        allowed_lateness_s=_seconds(env, "ALLOWED_LATENESS_S", 3600),
        max_clock_skew_s=_seconds(env, "MAX_CLOCK_SKEW_S", 300),
        user_ttl_s=_seconds(env, "USER_TTL_S", 604800),
        user_cache_size=_int(env, "USER_CACHE_SIZE", 20000, 0),
        state_chunk_rows=_int(env, "STATE_CHUNK_ROWS", 128, 2, 100000),
        producer_linger_ms=_int(env, "PRODUCER_LINGER_MS", 20, 0, 1000),
        producer_max_batch_size=_int(env, "PRODUCER_MAX_BATCH_SIZE", 262_144, 1024, 1_000_000),
        consumer_max_fetch_size=_int(env, "CONSUMER_MAX_FETCH_SIZE", 8 * 1024 * 1024, 1024, 1 << 30),
        consumer_fetch_max_wait_ms=_int(env, "CONSUMER_FETCH_MAX_WAIT_MS", 100, 1, 60_000),
        broker_max_poll_records=_int(env, "BROKER_MAX_POLL_RECORDS", 5000, 1, 1_000_000),
        broker_session_timeout_s=_session_timeout(env),
        expiry_sweep_interval_s=_positive_seconds(env, "EXPIRY_SWEEP_INTERVAL_S", 30),
        rocksdb_write_buffer_mb=_int(env, "ROCKSDB_WRITE_BUFFER_MB", 4, 1, 1024),
        rocksdb_block_cache_mb=_int(env, "ROCKSDB_BLOCK_CACHE_MB", 8, 1, 65536),
        health_log_interval_s=_positive_seconds(env, "HEALTH_LOG_INTERVAL_S", 30),
        lag_warn_messages=_int(env, "LAG_WARN_MESSAGES", 1000, 0),
        freshness_warn_s=_seconds(env, "FRESHNESS_WARN_S", 5),
        health_topic=_kafka_name(env, "HEALTH_TOPIC", "monitoring.pipeline-health", MAX_TOPIC_CHARS),
        scoring=_on_off(env, "SCORING", True),
        model=_text(env, "MODEL", "bundled"),
        predictions_topic=_kafka_name(env, "PREDICTIONS_TOPIC", "predictions.fraud", MAX_TOPIC_CHARS),
        labels_topic=_kafka_name(env, "LABELS_TOPIC", "labels.fraud-feedback", MAX_TOPIC_CHARS),
        label_wait_s=_seconds(env, "LABEL_WAIT_S", 2592000),
        feature_drift_topic=_kafka_name(
            env, "FEATURE_DRIFT_TOPIC", "monitoring.feature-drift", MAX_TOPIC_CHARS
        ),
        pred_drift_topic=_kafka_name(env, "PRED_DRIFT_TOPIC", "monitoring.pred-drift", MAX_TOPIC_CHARS),
        drift_window_s=_positive_seconds(env, "DRIFT_WINDOW_S", 60),
        drift_reference=_text(env, "DRIFT_REFERENCE", "previous"),
        drift_reference_s=_positive_seconds(env, "DRIFT_REFERENCE_S", 86400),
        drift_psi_warn=_positive_seconds(env, "DRIFT_PSI_WARN", 0.2),
        drift_min_count=_int(env, "DRIFT_MIN_COUNT", 200, 1),
        drift_features=_drift_features(env),
        prediction_threshold=_probability(env, "PREDICTION_THRESHOLD", 0.5),
        **_security(env),
    )


SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
#: Paths answered without a token when HTTP_AUTH_TOKENS_FILE is set (SPEC 2: the probes).
HTTP_OPEN_PATHS = ("/health", "/ready")


def _optional(env: Mapping[str, str], name: str) -> str | None:
    """Unset: None; set, it must say something (an empty value is a mistake, not "unset")."""
    if name not in env:
        return None
    return _text(env, name, "")


def _secret(env: Mapping[str, str], name: str) -> str | None:
    """``NAME`` or the first line of the file ``NAME_FILE`` (not both)."""
    value = _optional(env, name)
    path = _optional(env, f"{name}_FILE")
    if value and path:
        raise SettingsError(f"set {name} or {name}_FILE, not both")
    if path:
        try:
            with open(path, encoding="utf-8") as f:
                value = f.readline().rstrip("\r\n")
        except OSError as exc:
            raise SettingsError(f"{name}_FILE={path!r} cannot be read: {exc.strerror}") from None
        if not value:
            raise SettingsError(f"{name}_FILE={path!r} is empty")
    return value or None


def _readable(env: Mapping[str, str], name: str) -> str | None:
    path = _optional(env, name)
    if path is not None and not os.access(path, os.R_OK):
        raise SettingsError(f"{name}={path!r} is not a readable file")
    return path


def _security(env: Mapping[str, str]) -> dict[str, Any]:
    protocol = _text(env, "KAFKA_SECURITY_PROTOCOL", "PLAINTEXT").upper()
    if protocol not in SECURITY_PROTOCOLS:
        raise SettingsError(
            f"KAFKA_SECURITY_PROTOCOL={protocol!r} must be one of {', '.join(SECURITY_PROTOCOLS)}"
        )
    mechanism = _text(env, "KAFKA_SASL_MECHANISM", "PLAIN").upper()
    if mechanism not in SASL_MECHANISMS:
        raise SettingsError(f"KAFKA_SASL_MECHANISM={mechanism!r} must be one of {', '.join(SASL_MECHANISMS)}")
    username = _optional(env, "KAFKA_SASL_USERNAME")
    password = _secret(env, "KAFKA_SASL_PASSWORD")
    if protocol.startswith("SASL_") and not (username and password):
        raise SettingsError(
            f"KAFKA_SECURITY_PROTOCOL={protocol} needs KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD (or _FILE)"
        )
    certfile, keyfile = _readable(env, "KAFKA_SSL_CERTFILE"), _readable(env, "KAFKA_SSL_KEYFILE")
    if (certfile is None) != (keyfile is None):
        raise SettingsError("KAFKA_SSL_CERTFILE and KAFKA_SSL_KEYFILE go together (mutual TLS)")
    web_cert, web_key = _readable(env, "WEB_SSL_CERTFILE"), _readable(env, "WEB_SSL_KEYFILE")
    if (web_cert is None) != (web_key is None):
        raise SettingsError("WEB_SSL_CERTFILE and WEB_SSL_KEYFILE go together")
    raw_open = _text(env, "HTTP_OPEN_PATHS", ",".join(HTTP_OPEN_PATHS))
    names = [p.strip() for p in raw_open.split(",") if p.strip()]
    if not names:
        raise SettingsError(f"HTTP_OPEN_PATHS={raw_open!r}: comma-separated paths, or none")
    open_paths = () if names == ["none"] else tuple(dict.fromkeys(names))
    bad = [p for p in open_paths if not p.startswith("/")]
    if bad:
        raise SettingsError(f"HTTP_OPEN_PATHS={raw_open!r}: paths start with '/' ({bad[0]!r})")
    return {
        "kafka_security_protocol": protocol,
        "kafka_sasl_mechanism": mechanism,
        "kafka_sasl_username": username,
        "kafka_sasl_password": password,
        "kafka_ssl_cafile": _readable(env, "KAFKA_SSL_CAFILE"),
        "kafka_ssl_certfile": certfile,
        "kafka_ssl_keyfile": keyfile,
        "http_auth_tokens_file": _readable(env, "HTTP_AUTH_TOKENS_FILE"),
        "http_open_paths": open_paths,
        "http_peer_token": _secret(env, "HTTP_PEER_TOKEN"),
        "web_ssl_certfile": web_cert,
        "web_ssl_keyfile": web_key,
        "max_message_bytes": _int(env, "MAX_MESSAGE_BYTES", 1_048_576, 1024, 1 << 30),
        "http_max_user_id_chars": _int(env, "HTTP_MAX_USER_ID_CHARS", 128, 1, 100_000),
        "http_request_timeout_s": _positive_seconds(env, "HTTP_REQUEST_TIMEOUT_S", 10),
    }


#: The SPEC 4 fields whose drift is watched (all numeric ones; the score is watched too).
DRIFT_FEATURES: tuple[str, ...] = (
    "current_amount",
    "tx_count_1h",
    "tx_count_24h",
    "total_amount_1h",
    "total_amount_24h",
    "avg_amount_1h",
    "avg_amount_24h",
    "max_amount_24h",
    "unique_merchants_1h",
    "unique_merchants_24h",
    "seconds_since_last_tx",
    "amount_zscore_24h",
)


def _drift_features(env: Mapping[str, str]) -> tuple[str, ...]:
    raw = env.get("DRIFT_FEATURES", "all").strip()
    if raw == "all":
        return DRIFT_FEATURES
    names = tuple(dict.fromkeys(n.strip() for n in raw.split(",") if n.strip()))
    unknown = [n for n in names if n not in DRIFT_FEATURES]
    if unknown or not names:
        raise SettingsError(
            f"DRIFT_FEATURES={raw!r}: 'all' or a comma-separated list of {', '.join(DRIFT_FEATURES)}"
        )
    return names


def _probability(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, str(default)).strip()
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise SettingsError(f"{name}={raw!r} must be between 0 and 1")
    return value
