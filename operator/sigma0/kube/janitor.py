"""The janitor: deletes finished TrainingCycles that their release's limits or their own TTL let go, files first.

The rule is sigma0.retention's (history limits per release, spec.ttlSecondsAfterFinished, adapters the release
still points at are kept); this module is where it meets the cluster. The operator's resync thread calls `sweep`
with every cycle it listed, so the janitor runs as often as the resync (--resync-seconds) and, with peering, only in
the active replica. For each cycle to delete:

    1. a cleanup Job `<cycle>-clean-1`, owned by the cycle, runs `sigma0 clean FOLDER --keep ...` (sigma0.clean)
       in the sandbox image against the cycle's artifacts: its folder on the artifacts volume, as root with only
       DAC_OVERRIDE and FOWNER (stage pods wrote as different users), or its fsspec URI with the artifacts Secret;
    2. once that Job has succeeded, the TrainingCycle is deleted (uid precondition: never a new cycle of the same
       name); its Jobs, the cleanup Job included, go with it by their ownerReferences.

A cleanup Job that failed stays, and so does its cycle: `kubectl logs job/<cycle>-clean-1` says why, and deleting
that Job makes the janitor try again. A cycle whose cleanup Job exists is finished off even if the limits changed
meanwhile: its files may already be gone.

Why a janitor and not a finalizer: a finalizer on every TrainingCycle makes `kubectl delete tc` and the deletion of
its namespace hang for as long as the operator is down or cannot clean up, and kopf would add one to every cycle for
a timer or daemon (sigma0.kube.handlers uses event handlers only, for that reason). The janitor adds nothing to any
object: if it never runs, cycles simply stay, as they did before it existed, and a person can always delete one.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from sigma0 import plan, retention
from sigma0.kube import CYCLES, GROUP, RELEASES, VERSION, jobs
from sigma0.kube.executor import event_for
from sigma0.kube.releases import cycle_limits_of, pointed_at
from sigma0.placement import parse_time
from sigma0.spec import CycleSpec

log = logging.getLogger("sigma0.operator")

STEP = "clean"
# What deleting files that other users wrote takes: unlink in their folders (DAC_OVERRIDE), and in folders with the
# sticky bit or of files owned by others (FOWNER). Nothing else: no CHOWN, no SETUID.
CAPABILITIES = ["DAC_OVERRIDE", "FOWNER"]
ACTIVE_DEADLINE_SECONDS = 3600


def ref_of(cycle: Mapping[str, Any]) -> jobs.CycleRef:
    metadata = cycle["metadata"]
    return jobs.CycleRef(metadata["name"], metadata["namespace"], metadata["uid"],
                         str((cycle.get("spec") or {}).get("release", "")))


def entry_of(cycle: Mapping[str, Any], settings: jobs.PodSettings) -> retention.Cycle:
    """The cycle as retention sees it; its artifacts folder as the cleanup pod sees it ("" if the spec cannot be
    read: then there is nothing the janitor could clean, and the cycle is never chosen)."""
    metadata, status = cycle["metadata"], cycle.get("status") or {}
    spec_data = cycle.get("spec") or {}
    try:
        spec: CycleSpec | None = CycleSpec.model_validate(spec_data)
    except ValidationError:
        spec = None
    phase = status.get("phase") if spec is not None and not metadata.get("deletionTimestamp") else None
    # A cycle the operator refused ran nothing and wrote nothing: there is no folder to clean (and a cleanup pod
    # must not mount the hostPath the refusal was about).
    ran = spec is not None and jobs.refusal(spec, settings) is None
    folder = jobs.layout(ref_of(cycle), spec, settings).cycle_dir if spec is not None and ran else ""
    finished = status.get("completionTime")
    return retention.Cycle(name=metadata["name"], release=str(spec_data.get("release", "")), phase=phase,
                           created=parse_time(metadata["creationTimestamp"]),
                           finished=parse_time(finished) if finished else None,
                           ttl_seconds=spec.ttl_seconds_after_finished if spec is not None else None,
                           artifacts=folder)


def cleanup_job(cycle: Mapping[str, Any], doomed: retention.Doomed, settings: jobs.PodSettings) -> dict[str, Any]:
    """The Job that empties a doomed cycle's folder but for what its release still points at. Built as a plain
    stage's Job (same image, volume, placement, hardening), then given root with DAC_OVERRIDE and FOWNER on a
    volume, where stage pods of other users wrote; against an fsspec URI it needs no privilege at all."""
    spec = CycleSpec.model_validate(cycle.get("spec") or {})
    argv = ["sigma0", "clean", doomed.cycle.artifacts]
    for path in doomed.keep:
        argv += ["--keep", path]
    step = plan.Step(STEP, STEP, "plain", "Cleaning", tuple(argv))
    body = jobs.build_job(step, cycle=ref_of(cycle), spec=spec, settings=settings, attempt=1,
                          active_deadline_seconds=ACTIVE_DEADLINE_SECONDS)
    body["metadata"].setdefault("annotations", {})["sigma0.dev/why"] = doomed.message[:1000]
    pod = body["spec"]["template"]["spec"]
    if not spec.artifacts.uri:
        pod["securityContext"] = {"runAsNonRoot": False, "runAsUser": 0, "runAsGroup": 0,
                                  "seccompProfile": {"type": "RuntimeDefault"}}
        (container,) = pod["containers"]
        container["securityContext"]["capabilities"] = {"drop": ["ALL"], "add": list(CAPABILITIES)}
    body["spec"].pop("ttlSecondsAfterFinished", None)  # it goes with its cycle; a failed one stays to be read
    return body


def _condition(job: Mapping[str, Any], kind: str) -> bool:
    return any(c.get("type") == kind and c.get("status") == "True"
               for c in (job.get("status") or {}).get("conditions") or [])


@dataclass
class Janitor:
    clients: Any  # sigma0.kube.executor.Clients
    settings: jobs.PodSettings
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)

    def sweep(self, cycles: list[dict[str, Any]], namespaces: tuple[str, ...] = ()) -> list[str]:
        """One pass over the listed cycles: start cleanups, delete the cycles whose cleanup succeeded. The names
        of the cycles deleted (namespace/name). `namespaces`: the operator's (empty: it watches every namespace,
        and the AdapterReleases and cleanup Jobs are listed cluster-wide, one request each per pass)."""
        entries = {(c["metadata"]["namespace"], c["metadata"]["name"]): entry_of(c, self.settings) for c in cycles}
        with_finished = sorted({namespace for (namespace, _), e in entries.items() if e.done})
        if not with_finished:
            return []
        scopes = [(namespace,) for namespace in with_finished] if namespaces else [()]
        releases: dict[tuple[str, str], dict[str, Any]] = {}
        started: dict[tuple[str, str], dict[str, Any]] = {}
        selector = f"{jobs.MANAGED_BY[0]}={jobs.MANAGED_BY[1]},{jobs.LABEL_STEP}={STEP}"
        for scope in scopes:
            custom, batch = self.clients.custom, self.clients.batch
            listed = (self._list(custom.list_namespaced_custom_object, GROUP, VERSION, *scope, RELEASES) if scope
                      else self._list(custom.list_cluster_custom_object, GROUP, VERSION, RELEASES))
            releases |= {(r["metadata"]["namespace"], r["metadata"]["name"]): r for r in listed}
            found = (self._list(batch.list_namespaced_job, *scope, label_selector=selector) if scope
                     else self._list(batch.list_job_for_all_namespaces, label_selector=selector))
            started |= {(j["metadata"]["namespace"], j["metadata"]["labels"].get(jobs.LABEL_CYCLE)): j for j in found}
        now = self.clock()
        chosen: dict[tuple[str, str], retention.Doomed] = {}
        for namespace in with_finished:
            finished = [e for (ns, _), e in entries.items() if ns == namespace and e.done]
            for name in sorted({e.release for e in finished}):
                release = releases.get((namespace, name))
                for doomed in retention.doomed(finished, name, cycle_limits_of(release), pointed_at(release), now):
                    chosen[(namespace, doomed.cycle.name)] = doomed
        deleted = []
        for cycle in cycles:
            namespace, name, uid = (cycle["metadata"][key] for key in ("namespace", "name", "uid"))
            job, doomed = started.get((namespace, name)), chosen.get((namespace, name))
            if job is not None and uid not in {o.get("uid") for o in job["metadata"].get("ownerReferences") or []}:
                continue  # an earlier cycle's of the same name: the garbage collector removes it
            if job is None and doomed is not None and not doomed.cycle.artifacts:
                if self._delete(namespace, name, uid, doomed.message):
                    deleted.append(f"{namespace}/{name}")
            elif job is None and doomed is not None:
                self._create(cycle, doomed)
            elif job is not None and _condition(job, "Complete"):
                if self._delete(namespace, name, uid, "its cleanup Job succeeded"):
                    deleted.append(f"{namespace}/{name}")
            elif job is not None and _condition(job, "Failed"):
                log.warning("cleanup Job %s/%s failed, so TrainingCycle %s stays; see its log, and delete the Job "
                            "to try again", namespace, job["metadata"]["name"], name)
        return deleted

    def _list(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        response = method(*args, _preload_content=False, _request_timeout=self.clients.timeout, **kwargs)
        return list(json.loads(response.data).get("items") or [])

    def _create(self, cycle: dict[str, Any], doomed: retention.Doomed) -> None:
        from kubernetes.client.exceptions import ApiException

        body = cleanup_job(cycle, doomed, self.settings)
        namespace = cycle["metadata"]["namespace"]
        try:
            self.clients.batch.create_namespaced_job(namespace, body, _request_timeout=self.clients.timeout)
        except ApiException as error:
            if error.status != 409:  # 409: made by a pass that did not see it listed yet
                raise
            return
        kept = f", keeping {', '.join(doomed.keep)} (its release points there)" if doomed.keep else ""
        message = f"{doomed.message}: cleanup Job {body['metadata']['name']} deletes its files{kept}"
        log.info("TrainingCycle %s/%s goes: %s", namespace, doomed.cycle.name, message)
        try:  # `kubectl describe tc` says why the cycle is about to go; a courtesy, as the executor's events are
            self.clients.core.create_namespaced_event(
                namespace, event_for(cycle, "Normal", "CleaningUp", message[:1000], "sigma0-operator"),
                _request_timeout=self.clients.timeout)
        except ApiException as error:
            log.warning("could not post event CleaningUp: %s", error.reason)

    def _delete(self, namespace: str, name: str, uid: str, why: str) -> bool:
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        options = client.V1DeleteOptions(preconditions=client.V1Preconditions(uid=uid),
                                         propagation_policy="Background")
        try:
            self.clients.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, CYCLES, name,
                                                                body=options, _request_timeout=self.clients.timeout)
        except ApiException as error:
            if error.status in (404, 409):  # gone already, or another cycle of that name now
                return False
            raise
        log.info("TrainingCycle %s/%s deleted: %s", namespace, name, why)
        return True
