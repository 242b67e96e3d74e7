"""TLS and SASL settings reach every Kafka client library the worker uses, spelled as each expects."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from faust.auth import SASLCredentials, SSLCredentials
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer

from worker.errors import ConfigError
from worker.kafkasecurity import aiokafka_config, faust_credentials, kafka_python_config
from worker.settings import Settings

CA = "/etc/ssl/certs/ca-certificates.crt"


def test_plaintext_passes_nothing() -> None:
    s = Settings()
    assert aiokafka_config(s) == {} and kafka_python_config(s) == {} and faust_credentials(s) is None


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_over_tls_reaches_faust_aiokafka_and_kafka_python(mechanism: str) -> None:
    s = Settings.load(
        {
            "SEGMENT_WORKER_SECURITY_PROTOCOL": "SASL_SSL",
            "SEGMENT_WORKER_SASL_MECHANISM": mechanism,
            "SEGMENT_WORKER_SASL_USERNAME": "worker",
            "SEGMENT_WORKER_SASL_PASSWORD": "s3cret",
            "SEGMENT_WORKER_SSL_CAFILE": CA,
        }
    )
    creds = faust_credentials(s)
    assert isinstance(creds, SASLCredentials) and creds.mechanism.value == mechanism
    faust_view = credentials_to_aiokafka_auth(creds)  # what Faust hands its own aiokafka clients
    ours = aiokafka_config(s)
    assert {k: v for k, v in faust_view.items() if k != "ssl_context"} == {
        k: v for k, v in ours.items() if k != "ssl_context"
    }
    assert ours["security_protocol"] == "SASL_SSL" and ours["sasl_plain_password"] == "s3cret"
    assert isinstance(ours["ssl_context"], ssl.SSLContext) and ours["ssl_context"].check_hostname

    async def build() -> None:  # aiokafka checks its security arguments when a client is built (no connection yet)
        consumer = AIOKafkaConsumer(bootstrap_servers="localhost:1", **ours)
        producer = AIOKafkaProducer(bootstrap_servers="localhost:1", **ours)
        await consumer.stop()
        await producer.stop()

    asyncio.run(build())
    kp = kafka_python_config(s)
    assert kp["ssl_cafile"] == CA and kp["sasl_mechanism"] == mechanism
    for client in (KafkaAdminClient, KafkaProducer, KafkaConsumer):  # names kafka-python knows
        assert set(kp) <= set(client.DEFAULT_CONFIG), client


def test_tls_alone_and_client_certificates(tmp_path: Path) -> None:
    s = Settings(security_protocol="SSL", ssl_cafile=CA, ssl_check_hostname=False)
    assert isinstance(faust_credentials(s), SSLCredentials)
    assert not aiokafka_config(s)["ssl_context"].check_hostname
    assert "sasl_mechanism" not in kafka_python_config(s)
    missing = Settings(security_protocol="SSL", ssl_certfile=str(tmp_path / "nope.pem"))
    with pytest.raises(FileNotFoundError):  # a wrong path fails at start-up, not at the first connection
        aiokafka_config(missing)


def test_inconsistent_security_settings_are_refused() -> None:
    with pytest.raises(ConfigError, match="sasl_username and sasl_password"):
        Settings(security_protocol="SASL_PLAINTEXT")
    with pytest.raises(ConfigError, match="ssl_keyfile needs ssl_certfile"):
        Settings(ssl_keyfile="key.pem")
    with pytest.raises(ConfigError):
        Settings.load({"SEGMENT_WORKER_SASL_MECHANISM": "GSSAPI"})
