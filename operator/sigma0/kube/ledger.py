"""The GPU ledger of a namespace, kept where it survives operator restarts and where its tenants cannot write it:
the ConfigMap `sigma0-gpu-ledger.<namespace>` in the operator's own namespace (`--ledger-namespace`, the chart's
release namespace). A ledger in the tenant's namespace could be edited or deleted by the tenant, wiping the hours
its budgets count.

One JSON line per GPU stage pod (sigma0.placement.Usage: placement, step, cycle, real start and end, GPUs), under
the key `ledger.jsonl`. Every write is a replace guarded by the resourceVersion that was read (or a create): on
409 the ConfigMap is read again and the change applied again, so two cycles recording at once both land. Rows
are keyed by pod uid, so recording a pod twice changes nothing; rows too old to count again are dropped on
every write, which keeps the ConfigMap small (a row is about 200 bytes).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sigma0.placement import Usage, merge, prune

log = logging.getLogger("sigma0.operator")

PREFIX = "sigma0-gpu-ledger."  # + the tenant namespace: a DNS subdomain, as ConfigMap names are
DEFAULT_NAMESPACE = "sigma0-system"  # the operator's namespace in manifests/; the chart passes its own
LABEL_TENANT = "sigma0.dev/ledger-of"  # the namespace whose GPU hours a ledger holds
KEY = "ledger.jsonl"
LABELS = {"app.kubernetes.io/name": "sigma0", "app.kubernetes.io/component": "gpu-ledger",
          "app.kubernetes.io/managed-by": "sigma0-operator"}
ATTEMPTS = 8


class LedgerError(Exception):
    """The ledger could not be read or written; the message says what to do."""


def parse(data: str, where: str) -> list[Usage]:
    rows = []
    for number, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(Usage.from_json(json.loads(line)))
        except ValueError as error:
            raise LedgerError(f"{where}, line {number}: {error}; fix or delete that line (the GPU budgets of "
                              "this namespace are not enforced until then)") from error
    return merge([], rows)


def render(rows: list[Usage]) -> str:
    return "".join(json.dumps(row.to_json(), sort_keys=True) + "\n" for row in rows)


def name_for(tenant: str) -> str:
    return PREFIX + tenant


class ClusterLedger:
    """The ledger of the tenant namespace `tenant`, kept in `namespace` (the operator's), through the core/v1 API."""

    def __init__(self, core: Any, tenant: str, namespace: str, timeout: tuple[float, float] = (5.0, 30.0)) -> None:
        self.core = core
        self.tenant = tenant
        self.namespace = namespace
        self.name = name_for(tenant)
        self.timeout = timeout

    @property
    def where(self) -> str:
        return f"ConfigMap {self.namespace}/{self.name}"

    def _get(self) -> dict[str, Any] | None:
        from kubernetes.client.exceptions import ApiException

        try:
            response = self.core.read_namespaced_config_map(self.name, self.namespace, _preload_content=False,
                                                            _request_timeout=self.timeout)
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return json.loads(response.data)

    def read(self) -> list[Usage]:
        found = self._get()
        return parse(((found or {}).get("data") or {}).get(KEY, ""), self.where)

    def update(self, change: Callable[[list[Usage]], list[Usage]], now: datetime) -> list[Usage]:
        """Apply `change` to the rows and write the result (old rows pruned); returns the rows as written.
        Nothing is written when nothing changed."""
        from kubernetes.client.exceptions import ApiException

        for _ in range(ATTEMPTS):
            found = self._get()
            rows = parse(((found or {}).get("data") or {}).get(KEY, ""), self.where)
            new = prune(change(rows), now)
            if new == rows:
                return rows
            body = {"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": self.name, "namespace": self.namespace,
                                 "labels": {**LABELS, LABEL_TENANT: self.tenant}},
                    "data": {KEY: render(new)}}
            try:
                if found is None:
                    self.core.create_namespaced_config_map(self.namespace, body, _request_timeout=self.timeout)
                else:
                    body["metadata"]["resourceVersion"] = found["metadata"]["resourceVersion"]
                    self.core.replace_namespaced_config_map(self.name, self.namespace, body,
                                                            _request_timeout=self.timeout)
                return new
            except ApiException as error:
                if error.status != 409:
                    raise
                log.debug("%s changed meanwhile; applying the change again", self.where)
        raise LedgerError(f"{self.where}: {ATTEMPTS} writes in a row lost to other writers; try again")
