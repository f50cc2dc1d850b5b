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
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

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
    warning when the revision is not pinned to a commit. A download that fails (no network, the
    hub's offline mode with nothing cached, a wrong name) raises one :class:`DataError` that says
    what could not be fetched and how to pre-download it, instead of the hub client's traceback.
    """
    try:
        folder = snapshot_download(
            repo,
            repo_type=repo_type,
            revision=revision,
            allow_patterns=allow_patterns,
            ignore_patterns=ignore_patterns,
            cache_dir=cache_dir,
            endpoint=endpoint,
        )
    except (LocalEntryNotFoundError, HfHubHTTPError) as e:
        raise DataError(fetch_error(e, repo, repo_type, revision, config_key)) from None
    snap = Path(folder)
    resolved = snap.name
    if not COMMIT_RE.match(resolved):
        raise DataError(f"{snap}: could not tell the resolved commit of {repo}@{revision} from the snapshot path")
    if COMMIT_RE.match(revision) and resolved != revision:
        raise DataError(f"{repo}: asked for commit {revision} but the snapshot is {resolved}")
    warn_unpinned(revision, resolved, config_key)
    return snap, resolved


def fetch_error(error: Exception, repo: str, repo_type: str, revision: str, config_key: str) -> str:
    """One message for a failed download: what, why, and what to do about it."""
    what = f"cannot fetch {repo_type} {repo}@{revision}"
    if isinstance(error, LocalEntryNotFoundError):
        kind = "" if repo_type == "model" else f" --repo-type {repo_type}"
        return (
            f"{what}: the hub cannot be reached (no network, or HF_HUB_OFFLINE=1) and the local cache has no copy. "
            "The data and base-model rules download from the Hugging Face hub; to run where there is no network, "
            "download on a machine that has it into a cache both can read "
            f"(`HF_HOME=/shared/hf hf download {repo}{kind} --revision {revision}`), "
            "then run the workflow with HF_HOME=/shared/hf HF_HUB_OFFLINE=1"
        )
    if isinstance(error, GatedRepoError):
        why = "the repository is gated: accept its terms on huggingface.co, then log in with `hf auth login`"
    elif isinstance(error, RepositoryNotFoundError):
        why = f"no such repository, or it is private (check the repo next to {config_key})"
    elif isinstance(error, RevisionNotFoundError):
        why = f"the repository has no revision {revision!r} (check {config_key})"
    else:
        why = str(error).strip().splitlines()[0]
    return f"{what}: {why}"
