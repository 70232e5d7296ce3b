"""`sigma0 clean FOLDER [--keep PATH ...]`: delete a finished cycle's folder, but for the paths a release still
points at (sigma0.retention decides both; this only does the deleting).

On a cluster the janitor (sigma0.kube.janitor) runs it in a Job that mounts the artifacts volume, as root with
only the capabilities that deleting other users' files takes (stage pods write as different users); locally,
`sigma0 run` calls `clean_folder` on its workdir. A folder that is already gone is nothing to do, so a rerun after
an interruption finishes the work. The folder itself goes too when nothing in it is kept.

Local folders are walked without following symbolic links: a link is removed as a link, never descended into, so
a link planted in a cycle's folder cannot turn the cleaner on files outside it. An fsspec URI (s3://...) is cleaned
through fsspec, with the same rule (object stores have no links).
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sigma0 import retention
from sigma0.remote import protocol_of


def clean_folder(folder: str, keep: Sequence[str] = ()) -> dict[str, Any]:
    """Delete everything in `folder` but the `keep` paths (and the folders on the way to them); a summary."""
    retention.check_folder(folder)
    retention.removal(folder, [], keep)  # every kept path lies inside the folder, or nothing happens
    if protocol_of(folder) is not None:
        removed = _clean_remote(folder, list(keep))
    else:
        removed = _clean_local(Path(folder), list(keep))
    return {"folder": folder, "removed": removed, "kept": sorted(keep)}


def _clean_local(folder: Path, keep: list[str]) -> int:
    if not folder.exists() and not folder.is_symlink():
        return 0
    if folder.is_symlink() or not folder.is_dir():
        raise retention.RetentionError(f"{folder}: not a folder (a link or a file); refusing to clean it")
    removed = 0
    delete, descend = retention.removal(str(folder), [str(p) for p in folder.iterdir()], keep)
    for entry in map(Path, delete):
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
        removed += 1
    for entry in map(Path, descend):
        if entry.is_symlink() or not entry.is_dir():  # a kept path "under" a link or a file: nothing real there
            entry.unlink()
            removed += 1
        else:
            removed += _clean_local(entry, [k for k in keep if retention.inside(k, str(entry))])
    if not keep:
        folder.rmdir()
    return removed


def _clean_remote(folder: str, keep: list[str]) -> int:
    import fsspec

    fs, root = fsspec.core.url_to_fs(folder)
    kept = [fsspec.core.url_to_fs(k)[1] for k in keep]
    if not fs.exists(root):
        return 0

    def walk(path: str, kept: list[str]) -> int:
        delete, descend = retention.removal(path, list(fs.ls(path, detail=False)), kept)
        for entry in delete:
            fs.rm(entry, recursive=True)
        return len(delete) + sum(walk(e, [k for k in kept if retention.inside(k, e)]) for e in descend)

    removed = walk(root, kept)
    if not kept and fs.exists(root):
        fs.rm(root, recursive=True)
    return removed
