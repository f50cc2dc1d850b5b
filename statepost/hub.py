"""Hugging Face hub snapshots, for datasets and models alike: the download and its commit check.

A snapshot lives in a folder named after the commit the revision resolved to. That commit is
what makes a run reproducible, so it is checked here (a pinned commit must be what arrived) and
an unpinned revision is logged with the commit to pin.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from huggingface_hub import snapshot_download

from .io import DataError

log = logging.getLogger(__name__)

COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")


def warn_unpinned(revision: str | None, resolved: str, key: str) -> None:
    if not (revision and COMMIT_RE.match(revision)):
        log.warning(f"unpinned revision {revision!r} resolved to {resolved}; pin it by setting {key}: {resolved}")


def snapshot(
    repo: str,
    *,
    repo_type: str,
    revision: str,
    config_key: str,
    allow_patterns: list[str],
    ignore_patterns: list[str] | None = None,
    cache_dir=None,
    endpoint: str | None = None,
) -> tuple[Path, str]:
    """Download ``repo`` at ``revision`` (only files matching the patterns); return (folder, resolved commit).

    ``config_key`` is the config key of the revision (``base_model.revision``), named in the
    warning when the revision is not pinned to a commit.
    """
    snap = Path(
        snapshot_download(
            repo,
            repo_type=repo_type,
            revision=revision,
            allow_patterns=allow_patterns,
            ignore_patterns=ignore_patterns,
            cache_dir=cache_dir,
            endpoint=endpoint,
        )
    )
    resolved = snap.name
    if not COMMIT_RE.match(resolved):
        raise DataError(f"{snap}: could not tell the resolved commit of {repo}@{revision} from the snapshot path")
    if COMMIT_RE.match(revision) and resolved != revision:
        raise DataError(f"{repo}: asked for commit {revision} but the snapshot is {resolved}")
    warn_unpinned(revision, resolved, config_key)
    return snap, resolved
