"""Model sources: `hf://ORG/NAME[@REVISION]` and `pvc://CLAIM[/PATH]`.

Dependency-free on purpose: `pagoda fetch-model` runs in the engine image,
which does not carry the operator's dependencies.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any, Literal

#: The CRD's CEL rule and the fetcher check sources against this one pattern.
PATTERN = (
    r"^(hf://[A-Za-z0-9][-A-Za-z0-9_.]*/[-A-Za-z0-9_.]+(@[-A-Za-z0-9_./]+)?"
    r"|pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?(/[^/].*)?)$"
)


@dataclass(frozen=True)
class ModelSource:
    scheme: Literal["hf", "pvc"]
    #: hf: ORG/NAME.
    repo: str = ""
    revision: str | None = None
    #: pvc: the claim, and the directory inside it ("" for its root).
    claim: str = ""
    path: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_source(source: str) -> ModelSource:
    """Splits a model source; raises ValueError for one the CRD would refuse."""
    if not re.match(PATTERN, source):
        raise ValueError(f"malformed model source {source!r}: expected hf://ORG/NAME[@REVISION] or pvc://CLAIM[/PATH]")
    scheme, rest = source.split("://", 1)
    if scheme == "hf":
        repo, _, revision = rest.partition("@")
        return ModelSource(scheme="hf", repo=repo, revision=revision or None)
    claim, _, path = rest.partition("/")
    return ModelSource(scheme="pvc", claim=claim, path=path)
