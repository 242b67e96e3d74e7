"""Broker security settings (TLS, SASL PLAIN/SCRAM) handed to every Kafka client the worker uses.

Three client libraries talk to the broker: Faust (the group consumer and producer of ``run``), aiokafka (the
worker's own changelog and range readers, the trigger service) and kafka-python (topic creation and the tools).
Each spells the same settings differently; the one place that translates them is here, so a secured cluster needs
only the ``SEGMENT_WORKER_SECURITY_PROTOCOL``/``SASL_*``/``SSL_*`` variables.
"""

from __future__ import annotations

import ssl
from typing import Any

from faust.auth import SASLCredentials, SSLCredentials
from faust.types.auth import CredentialsT

from worker.settings import Settings


def uses_tls(s: Settings) -> bool:
    return s.security_protocol in ("SSL", "SASL_SSL")


def uses_sasl(s: Settings) -> bool:
    return s.security_protocol in ("SASL_PLAINTEXT", "SASL_SSL")


def ssl_context(s: Settings) -> ssl.SSLContext | None:
    """The TLS context of the asyncio clients: the system's CAs or ``ssl_cafile``, a client certificate when
    ``ssl_certfile`` is set; None without TLS."""
    if not uses_tls(s):
        return None
    context = ssl.create_default_context(cafile=s.ssl_cafile or None)
    if s.ssl_certfile:
        context.load_cert_chain(s.ssl_certfile, s.ssl_keyfile or None)
    context.check_hostname = s.ssl_check_hostname
    return context


def faust_credentials(s: Settings) -> CredentialsT | None:
    """``broker_credentials`` of the Faust app (Faust derives SASL_SSL from a SASL credential with a context)."""
    context = ssl_context(s)
    if uses_sasl(s):
        return SASLCredentials(
            username=s.sasl_username, password=s.sasl_password, ssl_context=context, mechanism=s.sasl_mechanism
        )
    if context is not None:
        return SSLCredentials(context)
    return None


def aiokafka_config(s: Settings) -> dict[str, Any]:
    """Keyword arguments of aiokafka's consumers and producers (empty for PLAINTEXT: its defaults)."""
    if s.security_protocol == "PLAINTEXT":
        return {}
    config: dict[str, Any] = {"security_protocol": s.security_protocol, "ssl_context": ssl_context(s)}
    if uses_sasl(s):
        config.update(
            sasl_mechanism=s.sasl_mechanism, sasl_plain_username=s.sasl_username, sasl_plain_password=s.sasl_password
        )
    return config


def kafka_python_config(s: Settings) -> dict[str, Any]:
    """Keyword arguments of kafka-python's clients (admin, producer, consumer)."""
    if s.security_protocol == "PLAINTEXT":
        return {}
    config: dict[str, Any] = {"security_protocol": s.security_protocol}
    if uses_tls(s):
        config.update(
            ssl_cafile=s.ssl_cafile or None,
            ssl_certfile=s.ssl_certfile or None,
            ssl_keyfile=s.ssl_keyfile or None,
            ssl_check_hostname=s.ssl_check_hostname,
        )
    if uses_sasl(s):
        config.update(
            sasl_mechanism=s.sasl_mechanism, sasl_plain_username=s.sasl_username, sasl_plain_password=s.sasl_password
        )
    return config
