"""`sigma0 operator`: run the kopf operator that drives TrainingCycles as Jobs.

One replica by default (kopf standalone: no peering objects needed). To run a second one safely, start both
with `--peering NAME` (and apply manifests/peering/, or set the chart's operator.replicas): kopf then lets only
the highest-priority live replica handle events, and another takes over when it stops. Without `--priority`, each
replica derives its priority from its identity, so that replicas of one Deployment differ.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import logging
import os
import secrets
import socket
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sigma0.kube import jobs
from sigma0.kube.ledger import DEFAULT_NAMESPACE as LEDGER_NAMESPACE
from sigma0.placement import Budgets

ENV = {  # flag → environment variable that sets its default (the Deployment sets these)
    "sandbox_image": "SIGMA0_SANDBOX_IMAGE",
    "trainer_image": "SIGMA0_TRAINER_IMAGE",
    "artifacts_claim": "SIGMA0_ARTIFACTS_CLAIM",
    "artifacts_secret": "SIGMA0_ARTIFACTS_SECRET",
    "clock_file": "SIGMA0_CLOCK_FILE",  # test only
    "gvisor_runtime_class": "SIGMA0_GVISOR_RUNTIME_CLASSES",  # comma-separated
    "queue_key": "SIGMA0_QUEUE_KEYS",  # comma-separated
    "image_pull_secret": "SIGMA0_STAGE_IMAGE_PULL_SECRETS",  # comma-separated
    "stage_service_account": "SIGMA0_STAGE_SERVICE_ACCOUNT",
    "allow_host_path": "SIGMA0_ALLOW_HOST_PATH",  # true / false
    "allow_process_sandbox": "SIGMA0_ALLOW_PROCESS_SANDBOX",  # true / false
    "gpu_budget": "SIGMA0_GPU_BUDGETS",  # comma-separated
    "ledger_namespace": "SIGMA0_LEDGER_NAMESPACE",
}


def env_flag(name: str) -> bool:
    """An on/off environment variable: true, 1, yes or on (any case) is on; unset or anything else is off."""
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def operator_clock(clock_file: str | None = None) -> Callable[[], datetime]:
    """The operator's clock: the real one, or (tests only, --clock-file) the real one plus the seconds written in
    `clock_file`, re-read on every call (no file: no offset). Stage pods' start and end times, which GPU-hours are
    counted from, stay real: only the operator's idea of now moves."""

    def now() -> datetime:
        offset = ""
        if clock_file and Path(clock_file).exists():
            offset = Path(clock_file).read_text().strip()
        return datetime.now(UTC) + timedelta(seconds=float(offset or 0))

    return now


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = jobs.PodSettings()
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument("--namespace", action="append", default=[], metavar="NS",
                       help="watch this namespace (repeatable); default: every namespace")
    scope.add_argument("--all-namespaces", action="store_true", help="watch every namespace (the default)")
    parser.add_argument("--kubeconfig", help="a kubeconfig file (default: in-cluster, then $KUBECONFIG)")
    parser.add_argument("--sandbox-image", default=os.environ.get(ENV["sandbox_image"], defaults.sandbox_image),
                        help="image of verify, score, harvest, dataset and decide pods")
    parser.add_argument("--trainer-image", default=os.environ.get(ENV["trainer_image"], defaults.trainer_image),
                        help="image of train and generate pods")
    parser.add_argument("--artifacts-claim", default=os.environ.get(ENV["artifacts_claim"], defaults.default_claim),
                        help="the PersistentVolumeClaim of cycles that name no artifacts location")
    parser.add_argument("--artifacts-secret", default=os.environ.get(ENV["artifacts_secret"], ""), metavar="SECRET",
                        help="for cycles with an artifacts URI (s3://...): a Secret in the cycle's namespace whose "
                        "keys the trusted stage pods get as environment variables (AWS_ACCESS_KEY_ID, "
                        "AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, ...); verify and score pods get presigned URLs")
    parser.add_argument("--gvisor-runtime-class", action="append", default=None, metavar="NAME",
                        help="a RuntimeClass whose handler is gVisor (runsc), repeatable; sandbox steps run only "
                        "under one of these unless --allow-process-sandbox, and as root inside gVisor so that each "
                        f"candidate gets a user of its own (default: {', '.join(defaults.gvisor_runtime_classes)}; "
                        f"env {ENV['gvisor_runtime_class']}, comma-separated)")
    parser.add_argument("--queue-key", action="append", default=None, metavar="KEY",
                        help="a label or annotation of a TrainingCycle that its stage Jobs carry too, for a batch "
                        "queue such as Kueue, repeatable (default: "
                        f"{', '.join(defaults.queue_keys)}; env {ENV['queue_key']}, comma-separated)")
    parser.add_argument("--image-pull-secret", action="append", default=None, metavar="SECRET",
                        help="a Secret stage pods pull their images with (repeatable; env "
                        f"{ENV['image_pull_secret']}, comma-separated)")
    parser.add_argument("--stage-service-account", metavar="NAME",
                        default=os.environ.get(ENV["stage_service_account"], defaults.service_account),
                        help="the ServiceAccount of trusted stage pods (not verify and score, which run untrusted "
                        "code), e.g. one IRSA or Workload Identity binds to a cloud role (default: the namespace's)")
    parser.add_argument("--gpu-shm-size", default=defaults.gpu_shm_size, metavar="QUANTITY",
                        help="size of the memory-backed /dev/shm of train and generate pods ('' for none)")
    parser.add_argument("--model-cache-size", default=defaults.model_cache_size, metavar="QUANTITY",
                        help="with an artifacts URI (no artifacts volume), the node-local emptyDir of train and "
                        "generate pods that holds the base model's weights ('' keeps them in the 2Gi /tmp)")
    parser.add_argument("--gpu-budget", action="append", default=None, metavar="[NAMESPACE/]PLACEMENT=HOURS",
                        help="a weekly GPU-hour budget of a placement, in one namespace or in every namespace without "
                        "an entry of its own (repeatable; env " + ENV["gpu_budget"] + ", comma-separated). A cycle's "
                        "own weeklyGPUHours can only lower it")
    parser.add_argument("--ledger-namespace", metavar="NS",
                        default=os.environ.get(ENV["ledger_namespace"], LEDGER_NAMESPACE),
                        help="the operator's own namespace, where the GPU ledgers of every tenant namespace are kept "
                        f"out of the tenants' reach (default {LEDGER_NAMESPACE})")
    parser.add_argument("--allow-host-path", action="store_true", default=env_flag(ENV["allow_host_path"]),
                        help="run cycles whose spec.artifacts.path mounts a node folder (hostPath) into stage pods; "
                        f"refused by default: single-tenant clusters only (env {ENV['allow_host_path']}=true)")
    parser.add_argument("--allow-process-sandbox", action="store_true",
                        default=env_flag(ENV["allow_process_sandbox"]),
                        help="run cycles whose sandbox steps would run untrusted code without gVisor (sandbox: "
                        "process, or a runtimeClassName not named by --gvisor-runtime-class); refused by default "
                        f"(env {ENV['allow_process_sandbox']}=true)")
    parser.add_argument("--run-as-user", type=int, default=defaults.run_as_user,
                        help="uid of stage pods (non-root; 0 only where the images cannot run otherwise)")
    parser.add_argument("--job-ttl", type=int, default=defaults.ttl_seconds_after_finished,
                        help="ttlSecondsAfterFinished of stage Jobs")
    parser.add_argument("--backoff-limit", type=int, default=defaults.backoff_limit,
                        help="retries of a failed plain or GPU pod (bad input and sandbox verdicts never retry)")
    parser.add_argument("--resync-seconds", type=float, default=30.0,
                        help="how often every unfinished cycle is reconciled even without events")
    parser.add_argument("--watch-timeout", type=int, default=60,
                        help="server-side watch timeout; the client reconnects at least this often")
    parser.add_argument("--metrics-port", type=int, default=9090, help="Prometheus metrics port (0: off)")
    parser.add_argument("--metrics-address", default="0.0.0.0", metavar="IP",
                        help="the address /metrics listens on (the chart gives the pod's IP when it serves plain "
                        "HTTP)")
    parser.add_argument("--metrics-secure", action="store_true",
                        help="serve /metrics over HTTPS to bearer tokens only: each one goes to a TokenReview, then "
                        "a SubjectAccessReview for get on the nonResourceURL /metrics (401 / 403 otherwise); the "
                        "chart's default. Off: plain HTTP to anyone who can reach the address")
    parser.add_argument("--metrics-cert-file", metavar="PATH",
                        help="with --metrics-secure: the serving certificate (PEM, e.g. a Secret's tls.crt), re-read "
                        "when it changes; default: a self-signed one made at start")
    parser.add_argument("--metrics-key-file", metavar="PATH", help="its private key (a Secret's tls.key)")
    parser.add_argument("--liveness-port", type=int, default=8080, help="liveness endpoint /healthz (0: off)")
    parser.add_argument("--dashboard-port", type=int, default=0,
                        help="serve the read-only dashboard (sigma0.dashboard) on this port (0: off, the default)")
    parser.add_argument("--dashboard-artifacts", metavar="DIR",
                        help="where this process sees the artifacts volume that stage pods mount at /artifacts "
                        "(read-only), so the dashboard shows each decision's per-problem results (default: "
                        "it shows their digests only)")
    parser.add_argument("--peering", metavar="NAME", help="run with kopf peering NAME (default: standalone)")
    parser.add_argument("--priority", type=int, default=None,
                        help="peering priority (higher wins); default: a number derived from this replica's "
                        "identity, so that the replicas of one Deployment differ")
    parser.add_argument("--peering-lifetime", type=int, default=60, metavar="SECONDS",
                        help="how long a peered replica counts as alive after its last heartbeat: the longest a "
                        "standby waits before it takes over from a replica that died")
    parser.add_argument("--clock-file", default=os.environ.get(ENV["clock_file"]), metavar="PATH",
                        help="TEST ONLY: a file holding seconds to add to the operator's clock, read on every use "
                        "(GPU budget windows, Unschedulable patience, deadlines); lets a test move a week ahead")
    parser.add_argument("--verbose", action="store_true")


def gpu_budgets(args: argparse.Namespace) -> Budgets:
    """--gpu-budget, else its environment variable; a bad entry stops the operator at start, naming it."""
    try:
        return Budgets.parse(listed(args, "gpu_budget", ()))
    except ValueError as error:
        raise SystemExit(f"sigma0 operator: {error}") from error


def listed(args: argparse.Namespace, flag: str, default: tuple[str, ...]) -> tuple[str, ...]:
    """A repeatable flag's values, else its environment variable's (comma-separated), else `default`."""
    named = getattr(args, flag) or os.environ.get(ENV[flag], "").split(",")
    found = tuple(dict.fromkeys(name.strip() for name in named if name.strip()))
    return found or default


def gvisor_runtime_classes(args: argparse.Namespace) -> tuple[str, ...]:
    """--gvisor-runtime-class, else its environment variable, else the default (gvisor)."""
    return listed(args, "gvisor_runtime_class", jobs.PodSettings().gvisor_runtime_classes)


def settings_from(args: argparse.Namespace) -> jobs.PodSettings:
    return jobs.PodSettings(sandbox_image=args.sandbox_image, trainer_image=args.trainer_image,
                            default_claim=args.artifacts_claim, artifacts_secret=args.artifacts_secret,
                            run_as_user=args.run_as_user,
                            ttl_seconds_after_finished=args.job_ttl, backoff_limit=args.backoff_limit,
                            gvisor_runtime_classes=gvisor_runtime_classes(args),
                            allow_host_path=args.allow_host_path, allow_process_sandbox=args.allow_process_sandbox,
                            queue_keys=listed(args, "queue_key", jobs.PodSettings().queue_keys),
                            image_pull_secrets=listed(args, "image_pull_secret", ()),
                            service_account=args.stage_service_account, gpu_shm_size=args.gpu_shm_size,
                            model_cache_size=args.model_cache_size)


def identity_priority(identity: str) -> int:
    """A peering priority from a replica's identity (its host name, which is the pod's name, and process): replicas
    of one Deployment get different ones, so that exactly one of them is active (equal priorities pause both)."""
    return int(hashlib.sha256(identity.encode()).hexdigest()[:7], 16) + 1


def api_client(kubeconfig: str | None) -> Any:
    """A kubernetes ApiClient: the given kubeconfig, else in-cluster, else $KUBECONFIG or ~/.kube/config."""
    from kubernetes import client, config

    if kubeconfig:
        return config.new_client_from_config(config_file=kubeconfig)
    try:
        config.load_incluster_config()
        return client.ApiClient()
    except config.ConfigException:
        return config.new_client_from_config()


def metrics_server(args: argparse.Namespace, metrics: Any, api: Any) -> Any:
    """The /metrics endpoint the flags ask for (sigma0.kube.metrics_http), bound but not serving yet."""
    from sigma0.kube import metrics_http

    if not args.metrics_secure:
        if args.metrics_cert_file or args.metrics_key_file:
            raise SystemExit("--metrics-cert-file and --metrics-key-file need --metrics-secure")
        return metrics_http.MetricsServer(args.metrics_address, args.metrics_port, metrics.registry)
    gate = metrics_http.Gate(metrics_http.KubeReviewer(api))
    tls = metrics_http.certificate(args.metrics_cert_file, args.metrics_key_file, args.metrics_address)
    return metrics_http.MetricsServer(args.metrics_address, args.metrics_port, metrics.registry, gate=gate, tls=tls)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.kubeconfig:
        os.environ["KUBECONFIG"] = args.kubeconfig  # kopf's own login reads it too
    import kopf

    from sigma0.kube import handlers, heap
    from sigma0.kube.executor import Clients, JobExecutor
    from sigma0.kube.janitor import Janitor
    from sigma0.kube.metrics import OperatorMetrics

    heap.limit_arenas()
    api = api_client(args.kubeconfig)
    clients = Clients.of(api, timeout=(5.0, 30.0))
    metrics = OperatorMetrics()
    if args.clock_file:
        logging.getLogger("sigma0.operator").warning("TEST CLOCK: the operator's time is offset by the seconds "
                                                     "in %s", args.clock_file)
    settings = settings_from(args)
    for allowed, what in ((settings.allow_host_path, "--allow-host-path: cycles may mount node folders (hostPath)"),
                          (settings.allow_process_sandbox, "--allow-process-sandbox: untrusted code may run "
                           "without gVisor")):
        if allowed:
            logging.getLogger("sigma0.operator").warning("%s", what)
    budgets = gpu_budgets(args)
    executor = JobExecutor(clients, settings, metrics=metrics, clock=operator_clock(args.clock_file),
                           budgets=budgets, ledger_namespace=args.ledger_namespace)
    identity = f"sigma0@{socket.gethostname()}/{os.getpid()}/{secrets.token_hex(3)}"
    peering = None
    priority = args.priority if args.priority is not None else identity_priority(identity)
    if args.peering:
        peering = handlers.Peering(args.peering, identity, priority, args.namespace[0] if args.namespace else None,
                                   lifetime=args.peering_lifetime)
        logging.getLogger("sigma0.operator").info("peering %s as %s, priority %d", args.peering, identity, priority)
    janitor = Janitor(clients, settings, clock=executor.clock)
    handlers.install(handlers.Runtime(executor, clients, metrics, tuple(args.namespace), args.resync_seconds,
                                      args.watch_timeout, peering, janitor))
    if args.metrics_port:
        metrics_server(args, metrics, api).serve_in_thread()
    if args.dashboard_port:
        from sigma0.dashboard.server import serve_in_thread
        from sigma0.dashboard.sources import ClusterSource

        artifacts = Path(args.dashboard_artifacts) if args.dashboard_artifacts else None
        serve_in_thread(ClusterSource(clients, tuple(args.namespace), artifacts, settings.mount_path, budgets,
                                      args.ledger_namespace), "0.0.0.0", args.dashboard_port)
    liveness = f"http://0.0.0.0:{args.liveness_port}/healthz" if args.liveness_port else None
    asyncio.run(kopf.operator(
        clusterwide=not args.namespace, namespaces=args.namespace, liveness_endpoint=liveness, identity=identity,
        standalone=args.peering is None, peering_name=args.peering, priority=priority))
    return 0
