"""`sigma0 cycle create MANIFEST`: create a TrainingCycle from a template, as the chart's CronJob does every night.

The template is an ordinary TrainingCycle manifest, usually with `metadata.generateName` so that each run makes a
new cycle (`nightly-x7k2p`). It is checked against the CRD schema first (the same check as `sigma0 validate`), then
created as written; the API server fills in the defaults. Nothing here waits for other cycles: if one of the same
release is still running, the operator queues the new one (phase Queued) and starts it when the release is free.

The namespace is, in order: --namespace, the manifest's metadata.namespace, the pod's own namespace (in-cluster),
then the kubeconfig context's. The only permission needed is `create` on trainingcycles in that namespace.

Exit codes: 0 created (its name is printed), 2 the manifest is invalid, 1 the API server refused or was unreachable.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from sigma0.kube import CYCLES, GROUP, VERSION
from sigma0.spec import ManifestError, parse_manifest

IN_CLUSTER_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="create a TrainingCycle from a manifest (generateName: a new one "
                                "each time)")
    create.add_argument("manifest", help="a TrainingCycle manifest (YAML)")
    create.add_argument("--namespace", help="where to create it (default: the manifest's, else the pod's own "
                        "namespace in a cluster, else the kubeconfig context's)")
    create.add_argument("--kubeconfig", help="a kubeconfig file (default: in-cluster, then $KUBECONFIG)")


def read_template(path: Path) -> dict[str, Any]:
    """The manifest as written, after the same schema check as `sigma0 validate` (ManifestError if it fails)."""
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ManifestError(str(path), [f"(file): cannot read it: {error.strerror}"]) from error
    except yaml.YAMLError as error:
        raise ManifestError(str(path), [f"(file): not valid YAML: {error}"]) from error
    parse_manifest(document, str(path))
    return document


def target_namespace(explicit: str | None, document: dict[str, Any], context_namespace: str | None) -> str:
    if explicit:
        return explicit
    if document["metadata"].get("namespace"):
        return str(document["metadata"]["namespace"])
    if IN_CLUSTER_NAMESPACE.exists():
        return IN_CLUSTER_NAMESPACE.read_text().strip()
    return context_namespace or "default"


def _context_namespace(kubeconfig: str | None) -> str | None:
    from kubernetes import config

    try:
        _, active = config.list_kube_config_contexts(config_file=kubeconfig)
    except (config.ConfigException, OSError):
        return None
    return (active or {}).get("context", {}).get("namespace")


def create(args: argparse.Namespace) -> int:
    import urllib3
    from kubernetes import client, config

    from sigma0.kube.operator import api_client

    try:
        document = read_template(Path(args.manifest))
    except ManifestError as error:
        print(error, file=sys.stderr)
        return EXIT_BAD_INPUT
    in_cluster = IN_CLUSTER_NAMESPACE.exists() and not args.kubeconfig
    namespace = target_namespace(args.namespace, document, None if in_cluster else _context_namespace(args.kubeconfig))
    document["metadata"].pop("namespace", None)
    try:
        api = client.CustomObjectsApi(api_client(args.kubeconfig))
    except (config.ConfigException, OSError) as error:
        print(f"sigma0 cycle create: no cluster to talk to (not in a pod, and no usable kubeconfig): {error}",
              file=sys.stderr)
        return EXIT_FAILED
    try:
        created = api.create_namespaced_custom_object(GROUP, VERSION, namespace, CYCLES, document,
                                                      _request_timeout=(10, 60))
    except client.ApiException as error:
        print(f"sigma0 cycle create: the API server refused the TrainingCycle in namespace {namespace}: "
              f"{error.status} {error.reason}: {error.body}", file=sys.stderr)
        return EXIT_FAILED
    except (OSError, urllib3.exceptions.HTTPError) as error:
        print(f"sigma0 cycle create: cannot reach the API server: {error}", file=sys.stderr)
        return EXIT_FAILED
    print(f"trainingcycle.{GROUP}/{created['metadata']['name']} created in namespace {namespace}")
    return EXIT_OK


def run(args: argparse.Namespace) -> int:
    return {"create": create}[args.action](args)
