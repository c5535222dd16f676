"""How every Kafka client of the project connects: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL (SPEC 2).

One place turns the settings (``KAFKA_SECURITY_PROTOCOL``, ``KAFKA_SASL_*``,
``KAFKA_SSL_*``) into the keyword arguments of aiokafka's clients
(:func:`aiokafka_options`) and into Faust's ``broker_credentials``
(:func:`faust_credentials`), so the worker, its admin calls, the bulk
restore, the commands (simulate, export, dlq, lag) and the benchmarks all
connect the same way. :func:`explain` turns what a failed first contact
raised into one line that names the problem (a wrong password, an untrusted
certificate, a broker that does not answer): the worker stops with it at
start instead of retrying.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from typing import Any

from app.settings import Settings


def ssl_context(s: Settings) -> ssl.SSLContext | None:
    """The TLS context of SSL and SASL_SSL: trust KAFKA_SSL_CAFILE (else the system's); mutual TLS if set."""
    if s.kafka_security_protocol not in ("SSL", "SASL_SSL"):
        return None
    from aiokafka.helpers import create_ssl_context

    context: ssl.SSLContext = create_ssl_context(
        cafile=s.kafka_ssl_cafile, certfile=s.kafka_ssl_certfile, keyfile=s.kafka_ssl_keyfile
    )
    return context


def aiokafka_options(s: Settings) -> dict[str, Any]:
    """Keyword arguments for ``AIOKafkaProducer``/``AIOKafkaConsumer``/``AIOKafkaAdminClient``."""
    options: dict[str, Any] = {"security_protocol": s.kafka_security_protocol}
    context = ssl_context(s)
    if context is not None:
        options["ssl_context"] = context
    if s.kafka_security_protocol.startswith("SASL_"):
        options.update(
            sasl_mechanism=s.kafka_sasl_mechanism,
            sasl_plain_username=s.kafka_sasl_username,
            sasl_plain_password=s.kafka_sasl_password,
        )
    return options


def faust_credentials(s: Settings) -> Any:
    """Faust's ``broker_credentials`` for the same connection (None: PLAINTEXT)."""
    import faust
    from faust.types.auth import SASLMechanism

    context = ssl_context(s)
    if s.kafka_security_protocol.startswith("SASL_"):
        credentials = faust.SASLCredentials(
            username=s.kafka_sasl_username,
            password=s.kafka_sasl_password,
            ssl_context=context,
            mechanism=SASLMechanism(s.kafka_sasl_mechanism),
        )
        return credentials
    if context is not None:
        return faust.SSLCredentials(context)
    return None


def explain(exc: BaseException, s: Settings) -> str:
    """One line for an operator: what went wrong connecting to ``BROKER_URL``, in its own words."""
    text = f"{type(exc).__name__}: {exc}".strip()
    causes = [text]
    cause = exc.__cause__ or exc.__context__
    while cause is not None and len(causes) < 4:
        causes.append(f"{type(cause).__name__}: {cause}")
        cause = cause.__cause__ or cause.__context__
    whole = " <- ".join(causes)
    where = f"{s.broker_url} ({s.kafka_security_protocol})"
    if isinstance(exc, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in whole:
        return (
            f"cannot connect to {where}: the broker's certificate is not trusted (KAFKA_SSL_CAFILE); {whole}"
        )
    if isinstance(exc, ssl.SSLError) or "SSL" in type(exc).__name__:
        return f"cannot connect to {where}: TLS failed (is the listener SSL? KAFKA_SSL_*): {whole}"
    lowered = whole.lower()
    if "authentication" in lowered or "sasl" in lowered:
        user, mechanism = s.kafka_sasl_username, s.kafka_sasl_mechanism
        return (
            f"cannot connect to {where}: authentication of user {user!r} with {mechanism} failed "
            f"(KAFKA_SASL_USERNAME/KAFKA_SASL_PASSWORD): {whole}"
        )
    return f"cannot connect to {where}: {whole}"


def describe(s: Settings) -> Mapping[str, Any]:
    """What the connection uses, for logs (no secrets)."""
    return {
        "protocol": s.kafka_security_protocol,
        "sasl": s.kafka_sasl_mechanism if s.kafka_security_protocol.startswith("SASL_") else None,
        "user": s.kafka_sasl_username,
        "cafile": s.kafka_ssl_cafile,
        "mutual_tls": s.kafka_ssl_certfile is not None,
    }
