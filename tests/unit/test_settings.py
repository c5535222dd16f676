"""SPEC 2: settings from the environment, with defaults, and a clear error per bad value."""

from __future__ import annotations

import dataclasses
import socket
from pathlib import Path
from typing import Any

import pytest

from app.settings import Settings, load_settings
from records.errors import SettingsError

# SPEC 2's table, as Settings attributes.
SPEC_DEFAULTS: dict[str, Any] = {
    "broker_url": "kafka://localhost:9092",
    "app_id": "velocity",
    "store": "rocksdb://",
    "datadir": "./data/velocity",
    "web_port": 6066,
    "web_bind": "0.0.0.0",
    "web_host": socket.gethostname(),
    "processing_guarantee": "at_least_once",
    "topic_partitions": 8,
    "table_standby_replicas": 1,
    "transactions_topic": "transactions",
    "features_topic": "ml-features",
    "dlq_topic": "transactions-dlq",
    "allowed_lateness_s": 3600.0,
    "max_clock_skew_s": 300.0,
    "user_ttl_s": 604800.0,
}

VARIABLES = {
    "BROKER_URL": "broker_url",
    "APP_ID": "app_id",
    "APP_STORE": "store",
    "APP_DATADIR": "datadir",
    "WEB_PORT": "web_port",
    "WEB_BIND": "web_bind",
    "WEB_HOST": "web_host",
    "PROCESSING_GUARANTEE": "processing_guarantee",
    "TOPIC_PARTITIONS": "topic_partitions",
    "TABLE_STANDBY_REPLICAS": "table_standby_replicas",
    "TRANSACTIONS_TOPIC": "transactions_topic",
    "FEATURES_TOPIC": "features_topic",
    "DLQ_TOPIC": "dlq_topic",
    "ALLOWED_LATENESS_S": "allowed_lateness_s",
    "MAX_CLOCK_SKEW_S": "max_clock_skew_s",
    "USER_TTL_S": "user_ttl_s",
    "EXPIRY_SWEEP_INTERVAL_S": "expiry_sweep_interval_s",
    "ROCKSDB_WRITE_BUFFER_MB": "rocksdb_write_buffer_mb",
    "ROCKSDB_BLOCK_CACHE_MB": "rocksdb_block_cache_mb",
    "USER_CACHE_SIZE": "user_cache_size",
    "STATE_CHUNK_ROWS": "state_chunk_rows",
    "PRODUCER_LINGER_MS": "producer_linger_ms",
    "PRODUCER_MAX_BATCH_SIZE": "producer_max_batch_size",
    "CONSUMER_MAX_FETCH_SIZE": "consumer_max_fetch_size",
    "CONSUMER_FETCH_MAX_WAIT_MS": "consumer_fetch_max_wait_ms",
    "BROKER_MAX_POLL_RECORDS": "broker_max_poll_records",
    "BROKER_SESSION_TIMEOUT_S": "broker_session_timeout_s",
    "HEALTH_LOG_INTERVAL_S": "health_log_interval_s",
    "LAG_WARN_MESSAGES": "lag_warn_messages",
    "FRESHNESS_WARN_S": "freshness_warn_s",
    "HEALTH_TOPIC": "health_topic",
    "SCORING": "scoring",
    "MODEL": "model",
    "PREDICTIONS_TOPIC": "predictions_topic",
    "LABELS_TOPIC": "labels_topic",
    "LABEL_WAIT_S": "label_wait_s",
    "FEATURE_DRIFT_TOPIC": "feature_drift_topic",
    "PRED_DRIFT_TOPIC": "pred_drift_topic",
    "DRIFT_WINDOW_S": "drift_window_s",
    "DRIFT_REFERENCE": "drift_reference",
    "DRIFT_REFERENCE_S": "drift_reference_s",
    "DRIFT_PSI_WARN": "drift_psi_warn",
    "DRIFT_MIN_COUNT": "drift_min_count",
    "DRIFT_FEATURES": "drift_features",
    "PREDICTION_THRESHOLD": "prediction_threshold",
    "KAFKA_SECURITY_PROTOCOL": "kafka_security_protocol",
    "KAFKA_SASL_MECHANISM": "kafka_sasl_mechanism",
    "KAFKA_SASL_USERNAME": "kafka_sasl_username",
    "KAFKA_SASL_PASSWORD": "kafka_sasl_password",
    "KAFKA_SSL_CAFILE": "kafka_ssl_cafile",
    "KAFKA_SSL_CERTFILE": "kafka_ssl_certfile",
    "KAFKA_SSL_KEYFILE": "kafka_ssl_keyfile",
    "HTTP_AUTH_TOKENS_FILE": "http_auth_tokens_file",
    "HTTP_OPEN_PATHS": "http_open_paths",
    "HTTP_PEER_TOKEN": "http_peer_token",
    "WEB_SSL_CERTFILE": "web_ssl_certfile",
    "WEB_SSL_KEYFILE": "web_ssl_keyfile",
    "MAX_MESSAGE_BYTES": "max_message_bytes",
    "HTTP_MAX_USER_ID_CHARS": "http_max_user_id_chars",
    "HTTP_REQUEST_TIMEOUT_S": "http_request_timeout_s",
}


def test_defaults_are_spec_2() -> None:
    settings = load_settings({})
    for attr, expected in SPEC_DEFAULTS.items():
        assert getattr(settings, attr) == expected, attr
    assert type(settings.web_port) is int
    assert type(settings.allowed_lateness_s) is float
    assert type(settings.max_clock_skew_s) is float
    assert settings.rekey_topic == "velocity-transactions-rekeyed"


def test_every_spec_2_variable_is_a_setting() -> None:
    fields = {f.name for f in dataclasses.fields(Settings)}
    assert set(SPEC_DEFAULTS) <= fields
    assert set(VARIABLES.values()) == fields


def test_the_fraud_loop_settings() -> None:
    default = load_settings({})
    assert (default.scoring, default.model, default.predictions_topic, default.labels_topic) == (
        True,
        "bundled",
        "predictions.fraud",
        "labels.fraud-feedback",
    )
    assert load_settings({"SCORING": " OFF "}).scoring is False
    for bad in ({"SCORING": "yes"}, {"MODEL": " "}, {"PREDICTIONS_TOPIC": "a b"}):
        with pytest.raises(SettingsError):
            load_settings(bad)


def test_the_monitoring_settings() -> None:
    default = load_settings({})
    assert default.label_wait_s == 2592000  # SPEC 10
    assert (default.drift_window_s, default.drift_reference, default.drift_reference_s) == (
        60,
        "previous",
        86400,
    )
    assert default.monitoring_topic == "velocity-monitoring"
    assert "current_amount" in default.drift_features and len(default.drift_features) == 12
    chosen = load_settings({"DRIFT_FEATURES": "current_amount, tx_count_1h,current_amount"})
    assert chosen.drift_features == ("current_amount", "tx_count_1h")
    assert load_settings({"PREDICTION_THRESHOLD": "0.8"}).prediction_threshold == 0.8
    for bad in (
        {"DRIFT_FEATURES": "amount"},
        {"DRIFT_FEATURES": " , "},
        {"PREDICTION_THRESHOLD": "1.5"},
        {"DRIFT_WINDOW_S": "0"},
        {"LABEL_WAIT_S": "-1"},
        {"DRIFT_MIN_COUNT": "0"},
    ):
        with pytest.raises(SettingsError):
            load_settings(bad)


def test_the_security_settings(tmp_path: Path) -> None:
    default = load_settings({})
    assert (default.kafka_security_protocol, default.kafka_sasl_username, default.http_auth_tokens_file) == (
        "PLAINTEXT",
        None,
        None,
    )
    assert default.http_open_paths == ("/health", "/ready")  # SPEC 2; /metrics needs ops unless opened
    secret = tmp_path / "password"
    secret.write_text("s3cret\nignored\n")
    chosen = load_settings(
        {
            "KAFKA_SECURITY_PROTOCOL": "sasl_ssl",
            "KAFKA_SASL_MECHANISM": "scram-sha-512",
            "KAFKA_SASL_USERNAME": "velocity",
            "KAFKA_SASL_PASSWORD_FILE": str(secret),
            "KAFKA_SSL_CAFILE": str(secret),
            "HTTP_OPEN_PATHS": "/health",
        }
    )
    assert (chosen.kafka_security_protocol, chosen.kafka_sasl_mechanism) == ("SASL_SSL", "SCRAM-SHA-512")
    assert (chosen.kafka_sasl_password, chosen.kafka_ssl_cafile) == ("s3cret", str(secret))
    assert chosen.http_open_paths == ("/health",)
    for bad in (
        {"KAFKA_SECURITY_PROTOCOL": "TLS"},
        {"KAFKA_SASL_MECHANISM": "GSSAPI"},
        {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_USERNAME": "u"},  # no password
        {"KAFKA_SASL_PASSWORD": "a", "KAFKA_SASL_PASSWORD_FILE": str(secret)},
        {"KAFKA_SASL_PASSWORD_FILE": str(tmp_path / "missing")},
        {"KAFKA_SSL_CAFILE": str(tmp_path / "missing.pem")},
        {"KAFKA_SSL_CERTFILE": str(secret)},  # without its key
        {"WEB_SSL_KEYFILE": str(secret)},  # without its certificate
        {"HTTP_OPEN_PATHS": "health"},
        {"MAX_MESSAGE_BYTES": "10"},
    ):
        with pytest.raises(SettingsError):
            load_settings(bad)


def test_datadir_default_follows_the_app_id() -> None:
    assert load_settings({"APP_ID": "fraud-eu"}).datadir == "./data/fraud-eu"


def test_settings_are_frozen() -> None:
    settings = load_settings({})
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.web_port = 1  # type: ignore[misc]


def test_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEB_PORT", "7001")
    monkeypatch.setenv("APP_ID", "from-environ")
    assert load_settings().web_port == 7001
    assert load_settings().app_id == "from-environ"
    # An explicit mapping is the whole environment: os.environ is not consulted.
    assert load_settings({}).web_port == 6066
    assert load_settings({}).app_id == "velocity"


PARSED: list[tuple[str, str, Any]] = [
    ("BROKER_URL", "kafka://k1:9092", "kafka://k1:9092"),
    ("BROKER_URL", "kafka://k1:9092;kafka://k2:9092", "kafka://k1:9092;kafka://k2:9092"),
    ("APP_ID", "velocity-eu_2.a", "velocity-eu_2.a"),
    ("APP_STORE", "memory://", "memory://"),
    ("APP_STORE", "rocksdb://", "rocksdb://"),
    ("APP_DATADIR", "/var/lib/velocity", "/var/lib/velocity"),
    ("WEB_PORT", "8080", 8080),
    ("WEB_PORT", "1", 1),
    ("WEB_PORT", "65535", 65535),
    ("WEB_PORT", " 8080 ", 8080),
    ("WEB_BIND", "127.0.0.1", "127.0.0.1"),
    ("WEB_HOST", "worker-3.internal", "worker-3.internal"),
    ("PROCESSING_GUARANTEE", "exactly_once", "exactly_once"),
    ("PROCESSING_GUARANTEE", "at_least_once", "at_least_once"),
    ("TOPIC_PARTITIONS", "1", 1),
    ("TOPIC_PARTITIONS", "64", 64),
    ("TABLE_STANDBY_REPLICAS", "0", 0),
    ("TABLE_STANDBY_REPLICAS", "2", 2),
    ("TRANSACTIONS_TOPIC", "tx-in", "tx-in"),
    ("FEATURES_TOPIC", "features.v2", "features.v2"),
    ("DLQ_TOPIC", "tx_dlq", "tx_dlq"),
    ("ALLOWED_LATENESS_S", "0", 0.0),
    ("ALLOWED_LATENESS_S", "90", 90.0),
    ("ALLOWED_LATENESS_S", "1.5", 1.5),
    ("ALLOWED_LATENESS_S", "86400", 86400.0),
    ("MAX_CLOCK_SKEW_S", "0", 0.0),
    ("MAX_CLOCK_SKEW_S", "12.25", 12.25),
    ("USER_TTL_S", "0", 0.0),
    ("USER_TTL_S", "86400", 86400.0),
    ("EXPIRY_SWEEP_INTERVAL_S", "2.5", 2.5),
    ("ROCKSDB_WRITE_BUFFER_MB", "64", 64),
    ("ROCKSDB_BLOCK_CACHE_MB", "1", 1),
    ("USER_CACHE_SIZE", "0", 0),
    ("USER_CACHE_SIZE", "500", 500),
    ("STATE_CHUNK_ROWS", "2", 2),
    ("STATE_CHUNK_ROWS", "1000", 1000),
    ("PRODUCER_LINGER_MS", "0", 0),
    ("PRODUCER_LINGER_MS", "100", 100),
    ("PRODUCER_MAX_BATCH_SIZE", "16384", 16384),
    ("CONSUMER_MAX_FETCH_SIZE", "1048576", 1048576),
    ("CONSUMER_FETCH_MAX_WAIT_MS", "500", 500),
    ("BROKER_MAX_POLL_RECORDS", "500", 500),
    ("BROKER_SESSION_TIMEOUT_S", "6", 6.0),
    ("BROKER_SESSION_TIMEOUT_S", "45.5", 45.5),
    ("HEALTH_LOG_INTERVAL_S", "0.5", 0.5),
    ("LAG_WARN_MESSAGES", "0", 0),
    ("FRESHNESS_WARN_S", "0.25", 0.25),
    ("HEALTH_TOPIC", "ops.health", "ops.health"),
]


@pytest.mark.parametrize(("variable", "raw", "expected"), PARSED, ids=[f"{v}={r!r}" for v, r, _ in PARSED])
def test_each_variable_is_parsed(variable: str, raw: str, expected: Any) -> None:
    settings = load_settings({variable: raw})
    assert getattr(settings, VARIABLES[variable]) == expected
    assert type(getattr(settings, VARIABLES[variable])) is type(expected)
    # The other settings keep their defaults.
    for attr, default in SPEC_DEFAULTS.items():
        if attr != VARIABLES[variable] and not (variable == "APP_ID" and attr == "datadir"):
            assert getattr(settings, attr) == default, attr


def test_rekey_topic_follows_app_id_and_input_topic() -> None:
    settings = load_settings({"APP_ID": "a1", "TRANSACTIONS_TOPIC": "tx"})
    assert settings.rekey_topic == "a1-tx-rekeyed"


BAD: list[tuple[dict[str, str], str]] = [
    ({"WEB_PORT": "http"}, "WEB_PORT"),
    ({"WEB_PORT": "8080.0"}, "WEB_PORT"),
    ({"WEB_PORT": "0"}, "WEB_PORT"),
    ({"WEB_PORT": "-1"}, "WEB_PORT"),
    ({"WEB_PORT": "65536"}, "WEB_PORT"),
    ({"WEB_PORT": "70000"}, "WEB_PORT"),
    ({"TOPIC_PARTITIONS": "0"}, "TOPIC_PARTITIONS"),
    ({"TOPIC_PARTITIONS": "eight"}, "TOPIC_PARTITIONS"),
    ({"TOPIC_PARTITIONS": "8.5"}, "TOPIC_PARTITIONS"),
    ({"TABLE_STANDBY_REPLICAS": "-1"}, "TABLE_STANDBY_REPLICAS"),
    ({"TABLE_STANDBY_REPLICAS": "one"}, "TABLE_STANDBY_REPLICAS"),
    ({"ALLOWED_LATENESS_S": "-1"}, "ALLOWED_LATENESS_S"),
    ({"ALLOWED_LATENESS_S": "-0.5"}, "ALLOWED_LATENESS_S"),
    ({"ALLOWED_LATENESS_S": "nan"}, "ALLOWED_LATENESS_S"),
    ({"ALLOWED_LATENESS_S": "NaN"}, "ALLOWED_LATENESS_S"),
    ({"ALLOWED_LATENESS_S": "inf"}, "ALLOWED_LATENESS_S"),
    ({"ALLOWED_LATENESS_S": "1h"}, "ALLOWED_LATENESS_S"),
    ({"MAX_CLOCK_SKEW_S": "-5"}, "MAX_CLOCK_SKEW_S"),
    ({"MAX_CLOCK_SKEW_S": "nan"}, "MAX_CLOCK_SKEW_S"),
    ({"MAX_CLOCK_SKEW_S": "Infinity"}, "MAX_CLOCK_SKEW_S"),
    ({"MAX_CLOCK_SKEW_S": "five minutes"}, "MAX_CLOCK_SKEW_S"),
    ({"PROCESSING_GUARANTEE": "exactly-once"}, "PROCESSING_GUARANTEE"),
    ({"PROCESSING_GUARANTEE": "at_most_once"}, "PROCESSING_GUARANTEE"),
    ({"PROCESSING_GUARANTEE": "AT_LEAST_ONCE"}, "PROCESSING_GUARANTEE"),
    ({"APP_STORE": "redis://"}, "APP_STORE"),
    ({"APP_STORE": "rocksdb"}, "APP_STORE"),
    ({"APP_STORE": "memory"}, "APP_STORE"),
    ({"BROKER_URL": "kafka://a:9092;;kafka://b:9092"}, "BROKER_URL"),
    ({"BROKER_URL": "kafka://a:9092; "}, "BROKER_URL"),
    ({"USER_TTL_S": "-1"}, "USER_TTL_S"),
    ({"USER_TTL_S": "a week"}, "USER_TTL_S"),
    ({"EXPIRY_SWEEP_INTERVAL_S": "0"}, "EXPIRY_SWEEP_INTERVAL_S"),
    ({"ROCKSDB_WRITE_BUFFER_MB": "0"}, "ROCKSDB_WRITE_BUFFER_MB"),
    ({"ROCKSDB_BLOCK_CACHE_MB": "lots"}, "ROCKSDB_BLOCK_CACHE_MB"),
    ({"USER_CACHE_SIZE": "-1"}, "USER_CACHE_SIZE"),
    ({"STATE_CHUNK_ROWS": "1"}, "STATE_CHUNK_ROWS"),
    ({"STATE_CHUNK_ROWS": "many"}, "STATE_CHUNK_ROWS"),
    ({"PRODUCER_LINGER_MS": "-1"}, "PRODUCER_LINGER_MS"),
    ({"PRODUCER_LINGER_MS": "0.5"}, "PRODUCER_LINGER_MS"),
    ({"PRODUCER_MAX_BATCH_SIZE": "2000000"}, "PRODUCER_MAX_BATCH_SIZE"),
    ({"CONSUMER_MAX_FETCH_SIZE": "big"}, "CONSUMER_MAX_FETCH_SIZE"),
    ({"CONSUMER_FETCH_MAX_WAIT_MS": "0"}, "CONSUMER_FETCH_MAX_WAIT_MS"),
    ({"BROKER_MAX_POLL_RECORDS": "0"}, "BROKER_MAX_POLL_RECORDS"),
    ({"BROKER_SESSION_TIMEOUT_S": "5"}, "BROKER_SESSION_TIMEOUT_S"),
    ({"BROKER_SESSION_TIMEOUT_S": "3600"}, "BROKER_SESSION_TIMEOUT_S"),
    ({"HEALTH_LOG_INTERVAL_S": "0"}, "HEALTH_LOG_INTERVAL_S"),
    ({"LAG_WARN_MESSAGES": "-5"}, "LAG_WARN_MESSAGES"),
    ({"FRESHNESS_WARN_S": "soon"}, "FRESHNESS_WARN_S"),
    ({"HEALTH_TOPIC": "bad topic"}, "HEALTH_TOPIC"),
    # Topic names and the app id must be legal Kafka names (the app id prefixes
    # the changelog and re-keying topics).
    ({"TRANSACTIONS_TOPIC": "my transactions"}, "TRANSACTIONS_TOPIC"),
    ({"FEATURES_TOPIC": "ml/features"}, "FEATURES_TOPIC"),
    ({"DLQ_TOPIC": "dlq\u00e9"}, "DLQ_TOPIC"),
    ({"DLQ_TOPIC": ".."}, "DLQ_TOPIC"),
    ({"FEATURES_TOPIC": "f" * 250}, "FEATURES_TOPIC"),
    ({"APP_ID": "velocity app"}, "APP_ID"),
    ({"APP_ID": "a" * 201}, "APP_ID"),
    ({"APP_ID": "a" * 200, "TRANSACTIONS_TOPIC": "t" * 49}, "APP_ID"),
    # Equal topic names.
    ({"FEATURES_TOPIC": "transactions"}, "FEATURES_TOPIC"),
    ({"DLQ_TOPIC": "transactions"}, "DLQ_TOPIC"),
    ({"DLQ_TOPIC": "ml-features"}, "DLQ_TOPIC"),
    ({"TRANSACTIONS_TOPIC": "x", "FEATURES_TOPIC": "x", "DLQ_TOPIC": "x"}, "TRANSACTIONS_TOPIC"),
    ({"DLQ_TOPIC": "velocity-transactions-rekeyed"}, "DLQ_TOPIC"),
    ({"FEATURES_TOPIC": "velocity-transactions-rekeyed"}, "FEATURES_TOPIC"),
]
# Every variable, empty or blank, is a bad value.
BAD += [({variable: ""}, variable) for variable in VARIABLES]
BAD += [({variable: "  "}, variable) for variable in VARIABLES]


@pytest.mark.parametrize(("env", "variable"), BAD, ids=[repr(env)[:60] for env, _ in BAD])
def test_bad_value_fails_naming_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(env)
    message = str(info.value)
    assert variable in message
    assert "\n" not in message, "SPEC 2: one clear line"
    assert isinstance(info.value, ValueError)


def test_bad_value_in_os_environ_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEB_PORT", "70000")
    with pytest.raises(SettingsError, match="WEB_PORT"):
        load_settings()


def test_newline_in_a_value_still_gives_one_line() -> None:
    for env in ({"WEB_PORT": "80\n80"}, {"APP_STORE": "x\ny"}, {"DLQ_TOPIC": "a\nb"}):
        with pytest.raises(SettingsError) as info:
            load_settings(env)
        assert "\n" not in str(info.value)
