"""The `sigma0` command.

    sigma0 validate MANIFEST                      check TrainingCycles / AdapterReleases against the CRDs (exit 2)
    sigma0 run MANIFEST [--workdir DIR]           run the whole cycle on this machine, resumably
    sigma0 stage NAME ...                         one stage command (what a local step or a Job's pod runs)
    sigma0 release show|history|rollback NAME     the local release store (--cluster: the AdapterRelease)
    sigma0 digest FOLDER                          an adapter folder's digest, as spec.candidate.digest names it
    sigma0 clean FOLDER [--keep PATH ...]         delete a finished cycle's folder but the adapters kept (janitor)
    sigma0 operator [--namespace NS ...]          the Kubernetes operator (kopf): TrainingCycles as Jobs
    sigma0 cycle create MANIFEST                  create a TrainingCycle in a cluster (what the nightly CronJob runs)
    sigma0 check --namespace NS ...               check an installed sigma0: CRDs, operator health, RBAC (helm test)
    sigma0 dashboard [--workdir DIR] [--port N]   the read-only page of a local workdir: the pass@1 curve, decisions
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sigma0 import __version__, evidence
from sigma0.stages import STAGES, StageInputError, load_stage
from sigma0.termination import write_summary

if TYPE_CHECKING:
    from rich.console import Console

    from sigma0.spec import TrainingCycle

# `sigma0 stage` (every step of every cycle, and the score stage's fixed cost in BENCHMARKS 2a) imports only what a
# stage needs: the schema (pydantic, jsonschema), rich, yaml and the object store's client (fsspec) are imported by
# the commands that use them.

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


def stage_parser(name: str, module: Any) -> argparse.ArgumentParser:
    """The command line of `sigma0 stage NAME`: the stage's own arguments and those every stage takes."""
    parser = argparse.ArgumentParser(prog=f"sigma0 stage {name}", description=(module.__doc__ or "").strip(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    module.add_arguments(parser)
    parser.add_argument("--expect", action="append", default=[], metavar="DIGEST=PATH",
                        help="an input's digest as the stage that wrote it recorded (sigma0.evidence); checked "
                        "before the stage reads anything (repeatable)")
    return parser


def _presigned_url(argv: Sequence[str]) -> tuple[list[str], str | None]:
    """The command line without `--presigned URL` (a sandbox step's map of presigned URLs: sigma0.remote), and the
    URL. Taken out before anything else reads the command line, so that the URL is never taken for an input."""
    rest, url = list(argv), None
    while "--presigned" in rest:
        index = rest.index("--presigned")
        if index + 1 >= len(rest) or not rest[index + 1]:
            raise StageInputError("--presigned needs the URL of a map of presigned URLs (sigma0 stage presign)")
        url = rest[index + 1]
        del rest[index:index + 2]
    return rest, url


def _stage_command(name: str, argv: Sequence[str]) -> int:
    """Run one stage: its summary goes to stdout and to the termination-message file. Remote arguments (fsspec
    URIs, sigma0.remote) are run on local copies: downloaded first, uploaded after."""
    try:
        module = load_stage(name)
    except StageInputError as error:
        print(f"sigma0 stage: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    parser = stage_parser(name, module)
    try:
        argv, presigned = _presigned_url(argv)
    except StageInputError as error:
        print(f"sigma0 stage: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    given = parser.parse_args(argv)  # usage errors before any download
    with tempfile.TemporaryDirectory(prefix="sigma0-remote-") as scratch:
        try:
            names = module.outputs(given)  # as the plan named them: the cycle's record holds these
            if getattr(module, "HANDLES_STORE", False) or (presigned is None and not any("://" in a for a in argv)):
                copies: contextlib.AbstractContextManager[Sequence[str]] = contextlib.nullcontext(tuple(argv))
            else:
                from sigma0 import remote

                copies = (remote.staged(argv, Path(scratch)) if presigned is None
                          else remote.presigned_staged(argv, Path(scratch), presigned))
            with copies as local_argv:
                args = parser.parse_args(local_argv)
                evidence.check(args.expect)
                summary = module.run(args)
                summary[evidence.OUTPUTS] = evidence.record(list(zip(names, module.outputs(args), strict=True)))
        except evidence.EvidenceTampered as error:
            write_summary({"stage": name, "error": str(error), "kind": error.reason})
            print(f"sigma0 stage {name}: {error}", file=sys.stderr)
            return EXIT_BAD_INPUT
        except StageInputError as error:
            write_summary({"stage": name, "error": str(error), "kind": error.kind})
            print(f"sigma0 stage {name}: {error}", file=sys.stderr)
            return EXIT_BAD_INPUT
        except Exception as error:  # the stage failed: say why in the termination message, keep the traceback in logs
            traceback.print_exc()
            write_summary({"stage": name, "error": f"{type(error).__name__}: {error}"})
            return EXIT_FAILED
    write_summary({"stage": name, **summary})
    print(json.dumps(summary, indent=2, sort_keys=True, default=str))
    return EXIT_OK


def _load(manifest: str, console: Console) -> TrainingCycle | None:
    """The validated manifest, or None after printing every problem with its field."""
    from sigma0.spec import ManifestError, load_manifest

    try:
        return load_manifest(manifest)
    except ManifestError as error:
        console.print(f"[red]{error}[/]", highlight=False)
        return None


def _validate(args: argparse.Namespace, console: Console) -> int:
    from sigma0.spec import ManifestError, validate_file

    try:
        checked = validate_file(args.manifest)
    except ManifestError as error:
        console.print(f"[red]{error}[/]", highlight=False)
        return EXIT_BAD_INPUT
    for item in checked:
        console.print(f"[green]valid[/]: {item.describe()}", highlight=False)
    return EXIT_OK


def _run(args: argparse.Namespace, console: Console) -> int:
    from sigma0.executors.local import CycleLocked, LocalExecutor, choose_cycle, sweep
    from sigma0.local_release import LocalReleases
    from sigma0.retention import Limits, RetentionError
    from sigma0.ui import RichReporter, result_table

    cycle = _load(args.manifest, console)
    if cycle is None:
        return EXIT_BAD_INPUT
    try:
        limits = Limits(successful=args.successful_cycles_history_limit, failed=args.failed_cycles_history_limit)
    except RetentionError as error:
        console.print(f"[red]{error}[/]", highlight=False)
        return EXIT_BAD_INPUT
    workdir = Path(args.workdir)
    try:
        run = choose_cycle(cycle, workdir, args.name)
    except ValueError as error:
        console.print(f"[red]{error}[/]", highlight=False)
        return EXIT_BAD_INPUT
    if run.finished is not None:
        console.print(f"cycle {run.name} already finished ({run.finished['phase']}); its result:")
        console.print(result_table(run.name, run.state, run.finished))
        return EXIT_OK if run.finished["phase"] == "Succeeded" else EXIT_FAILED
    artifacts = cycle.spec.artifacts
    if artifacts.uri or artifacts.path or artifacts.pvc:
        console.print(f"note: spec.artifacts is where a cluster's stage pods keep files; sigma0 run keeps them in "
                      f"{workdir}", highlight=False)
    verb = "resuming" if run.state.steps else "starting"
    console.print(f"{verb} TrainingCycle [bold]{run.name}[/] for release [bold]{cycle.spec.release}[/] "
                  f"in {run.cycle_dir}", highlight=False)
    releases = LocalReleases(workdir / "releases")
    try:
        with RichReporter(console) as reporter:
            executor = LocalExecutor(cycle, workdir, releases, reporter, Path(args.manifest).resolve().parent)
            run = executor.run(run)
    except CycleLocked as error:
        console.print(f"[red]{error}[/]")
        return EXIT_FAILED
    assert run.finished is not None
    console.print(result_table(run.name, run.state, run.finished))
    console.print(f"logs and artifacts: {run.cycle_dir}", highlight=False)
    for gone in sweep(workdir, cycle.spec.release, limits, releases):
        kept = f" (kept {', '.join(gone.keep)})" if gone.keep else ""
        console.print(f"removed finished cycle {gone.cycle.name}: {gone.message}{kept}", highlight=False)
    return EXIT_OK if run.finished["phase"] == "Succeeded" else EXIT_FAILED


def _release(args: argparse.Namespace, console: Console) -> int:
    """`sigma0 release show|history|rollback NAME`: the local release under --workdir, or with --cluster the
    AdapterRelease NAME in --namespace; both through the one `Releases` interface (sigma0.release_rules)."""
    from sigma0.release_rules import ReleaseError, Releases

    releases: Releases
    if args.cluster:
        from sigma0.kube.releases import ClusterReleases

        releases = ClusterReleases(_custom_api(args.kubeconfig), args.namespace)
        label = f"AdapterRelease {args.namespace}/{args.name}"
    else:
        from sigma0.local_release import LocalReleases

        releases = LocalReleases(Path(args.workdir) / "releases")
        label = f"release {args.name}"
    try:
        if args.action == "rollback":
            pointer = releases.rollback(args.name, reason=args.reason)
            console.print(f"{label} now points at {pointer.digest} (revision {pointer.revision})", highlight=False)
            return EXIT_OK
        current = releases.current(args.name)
        pointers = [] if current is None else [current, *(releases.history(args.name) if args.action == "history"
                                                          else [])]
    except ReleaseError as error:
        console.print(f"[red]{error}[/]", highlight=False)
        return EXIT_BAD_INPUT
    if args.output != "text":
        import yaml

        # kubectl style: `show` is the current pointer (null when there is none), `history` the list, newest first.
        data: Any = [_pointer_fields(pointer) for pointer in pointers]
        if args.action == "show":
            data = data[0] if data else None
        text = json.dumps(data, indent=2) if args.output == "json" else yaml.safe_dump(data, sort_keys=False)
        sys.stdout.write(text.rstrip("\n") + "\n")
        return EXIT_OK
    if current is None:
        console.print(f"{label} has no adapter yet", highlight=False)
        return EXIT_OK
    for pointer in pointers:
        figure = f"{pointer.pass_at_1:.3f}" if pointer.pass_at_1 is not None else "-"
        console.print(f"rev {pointer.revision}  {pointer.digest}  pass@1 {figure}  cycle {pointer.cycle}  "
                      f"{pointer.promoted_at}  {pointer.uri}", highlight=False)
    return EXIT_OK


def _digest(args: argparse.Namespace, console: Console) -> int:
    """`sigma0 digest FOLDER`: the content digest a cycle importing this adapter checks (sigma0.io.tree_digest)."""
    from sigma0.io import path_digest

    path = Path(args.path)
    if not path.exists():
        console.print(f"[red]{path}: no such file or folder[/]", highlight=False)
        return EXIT_BAD_INPUT
    print(path_digest(path))
    return EXIT_OK


def _clean(args: argparse.Namespace, console: Console) -> int:
    """`sigma0 clean FOLDER --keep PATH...`: what the janitor's cleanup Job runs (sigma0.clean). Its summary goes
    to stdout and to the termination-message file, as a stage's does."""
    from sigma0.clean import clean_folder
    from sigma0.retention import RetentionError

    try:
        summary = clean_folder(args.folder, args.keep)
    except RetentionError as error:
        print(f"sigma0 clean: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    write_summary(summary)
    print(json.dumps(summary, sort_keys=True))
    return EXIT_OK


def _pointer_fields(pointer: Any) -> dict[str, Any]:
    """What both stores' pointers say (sigma0.release_rules.Pointer), under the same keys for either."""
    return {"revision": pointer.revision, "digest": pointer.digest, "passAt1": pointer.pass_at_1,
            "cycle": pointer.cycle, "promotedAt": pointer.promoted_at, "uri": pointer.uri,
            "rolledBack": pointer.rolled_back}


def _custom_api(kubeconfig: str | None) -> Any:
    from kubernetes import client

    from sigma0.kube.operator import api_client

    return client.CustomObjectsApi(api_client(kubeconfig))


def _operator(args: argparse.Namespace, console: Console) -> int:
    from sigma0.kube.operator import run

    return run(args)


def _cycle(args: argparse.Namespace, console: Console) -> int:
    from sigma0.kube.cronjob import run

    return run(args)


def _check(args: argparse.Namespace, console: Console) -> int:
    from sigma0.kube.installcheck import run

    return run(args)


def _dashboard(args: argparse.Namespace, console: Console) -> int:
    from sigma0.dashboard.server import make_server
    from sigma0.dashboard.sources import LocalSource

    workdir = Path(args.workdir)
    if not workdir.is_dir():
        console.print(f"[red]--workdir {workdir} is not a folder; run a cycle first (sigma0 run MANIFEST "
                      f"--workdir {workdir})[/]", highlight=False)
        return EXIT_BAD_INPUT
    try:
        server = make_server(LocalSource(workdir), args.host, args.port)
    except OSError as error:
        console.print(f"[red]cannot listen on {args.host}:{args.port}: {error.strerror}; pick another --port[/]",
                      highlight=False)
        return EXIT_BAD_INPUT
    host, port = server.server_address[:2]
    console.print(f"sigma0 dashboard of {workdir.resolve()} on http://{host}:{port}/ (read-only; Ctrl-C stops it)",
                  highlight=False, soft_wrap=True)
    sys.stdout.flush()  # the address, at once, for whoever started this with a pipe (tests, scripts)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sigma0", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"sigma0 {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    validate = commands.add_parser("validate", help="check TrainingCycle / AdapterRelease manifests against the CRDs; "
                                   "a later document naming the same object is checked as an edit of it")
    validate.add_argument("manifest")

    run = commands.add_parser("run", help="run a TrainingCycle end to end on this machine")
    run.add_argument("manifest")
    run.add_argument("--workdir", default=".sigma0", help="where cycles, releases and the leaderboard live")
    run.add_argument("--name", help="the cycle's name (default: the manifest's name, or a new one from generateName)")
    run.add_argument("--successful-cycles-history-limit", type=int, metavar="N",
                     help="after the run, keep only the newest N succeeded cycles of the release in the workdir "
                     "(an AdapterRelease's spec.successfulCyclesHistoryLimit on a cluster); default: keep all")
    run.add_argument("--failed-cycles-history-limit", type=int, metavar="N",
                     help="the same for failed cycles (spec.failedCyclesHistoryLimit); default: keep all")

    stage = commands.add_parser("stage", help="run one stage command", add_help=False)
    stage.add_argument("stage_name", metavar="NAME", choices=list(STAGES), help=", ".join(STAGES))

    release = commands.add_parser("release", help="show, list or roll back a local release")
    release.add_argument("action", choices=["show", "history", "rollback"])
    release.add_argument("name")
    release.add_argument("--workdir", default=".sigma0")
    release.add_argument("--reason", default="manual rollback")
    release.add_argument("-o", "--output", choices=["text", "json", "yaml"], default="text",
                         help="show and history: print the pointers as JSON or YAML (kubectl's -o)")
    release.add_argument("--cluster", action="store_true", help="act on the AdapterRelease in a cluster instead")
    release.add_argument("--namespace", default="default", help="with --cluster: the release's namespace")
    release.add_argument("--kubeconfig", help="with --cluster: a kubeconfig (default: in-cluster, $KUBECONFIG)")

    digest = commands.add_parser("digest", help="print an adapter folder's digest (for spec.candidate.digest)")
    digest.add_argument("path")

    clean = commands.add_parser("clean", help="delete a finished cycle's folder, all but the paths kept (what the "
                                "janitor's cleanup Job runs)")
    clean.add_argument("folder", help="the cycle's folder (path or fsspec URI), under a 'cycles' folder")
    clean.add_argument("--keep", action="append", default=[], metavar="PATH",
                       help="a path inside the folder that a release still points at (repeatable)")

    dashboard = commands.add_parser("dashboard", help="serve the read-only dashboard of a local workdir")
    dashboard.add_argument("--workdir", default=".sigma0", help="the workdir `sigma0 run` used")
    dashboard.add_argument("--port", type=int, default=8765, help="port to listen on (0: any free port)")
    dashboard.add_argument("--host", default="127.0.0.1",
                           help="address to listen on (default: this machine only; the page is read-only)")

    from sigma0.kube.operator import add_arguments as add_operator_arguments

    add_operator_arguments(commands.add_parser("operator", help="run the Kubernetes operator (kopf)"))

    from sigma0.kube.cronjob import add_arguments as add_cycle_arguments

    add_cycle_arguments(commands.add_parser("cycle", help="create a TrainingCycle in a cluster from a manifest"))

    from sigma0.kube.installcheck import add_arguments as add_check_arguments

    add_check_arguments(commands.add_parser("check", help="check an installed sigma0: CRDs, operator health, RBAC "
                                            "(the chart's helm test)"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) >= 2 and argv[0] == "stage":
        return _stage_command(argv[1], argv[2:])
    from rich.console import Console

    args = build_parser().parse_args(argv)
    console = Console(stderr=False)
    handlers = {"validate": _validate, "run": _run, "release": _release, "operator": _operator, "cycle": _cycle,
                "digest": _digest, "clean": _clean, "dashboard": _dashboard, "check": _check}
    return handlers[args.command](args, console)
