"""`pagoda fetch-model SOURCE DEST`: the init container that fills the model cache.

Runs before every engine start, so it must be cheap when the model is
already there: a completion marker, written only after a download finished,
makes later starts a no-op.  An interrupted download leaves no marker and the
next start resumes it (huggingface_hub keeps partial files under DEST and
continues them).  Replicas starting together on a shared cache take a file
lock, so one downloads while the others wait and then find the marker.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

from .source import ModelSource, parse_source

#: The init container's command line, before SOURCE and DEST.
COMMAND = ("pagoda", "fetch-model")
#: Written into DEST once the model is complete.
MARKER = ".pagoda-complete.json"
LOCK = ".pagoda-fetch.lock"

log = logging.getLogger("pagoda.fetch")

#: Downloads `source` into the directory; may be interrupted at any point.
Downloader = Callable[[ModelSource, Path], None]


def hf_download(source: ModelSource, dest: Path) -> None:
    """Downloads a Hugging Face repository snapshot (HF_TOKEN from the environment)."""
    from huggingface_hub import snapshot_download

    snapshot_download(source.repo, revision=source.revision, local_dir=dest, token=os.environ.get("HF_TOKEN"))


def is_complete(source: ModelSource, dest: Path) -> bool:
    """Whether `dest` holds a finished download of exactly this source."""
    try:
        marker = json.loads((dest / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return marker == source.as_dict()


def fetch(source_text: str, dest: Path, download: Downloader = hf_download) -> bool:
    """Makes `dest` hold the model; returns whether anything was downloaded."""
    source = parse_source(source_text)
    if source.scheme == "pvc":
        log.info("%s is read in place from its claim; nothing to fetch", source_text)
        return False
    if is_complete(source, dest):
        log.info("%s already present in %s", source_text, dest)
        return False
    dest.mkdir(parents=True, exist_ok=True)
    with open(dest / LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another replica may be downloading
        if is_complete(source, dest):
            log.info("%s was fetched by another replica", source_text)
            return False
        log.info("fetching %s into %s", source_text, dest)
        download(source, dest)
        partial = dest / (MARKER + ".tmp")
        partial.write_text(json.dumps(source.as_dict()))
        partial.replace(dest / MARKER)  # atomic: the marker is whole or absent
    log.info("fetched %s", source_text)
    return True


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "fetch-model", help="download a model into a directory once (init container of the engine pods)")
    parser.add_argument("source", help="hf://ORG/NAME[@REVISION] or pvc://CLAIM[/PATH] (a no-op)")
    parser.add_argument("dest", type=Path, help="directory to fill")
    parser.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    fetch(args.source, args.dest)
    return 0
