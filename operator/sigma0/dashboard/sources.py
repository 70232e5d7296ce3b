"""Where the dashboard's figures come from: a local workdir (`sigma0 run`'s) or the API server (the operator's).

Both give the same thing: each cycle's spec and its status as sigma0.kube.status.render writes it (on a cluster
the TrainingCycle's own status; locally the same function applied to state.json: sigma0.executors.local.status_of),
each release's current pointer, and GPU-hours per placement. Neither writes anything: the local source opens
files for reading only, the cluster one only gets and lists.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

from pydantic import ValidationError

from sigma0 import placement
from sigma0.dashboard.board import Board, CycleInput, GpuInput, ReleaseInput, build
from sigma0.dashboard.evidence import Evidence, evidence_of
from sigma0.kube.ledger import DEFAULT_NAMESPACE as LEDGER_NAMESPACE
from sigma0.spec import CycleSpec, GpuPlacement

log = logging.getLogger("sigma0.dashboard")


class Source(Protocol):
    def board(self) -> Board: ...

    def evidence(self, namespace: str, name: str) -> Evidence | None: ...


def _budgets(options: Sequence[GpuPlacement]) -> dict[str, float]:
    found: dict[str, float] = {}
    for option in options:
        if option.weekly_gpu_hours is not None:
            found.setdefault(option.name, option.weekly_gpu_hours)
    return found


def gpu_rows(
    namespace: str,
    ledger: Sequence[placement.Usage],
    specs: Sequence[CycleSpec],
    now: datetime,
    admin: placement.Budgets = placement.NO_BUDGETS,
) -> list[GpuInput]:
    """GPU-hours per placement in the trailing 7 days (sigma0.placement.usage_report) with each one's budget (the
    administrator's `admin`, lowered by a cycle's own)."""
    options = placement.every_option(specs, admin, namespace)
    budgets = _budgets(options)
    report = placement.usage_report(ledger, options, now)
    return [GpuInput(namespace, name, figures["used"], budgets.get(name)) for name, figures in report.items()]


# A local workdir ----------------------------------------------------------------------------------------------------


class LocalSource:
    """`<workdir>/cycles/*/state.json`, `<workdir>/releases/*`, `<workdir>/gpu-ledger.jsonl`."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir.resolve()

    def _runs(self, errors: list[str]) -> list[tuple[Any, CycleSpec]]:
        from sigma0.executors.local import STATE_FILE, load

        found = []
        for state in sorted((self.workdir / "cycles").glob(f"*/{STATE_FILE}")):
            try:
                run = load(state.parent)
            except (OSError, ValueError, KeyError) as error:
                errors.append(f"{state}: not readable ({error})")
                continue
            if run.spec is None:
                errors.append(
                    f"cycle {run.name}: its state.json has no spec (an older sigma0 wrote it); "
                    "run it with this one to show it"
                )
                continue
            try:
                found.append((run, CycleSpec.model_validate(run.spec)))
            except ValidationError as error:
                errors.append(f"cycle {run.name}: its spec does not validate ({error.error_count()} errors)")
        return found

    def board(self) -> Board:
        from sigma0.executors.local import GPU_LEDGER, status_of
        from sigma0.local_release import LocalReleases

        errors: list[str] = []
        runs = self._runs(errors)
        cycles = [CycleInput("", run.name, spec, status_of(run, spec), run.started_at) for run, spec in runs]
        releases = []
        store = LocalReleases(self.workdir / "releases")
        for folder in sorted((self.workdir / "releases").glob("*/current.json")):
            try:
                pointer = store.current(folder.parent.name)
            except (OSError, ValueError, KeyError) as error:
                errors.append(f"release {folder.parent.name}: not readable ({error})")
                continue
            if pointer is not None:
                releases.append(
                    ReleaseInput(
                        "",
                        folder.parent.name,
                        pointer.digest,
                        pointer.pass_at_1,
                        pointer.revision,
                        pointer.cycle,
                        pointer.promoted_at,
                    )
                )
        try:
            ledger = placement.read_ledger(self.workdir / GPU_LEDGER)
        except ValueError as error:
            errors.append(str(error))
            ledger = []
        gpu = gpu_rows("", ledger, [], datetime.now(UTC))
        return build(f"workdir {self.workdir}", cycles, releases, gpu, errors)

    def evidence(self, namespace: str, name: str) -> Evidence | None:
        from sigma0.executors.local import STATE_FILE, load, status_of

        cycle_dir = self.workdir / "cycles" / name
        if namespace or "/" in name or name in ("", ".", "..") or not (cycle_dir / STATE_FILE).is_file():
            return None
        run = load(cycle_dir)
        if run.spec is None:
            return None
        root = cycle_dir.resolve()

        def read(path: str) -> bytes | None:
            found = Path(path).resolve()
            if not found.is_relative_to(root) or not found.is_file():
                return None
            return found.read_bytes()

        return evidence_of(name, status_of(run, CycleSpec.model_validate(run.spec)), read)


# The API server -------------------------------------------------------------------------------------------------------


class ClusterSource:
    """TrainingCycles and AdapterReleases through the operator's clients (sigma0.kube.executor.Clients), the GPU
    ledger of each namespace with cycles (sigma0.kube.ledger, kept in `ledger_namespace`) with the administrator's
    `budgets`. `artifacts`: where this process sees the artifacts volume that stage pods mount at `mount_path`
    (None: the evidence page shows digests, not rows)."""

    def __init__(
        self,
        clients: Any,
        namespaces: Sequence[str] = (),
        artifacts: Path | None = None,
        mount_path: str = "/artifacts",
        budgets: placement.Budgets = placement.NO_BUDGETS,
        ledger_namespace: str = LEDGER_NAMESPACE,
    ) -> None:
        self.clients = clients
        self.budgets = budgets
        self.ledger_namespace = ledger_namespace
        self.namespaces = tuple(namespaces)
        self.artifacts = artifacts.resolve() if artifacts else None
        self.mount_path = mount_path.rstrip("/")

    def _list(self, plural: str) -> list[dict[str, Any]]:
        from sigma0.kube import GROUP, VERSION

        custom, timeout = self.clients.custom, self.clients.timeout
        if not self.namespaces:
            return list(custom.list_cluster_custom_object(GROUP, VERSION, plural, _request_timeout=timeout)["items"])
        items: list[dict[str, Any]] = []
        for namespace in self.namespaces:
            items += custom.list_namespaced_custom_object(GROUP, VERSION, namespace, plural, _request_timeout=timeout)[
                "items"
            ]
        return items

    def board(self) -> Board:
        from kubernetes.client.exceptions import ApiException

        from sigma0.kube import CYCLES, RELEASES
        from sigma0.kube.ledger import ClusterLedger, LedgerError
        from sigma0.kube.releases import current_of, revision_of

        errors: list[str] = []
        cycles: list[CycleInput] = []
        specs: dict[str, list[CycleSpec]] = {}
        releases: list[ReleaseInput] = []
        try:
            found_cycles, found_releases = self._list(CYCLES), self._list(RELEASES)
        except Exception as error:  # an ApiException, or no connection at all (urllib3's errors)
            return build("cluster", [], [], [], [f"the API server did not answer: {_short(error)}"])
        for item in found_cycles:
            meta = item.get("metadata") or {}
            try:
                spec = CycleSpec.model_validate(item.get("spec") or {})
            except ValidationError:
                errors.append(f"TrainingCycle {meta.get('namespace')}/{meta.get('name')}: its spec does not validate")
                continue
            cycles.append(
                CycleInput(
                    meta.get("namespace", ""),
                    meta.get("name", ""),
                    spec,
                    item.get("status") or {},
                    str(meta.get("creationTimestamp") or ""),
                )
            )
            specs.setdefault(meta.get("namespace", ""), []).append(spec)
        for item in found_releases:
            meta, current = item.get("metadata") or {}, current_of(item)
            releases.append(
                ReleaseInput(
                    meta.get("namespace", ""),
                    meta.get("name", ""),
                    current.digest if current else None,
                    current.pass_at_1 if current else None,
                    revision_of(item),
                    current.cycle if current else "",
                    current.promoted_at if current else "",
                )
            )
        gpu: list[GpuInput] = []
        now = datetime.now(UTC)
        for namespace, namespace_specs in sorted(specs.items()):
            try:
                ledger = ClusterLedger(self.clients.core, namespace, self.ledger_namespace, self.clients.timeout).read()
            except (ApiException, LedgerError, OSError) as error:
                errors.append(f"GPU ledger of {namespace}: {_short(error)}")
                continue
            gpu += gpu_rows(namespace, ledger, namespace_specs, now, self.budgets)
        return build("cluster", cycles, releases, gpu, errors)

    def evidence(self, namespace: str, name: str) -> Evidence | None:
        from kubernetes.client.exceptions import ApiException

        from sigma0.kube import CYCLES, GROUP, VERSION

        if self.namespaces and namespace not in self.namespaces:
            return None
        try:
            item = self.clients.custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, CYCLES, name, _request_timeout=self.clients.timeout
            )
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return evidence_of(name, item.get("status") or {}, self._read)

    def _read(self, path: str) -> bytes | None:
        """A file as a stage pod named it (under the artifacts mount), read where this process sees that volume."""
        if self.artifacts is None or not path.startswith(self.mount_path + "/"):
            return None
        relative = PurePosixPath(path[len(self.mount_path) + 1 :])
        found = (self.artifacts / relative).resolve()
        if not found.is_relative_to(self.artifacts) or not found.is_file():
            return None
        return found.read_bytes()


def _short(error: BaseException) -> str:
    status = getattr(error, "status", None)
    reason = getattr(error, "reason", None)
    return f"{status} {reason}" if status else f"{type(error).__name__}: {error}"[:200]
