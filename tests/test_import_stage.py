"""`sigma0 stage import`: an adapter trained elsewhere enters a cycle only if it is the one the manifest names."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import fsspec
import pytest

from sigma0 import cli
from sigma0.io import tree_digest


@pytest.fixture
def stage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """`sigma0 stage import ARGS...` in this process: (exit code, termination-message summary)."""
    termination = tmp_path / "termination-log"
    monkeypatch.setenv("SIGMA0_TERMINATION_LOG", str(termination))

    def run(*argv: str | Path) -> tuple[int, dict[str, Any]]:
        termination.unlink(missing_ok=True)
        code = cli.main(["stage", "import", *map(str, argv)])
        return code, json.loads(termination.read_text()) if termination.exists() else {}

    return run


def adapter(folder: Path, rank: int = 8) -> Path:
    """A folder shaped like a peft LoRA adapter (the import step does not load weights)."""
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": rank}))
    (folder / "adapter_model.safetensors").write_bytes(b"weights" * rank)
    return folder


def argv(tmp_path: Path, source: Path | str, digest: str) -> list[str | Path]:
    return [
        "--source",
        source,
        "--digest",
        digest,
        "--output-dir",
        tmp_path / "cycle" / "import" / "adapter",
        "--report",
        tmp_path / "cycle" / "import" / "report.json",
    ]


def test_the_named_adapter_is_copied_and_its_digest_recorded(stage, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    source = adapter(tmp_path / "colleague")
    digest = tree_digest(source)
    code, summary = stage(*argv(tmp_path, source, digest))
    assert code == 0, summary
    copy = tmp_path / "cycle" / "import" / "adapter"
    assert summary["adapter_digest"] == digest == tree_digest(copy)
    assert summary["outputs"]["digests"]["adapter"] == digest  # the record later steps are held to
    again = stage(*argv(tmp_path, source, digest))
    assert again[0] == 0 and again[1]["reused"] is True


def test_another_adapter_than_the_one_named_is_refused_and_nothing_is_written(  # type: ignore[no-untyped-def]
    stage, tmp_path: Path
) -> None:
    named = tree_digest(adapter(tmp_path / "named"))
    other = adapter(tmp_path / "other", rank=16)
    code, summary = stage(*argv(tmp_path, other, named))
    assert code == 2 and summary["kind"] == "digest_mismatch"
    assert f"but spec.candidate.digest is {named}" in summary["error"]
    assert not (tmp_path / "cycle" / "import" / "adapter").exists()
    # a folder already in place that is not the named adapter is never taken for it
    (tmp_path / "cycle" / "import" / "adapter").mkdir(parents=True)
    (tmp_path / "cycle" / "import" / "adapter" / "planted").write_text("x")
    code, summary = stage(*argv(tmp_path, tmp_path / "named", named))
    assert code == 2 and "adapters are immutable" in summary["error"]


@pytest.mark.parametrize("broken", ["no-config", "not-lora", "no-weights"])
def test_a_folder_that_is_not_a_lora_adapter_is_refused(stage, tmp_path: Path, broken: str) -> None:  # type: ignore[no-untyped-def]
    source = adapter(tmp_path / "source")
    if broken == "no-config":
        (source / "adapter_config.json").unlink()
    elif broken == "not-lora":
        (source / "adapter_config.json").write_text(json.dumps({"peft_type": "PROMPT_TUNING"}))
    else:
        (source / "adapter_model.safetensors").unlink()
    code, summary = stage(*argv(tmp_path, source, tree_digest(source)))
    assert code == 2 and summary["kind"] == "input", summary
    assert not (tmp_path / "cycle" / "import" / "adapter").exists()


def test_an_adapter_named_by_an_fsspec_uri_is_fetched_and_checked(stage, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    local = adapter(tmp_path / "local")
    memory = fsspec.filesystem("memory")
    for path in local.iterdir():
        memory.pipe(f"memory://elsewhere/adapters/colleague/{path.name}", path.read_bytes())
    code, summary = stage(*argv(tmp_path, "memory://elsewhere/adapters/colleague", tree_digest(local)))
    assert code == 0, summary
    assert tree_digest(tmp_path / "cycle" / "import" / "adapter") == tree_digest(local)
    wrong = stage(*argv(tmp_path / "b", "memory://elsewhere/adapters/colleague", "sha256:" + "0" * 64))
    assert wrong[0] == 2 and wrong[1]["kind"] == "digest_mismatch"
