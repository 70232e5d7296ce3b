"""Stages on an fsspec artifacts URI (sigma0.remote): remote arguments run on local copies, outputs go back, and the
store's credentials stay out of reach of the code a sandbox stage executes.

The S3 tests talk to a real S3 REST endpoint that checks signatures as S3 does (versitygw, tests/s3server.py) through
s3fs, with the endpoint and credentials in the environment, as a stage pod gets them from the chart's Secret.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import fsspec
import pytest
from s3server import SECRET_KEY, S3Server

from sigma0 import remote

BUCKET = "sigma0-artifacts"


# Pure: which arguments are remote and where their copies go ------------------------------------------------------


def test_remote_arguments_are_rewritten_to_local_copies_and_nothing_else_is(tmp_path: Path) -> None:
    argv = ["--source", "s3://bucket/corpus/tasks.jsonl", "--output", "/artifacts/out.jsonl", "--base-model",
            "tiny://llama", "--adapter", "candidate=s3://bucket/cycles/c/train/adapter/", "--suite", "gate=humaneval",
            "--adapter", "incumbent=/srv/adapters/x", "--timeout", "10", "--label", "candidate/gate"]
    planned = remote.plan_copies(argv, tmp_path)
    assert planned.argv == ("--source", str(tmp_path / "s3/bucket/corpus/tasks.jsonl"), "--output",
                            "/artifacts/out.jsonl", "--base-model", "tiny://llama", "--adapter",
                            f"candidate={tmp_path / 's3/bucket/cycles/c/train/adapter'}", "--suite", "gate=humaneval",
                            "--adapter", "incumbent=/srv/adapters/x", "--timeout", "10", "--label", "candidate/gate")
    assert [c.uri for c in planned.copies] == ["s3://bucket/corpus/tasks.jsonl", "s3://bucket/cycles/c/train/adapter"]


def test_a_uri_cannot_place_its_copy_outside_the_scratch_folder(tmp_path: Path) -> None:
    copy = remote.local_path("s3://bucket/../../../etc/passwd", tmp_path)
    assert copy == tmp_path / "s3/etc/passwd" and copy.is_relative_to(tmp_path)
    assert remote.protocol_of("tiny://llama") is None and remote.protocol_of("file:///x") is None
    assert remote.protocol_of("relative/path") is None and remote.protocol_of("S3://b/k") == "s3"


def test_pull_then_push_uploads_only_what_changed(tmp_path: Path) -> None:
    store = fsspec.filesystem("memory")
    store.pipe("/run1/inputs/a.jsonl", b'{"a": 1}\n')
    store.pipe("/run1/adapter/weights.bin", b"w")
    store.pipe("/run1/adapter/sub/config.json", b"{}")
    planned = remote.plan_copies(["--input", "memory://run1/inputs/a.jsonl", "--adapter", "memory://run1/adapter",
                                  "--output", "memory://run1/out/result.jsonl"], tmp_path)
    before = remote.pull(planned.copies)
    local_input, local_adapter, local_output = (c.local for c in planned.copies)
    assert local_input.read_bytes() == b'{"a": 1}\n'
    assert (local_adapter / "sub" / "config.json").read_bytes() == b"{}"
    assert not local_output.exists() and local_output.parent.is_dir()

    local_output.write_text("result\n")
    (local_adapter / "weights.bin").write_bytes(b"changed")
    uploaded = remote.push(planned.copies, before)
    assert sorted(uploaded) == ["memory://run1/adapter/weights.bin", "memory://run1/out/result.jsonl"]
    assert store.cat("/run1/out/result.jsonl") == b"result\n"
    assert store.cat("/run1/adapter/weights.bin") == b"changed"


def test_a_copys_journal_travels_with_it(tmp_path: Path) -> None:
    """score resumes its results, train reuses its adapter, only as their journals (sigma0.journal) vouch: on a
    store, each journal is pulled and pushed beside the file or folder it is about."""
    store = fsspec.filesystem("memory")
    store.pipe("/run2/results.jsonl", b'{"task_id": "T/0"}\n')
    store.pipe("/run2/results.jsonl.journal", b'{"bytes": 19}')
    store.pipe("/run2/adapter/w.bin", b"w")
    planned = remote.plan_copies(["--output", "memory://run2/results.jsonl", "--output-dir", "memory://run2/adapter",
                                  "--report", "memory://run2/new.json"], tmp_path)
    before = remote.pull(planned.copies)
    results, adapter, report = (c.local for c in planned.copies)
    assert results.with_name("results.jsonl.journal").read_bytes() == b'{"bytes": 19}'
    results.with_name("results.jsonl.journal").write_bytes(b'{"bytes": 38}')
    adapter.with_name("adapter.journal").write_bytes(b"{}")
    report.with_name("new.json.journal").write_bytes(b"{}")
    uploaded = remote.push(planned.copies, before)
    assert sorted(uploaded) == ["memory://run2/adapter.journal", "memory://run2/new.json.journal",
                                "memory://run2/results.jsonl.journal"]
    assert store.cat("/run2/results.jsonl.journal") == b'{"bytes": 38}'


# Against S3 --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """An S3 endpoint that checks every signature, presigned URLs' included, as S3 does."""
    server = S3Server(tmp_path_factory.mktemp("s3") / "versitygw.log").start()
    try:
        server.create_bucket(BUCKET)
        yield server
    finally:
        server.stop()


ROOT = Path(__file__).resolve().parents[1]
GOOD = {"fn": "add", "instruction": "Add two numbers.", "code": "def add(a, b):\n    return a + b\n",
        "asserts": ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"]}
# Passes only if it finds no trace of the store's secret in any process's environment or in its own.
SNOOP = {"fn": "snoop", "instruction": "Return how many processes expose the secret.",
         "code": ("import os\n\ndef snoop(tag):\n    found = 0\n    for pid in os.listdir('/proc'):\n"
                  "        if not pid.isdigit():\n            continue\n        try:\n"
                  "            with open(f'/proc/{pid}/environ', 'rb') as f:\n"
                  "                found += b'sigma0-test-secret' in f.read()\n"
                  "        except OSError:\n            pass\n"
                  "    found += sum('sigma0-test-secret' in v for v in os.environ.values())\n"
                  "    return f'{tag}: {found}'\n"),
         "asserts": ["assert snoop('exposed') == 'exposed: 0'"]}  # a stand-in cannot say that (no vacuous assert)


def _stage(name: str, args: list[str], env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """`sigma0 stage NAME` as a pod runs it: root without any capability (setpriv), the store's credentials in
    the environment, a termination-message file."""
    command = ["setpriv", "--bounding-set", "-all", "--inh-caps", "-all", "--ambient-caps", "-all", "--",
               sys.executable, "-m", "sigma0", "stage", name, *args]
    environ = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "SIGMA0_TERMINATION_LOG":
               str(tmp_path / f"{name}.termination"), **env}
    return subprocess.run(command, capture_output=True, text=True, env=environ, cwd=ROOT, timeout=300, check=False)


def _verify_args(source: str, out: str) -> list[str]:
    return ["--input", source, "--output", f"{out}/verified.jsonl", "--report", f"{out}/report.json",
            "--sandbox", "process", "--timeout", "10", "--workers", "1"]


@pytest.mark.slow
def test_harvest_and_verify_read_and_write_s3_and_the_secret_stays_out_of_reach(s3: S3Server, tmp_path: Path) -> None:
    store = s3.filesystem()
    store.pipe(f"{BUCKET}/corpus/tasks.jsonl", "".join(json.dumps(r) + "\n" for r in (GOOD, SNOOP)).encode())
    cycle = f"s3://{BUCKET}/cycles/c1"
    harvest = _stage("harvest", ["--source", f"s3://{BUCKET}/corpus/tasks.jsonl", "--output",
                                 f"{cycle}/harvest/candidates.jsonl", "--report", f"{cycle}/harvest/report.json"],
                     s3.environment(), tmp_path)
    assert harvest.returncode == 0, harvest.stderr
    assert store.exists(f"{BUCKET}/cycles/c1/harvest/candidates.jsonl")

    verify = _stage("verify", _verify_args(f"{cycle}/harvest/candidates.jsonl", f"{cycle}/verify"),
                    s3.environment(), tmp_path)
    assert verify.returncode == 0, verify.stderr
    report = json.loads(store.cat(f"{BUCKET}/cycles/c1/verify/report.json"))
    verified = [json.loads(line) for line in store.cat(f"{BUCKET}/cycles/c1/verify/verified.jsonl").splitlines()]
    assert sorted(row["fn"] for row in verified) == ["add", "snoop"], report
    termination = (tmp_path / "verify.termination").read_text()
    for text in (harvest.stdout, harvest.stderr, verify.stdout, verify.stderr, termination,
                 store.cat(f"{BUCKET}/cycles/c1/verify/report.json").decode()):
        assert SECRET_KEY not in text
    assert not list(tmp_path.glob("sigma0-remote-*")), "the local copies are removed"


@pytest.mark.slow
def test_without_the_hold_the_snooping_candidate_does_find_the_secret(tmp_path: Path) -> None:
    """The control for the test above: the same stage on local files, with the secret in its environment but no
    remote argument (so nothing takes it out), lets the candidate read it, and the candidate fails."""
    source = tmp_path / "tasks.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in (GOOD, SNOOP)))
    env = {"AWS_SECRET_ACCESS_KEY": SECRET_KEY}
    harvest = _stage("harvest", ["--source", str(source), "--output", str(tmp_path / "candidates.jsonl"),
                                 "--report", str(tmp_path / "harvest.json")], env, tmp_path)
    assert harvest.returncode == 0, harvest.stderr
    verify = _stage("verify", _verify_args(str(tmp_path / "candidates.jsonl"), str(tmp_path)), env, tmp_path)
    assert verify.returncode == 0, verify.stderr
    verified = [json.loads(line)["fn"] for line in (tmp_path / "verified.jsonl").read_text().splitlines()]
    assert verified == ["add"]


def test_an_unreachable_store_is_a_clear_failure(tmp_path: Path) -> None:
    env = {"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y", "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
           "AWS_DEFAULT_REGION": "eu-west-1", "AWS_MAX_ATTEMPTS": "1"}
    done = _stage("harvest", ["--source", f"s3://{BUCKET}/corpus/tasks.jsonl", "--output",
                              f"s3://{BUCKET}/c/candidates.jsonl", "--report", f"s3://{BUCKET}/c/report.json"],
                  env, tmp_path)
    assert done.returncode == 1
    summary = json.loads((tmp_path / "harvest.termination").read_text())
    assert summary["error"].startswith("RemoteError: cannot read s3://sigma0-artifacts/corpus/tasks.jsonl")


# Sandbox steps on a cluster: no credentials, presigned URLs from a trusted step (sigma0.stages.presign) ----------


def _presign(s3: S3Server, writes: str, command: list[str], map_uri: str, tmp_path: Path,
             expires: int = 600) -> subprocess.CompletedProcess[str]:
    return _stage("presign", ["--map", map_uri, "--writes", writes, "--expires-in", str(expires), "--", *command],
                  s3.environment(), tmp_path)


def _no_credentials(s3: S3Server) -> dict[str, str]:
    """What a sandbox pod has: the region (s3fs would need it too), nothing to sign with."""
    return {"AWS_DEFAULT_REGION": s3.environment()["AWS_DEFAULT_REGION"]}


@pytest.mark.slow
def test_a_sandbox_step_with_no_credentials_reads_its_inputs_and_writes_its_outputs_through_presigned_urls(
        s3: S3Server, tmp_path: Path) -> None:
    store = s3.filesystem()
    cycle = f"s3://{BUCKET}/cycles/presigned"
    store.pipe(f"{BUCKET}/cycles/presigned/harvest/candidates.jsonl",
               "".join(json.dumps({**r, "source": "t"}) + "\n" for r in (GOOD, SNOOP)).encode())
    command = ["verify", *_verify_args(f"{cycle}/harvest/candidates.jsonl", f"{cycle}/verify")]
    presign = _presign(s3, f"{cycle}/verify", command, f"{cycle}/presign/verify.json", tmp_path)
    assert presign.returncode == 0, presign.stderr
    summary = json.loads((tmp_path / "presign.termination").read_text())
    assert summary["writable"] == [f"{cycle}/verify/report.json", f"{cycle}/verify/verified.jsonl"]
    presigned = json.loads(store.cat(f"{BUCKET}/cycles/presigned/presign/verify.json"))
    entry = presigned["copies"][f"{cycle}/harvest/candidates.jsonl"]
    assert entry["put"] is None and entry["journal_put"] is None, "an input gets no upload URL"
    assert set(entry["get"]) == {"."}
    assert SECRET_KEY not in json.dumps(presigned) + presign.stdout + json.dumps(summary)

    verify = _stage("verify", [*command[1:], "--presigned", summary["url"]], _no_credentials(s3), tmp_path)
    assert verify.returncode == 0, verify.stderr
    written = store.cat(f"{BUCKET}/cycles/presigned/verify/verified.jsonl")
    verified = [json.loads(line)["fn"] for line in written.splitlines()]
    assert sorted(verified) == ["add", "snoop"], (written, verify.stderr)
    assert json.loads(store.cat(f"{BUCKET}/cycles/presigned/verify/report.json"))["passed"] == 2


@pytest.mark.slow
def test_a_sandbox_step_cannot_write_anything_but_its_own_outputs(s3: S3Server, tmp_path: Path) -> None:
    """The attacks of a judge taken over by a candidate, with the map in hand: run another command line (here
    with its report aimed at the decision file), change one of its inputs, or edit its URLs (another key, another
    method, no signature). None of them writes anything: the stage fails, S3 answers 403, the store is unchanged."""
    store = s3.filesystem()
    cycle = f"s3://{BUCKET}/cycles/attacked"
    candidates = f"{BUCKET}/cycles/attacked/harvest/candidates.jsonl"
    store.pipe(candidates, (json.dumps({**GOOD, "source": "t"}) + "\n").encode())
    store.pipe(f"{BUCKET}/cycles/attacked/decide/decision.json", b'{"promote": false}')
    command = ["verify", *_verify_args(f"{cycle}/harvest/candidates.jsonl", f"{cycle}/verify")]
    presign = _presign(s3, f"{cycle}/verify", command, f"{cycle}/presign/verify.json", tmp_path)
    assert presign.returncode == 0, presign.stderr
    url = json.loads((tmp_path / "presign.termination").read_text())["url"]

    elsewhere = [*command[1:]]
    elsewhere[elsewhere.index("--report") + 1] = f"{cycle}/decide/decision.json"
    done = _stage("verify", [*elsewhere, "--presigned", url], _no_credentials(s3), tmp_path)
    assert done.returncode == 1
    assert "has no URLs for s3://sigma0-artifacts/cycles/attacked/decide/decision.json" in done.stderr
    assert store.cat(f"{BUCKET}/cycles/attacked/decide/decision.json") == b'{"promote": false}'

    # The same command line, but the judge also rewrites its input (a hook standing in for a judge taken over)
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import sigma0.stages.verify as stage\n"
        "honest = stage.run\n"
        "def run(args):\n"
        "    summary = honest(args)\n"
        "    with open(args.input, 'a') as f:\n"
        "        f.write('{}\\n')\n"
        "    return summary\n"
        "stage.run = run\n")
    before = store.cat(candidates)
    done = _stage("verify", [*command[1:], "--presigned", url], {**_no_credentials(s3), "PYTHONPATH": str(hook)},
                  tmp_path)
    assert done.returncode == 1, done.stderr
    assert f"cannot write {cycle}/harvest/candidates.jsonl: this step may write only its own outputs" in done.stderr
    assert store.cat(candidates) == before

    # The URLs themselves, edited: the store checks each signature against the key and the method it was made for
    with urllib.request.urlopen(url, timeout=30) as response:
        copies = json.loads(response.read())["copies"]
    put = copies[f"{cycle}/verify/verified.jsonl"]["put"]
    get = copies[f"{cycle}/harvest/candidates.jsonl"]["get"]["."]
    attempts = {
        "the decision instead of its output": (put.replace("/verify/verified.jsonl?", "/decide/decision.json?"), "PUT"),
        "its input instead of its output": (put.replace("/verify/verified.jsonl?", "/harvest/candidates.jsonl?"),
                                            "PUT"),
        "its input's GET URL, to PUT": (get, "PUT"),
        "its input's GET URL, to DELETE": (get, "DELETE"),
        "its output's PUT URL, to DELETE": (put, "DELETE"),
        "the decision without a signature": (f"{s3.endpoint}/{BUCKET}/cycles/attacked/decide/decision.json", "PUT"),
        "the bucket's listing": (f"{s3.endpoint}/{BUCKET}?list-type=2", "GET"),
    }
    for what, (target, method) in attempts.items():
        request = urllib.request.Request(target, data=b'{"promote": true}' if method == "PUT" else None,
                                         method=method, headers={"Content-Type": "application/octet-stream"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=30)
        assert refused.value.code in (400, 403), what
    assert store.cat(f"{BUCKET}/cycles/attacked/decide/decision.json") == b'{"promote": false}'
    assert store.cat(candidates) == before


def test_presign_refuses_a_store_it_cannot_sign_for_instead_of_handing_out_credentials(tmp_path: Path) -> None:
    done = _stage("presign", ["--map", "memory://m/presign.json", "--writes", "memory://m/verify", "--expires-in",
                              "60", "--", "verify", "--input", "memory://m/c.jsonl"], {}, tmp_path)
    assert done.returncode == 2, done.stderr
    assert "only an s3:// store can hand a stage presigned URLs" in json.loads(
        (tmp_path / "presign.termination").read_text())["error"]
    too_long = _stage("presign", ["--map", "s3://b/m.json", "--writes", "", "--expires-in", str(8 * 24 * 3600),
                                  "--", "verify"], {}, tmp_path)
    assert too_long.returncode == 2 and "presigned URLs last 1 to 604800 s" in too_long.stderr


def test_a_sandbox_step_without_its_map_or_with_an_expired_one_fails_clearly(tmp_path: Path) -> None:
    done = _stage("verify", ["--input", "s3://b/c.jsonl", "--output", "s3://b/v/verified.jsonl", "--report",
                             "s3://b/v/report.json", "--presigned"], {}, tmp_path)
    assert done.returncode == 2 and "--presigned needs the URL" in done.stderr
    done = _stage("verify", ["--input", "s3://b/c.jsonl", "--output", "s3://b/v/verified.jsonl", "--report",
                             "s3://b/v/report.json", "--presigned", "http://127.0.0.1:9/map?X-Amz-Signature=s"],
                  {}, tmp_path)
    assert done.returncode == 1
    error = json.loads((tmp_path / "verify.termination").read_text())["error"]
    assert error.startswith("RemoteError: cannot read the presigned-URL map")
    assert "X-Amz-Signature" not in error, "a URL is a capability: errors never print it"
