"""Naming an image: what a user typed (sha256, prefix, stored path or URI, a file) as a sha256.

A lineage query takes an image or a source the way a person has it at hand: a full
sha256 or a unique prefix of one (at least :data:`MIN_PREFIX` hex characters), the
path or URI it is stored under, or a copy of the file (found by hashing its bytes).
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import re

from ..errors import LineageNotFoundError

__all__ = ["MIN_PREFIX", "ImageResolver", "looks_like_sha"]

MIN_PREFIX = 8
_HEX = re.compile(r"[0-9a-f]+")
_SHA = re.compile(r"[0-9a-f]{64}")


def looks_like_sha(text: str) -> bool:
    """Lowercase hex of at most 64 characters: a sha256 or a prefix of one."""
    return bool(_HEX.fullmatch(text)) and len(text) <= 64


class ImageResolver:
    """Turns what a user typed (sha256, prefix, stored path or URI, file) into a full sha256.

    The index (:class:`~bria_dagster.lineage.index.LineageIndex`) supplies the lookups:
    ``_is_known``, ``_prefix_matches`` and ``_sha_for_uri`` (and ``source`` /
    ``__len__`` for messages); this class holds what a name may be and the messages
    that say why one names nothing.
    """

    source: str

    def __len__(self) -> int:
        raise NotImplementedError

    def _is_known(self, sha: str) -> bool:
        raise NotImplementedError

    def _prefix_matches(self, prefix: str) -> set[str]:
        """Output or source shas (ok/reused rows) starting with ``prefix``."""
        raise NotImplementedError

    def _sha_for_uri(self, text: str) -> str | None:
        """The sha of the image or source recorded under URI ``text``."""
        raise NotImplementedError

    def _by_prefix(self, prefix: str) -> str | None:
        if len(prefix) == 64:
            return prefix if self._is_known(prefix) else None
        matches = sorted(self._prefix_matches(prefix))
        if len(matches) > 1:
            shown = ", ".join(m[:16] for m in matches[:5])
            raise LineageNotFoundError(
                f"sha256 prefix {prefix!r} is ambiguous in {self.source}: it matches "
                f"{len(matches)} images ({shown}...); give more characters"
            )
        return matches[0] if matches else None

    def resolve_image(self, image: str) -> str:
        """The full sha256 named by ``image``: a sha256, a unique prefix, a stored path or URI."""
        text = str(image).strip()
        too_short = (
            f"sha256 prefix {text!r} is too short: give at least {MIN_PREFIX} hex characters"
        )
        found = self._named_sha(text, too_short)
        if found:
            return found
        if looks_like_sha(text.lower()):
            raise self._not_found(text, "as a sha256 or sha256 prefix")
        raise self._not_found(text, "as an image path or URI (file name, image_uri, file bytes)")

    def _named_sha(self, text: str, too_short: str) -> str | None:
        """The known sha ``text`` names, as a sha256 (prefix) or as a location; a hex prefix
        under :data:`MIN_PREFIX` characters raises ``too_short``."""
        low = text.lower()
        if not looks_like_sha(low):
            return self._sha_from_location(text)
        if len(low) < MIN_PREFIX:
            raise LineageNotFoundError(too_short)
        return self._by_prefix(low)

    def _sha_from_location(self, text: str) -> str | None:
        # Stored images are named <sha256>.<ext>: the name alone identifies them.
        stem = posixpath.basename(text.replace("\\", "/").rstrip("/")).split(".")[0].lower()
        if _SHA.fullmatch(stem) and self._is_known(stem):
            return stem
        found = self._sha_for_uri(text)
        if found:
            return found
        digest = _hash_file(text)
        if digest and self._is_known(digest):
            return digest
        return None

    def _source_sha(self, source: str) -> str:
        """The sha ``derived`` starts from: a source or image sha (prefix), path or file."""
        sha = self._named_sha(
            source,
            f"{source!r} is neither a sku in {self.source} nor a usable sha256 prefix "
            f"(give at least {MIN_PREFIX} hex characters)",
        )
        if sha is None:
            raise LineageNotFoundError(
                f"no sku, source sha256, image sha256 or source URI matches {source!r} in "
                f"{len(self)} record rows from {self.source}; check the spelling or --base"
            )
        return sha

    def _not_found(self, what: str, how: str) -> LineageNotFoundError:
        return LineageNotFoundError(
            f"no record of {what!r} ({how}) in {len(self)} record rows from {self.source}; "
            "check the image or base location (--base), or run the pipeline for it first"
        )


def _hash_file(location: str) -> str | None:
    """sha256 of a local file's bytes, or None when ``location`` is not a readable local file."""
    path = location.removeprefix("file://")
    if not os.path.isfile(path):
        return None
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    except OSError:
        return None
    return digest.hexdigest()
