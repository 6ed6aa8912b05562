"""Which layers of an image belong to its base, and so stay byte-identical.

Nodes share base layers: a base layer that a run rewrote would no longer be shared with the other images built
on that base, and every node would pull it again. So by default no pass changes a base layer; what could be
reclaimed there is reported, never taken. The base is the longest prefix of the image's layers that the first
of these rules decides (the report says which rule did, and why):

1. ``--base none``: no base (every layer may be rewritten); ``--base IMAGE``: that image's layers (a file, a
   directory or ``docker://...``); the image must start with them;
2. ``--base-layers N``: the first N layers;
3. the ``org.opencontainers.image.base.digest`` / ``base.name`` annotations of the manifest: the base's
   layers, from the input, or (registry inputs only: no surprise network access) from its registry;
4. BuildKit provenance: the ``pkg:docker/...`` materials of an attestation attached to the image, whose
   layers the image starts with;
5. the config history: the base's own entries end at the last ``CMD``/``ENTRYPOINT`` that layer-creating
   steps follow, or else at the last jump of more than an hour in ``created`` between layers;
6. when nothing decides: the first layer.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import unquote

from .digest import short
from .documents import ANNOTATION_BASE_DIGEST, ANNOTATION_BASE_NAME, parse_json
from .errors import OptimizerError, UsageError
from .model import Descriptor, Platform
from .source import Blobs
from .tree import Node, NodeKind, iter_nodes

__all__ = [
    "BaseFinder",
    "LayerLists",
    "Protection",
    "base_layer_lists",
    "history_base",
    "layers_of_document",
    "provenance_materials",
]

HISTORY_JUMP_SECONDS = 3600
ATTESTATION_TYPE = "vnd.docker.reference.type"
ATTESTATION_SUBJECT = "vnd.docker.reference.digest"
PREDICATE_TYPE = "in-toto.io/predicate-type"

# Layers of the image a reference names (``name@digest``, a platform to pick in an index): None when unknown.
LayerLists = Callable[[str, str, Platform | None], list[str] | None]


@dataclass(frozen=True)
class Protection:
    """How many layers at the bottom of an image stay byte-identical, the rule that decided, and why."""

    count: int
    rule: str  # "none", "--base", "--base-layers", "annotation", "provenance", "history", "first-layer"
    detail: str = ""
    warnings: tuple[str, ...] = field(default=())

    def describe(self) -> dict[str, Any]:
        return {"layers": self.count, "rule": self.rule, "detail": self.detail}


class BaseFinder:
    """Decides the base of each image of one input (see the module docstring for the rules). With
    ``--base none`` the base is still detected (the report's warm-node figures need it), but not protected."""

    def __init__(
        self,
        blobs: Blobs,
        roots: Sequence[Node],
        base: str | None,
        base_layers: int | None,
        base_lists: Sequence[Sequence[str]] = (),
        fetch: LayerLists | None = None,
    ) -> None:
        self.blobs = blobs
        self.base = base
        self.base_layers = base_layers
        self.base_lists = [list(b) for b in base_lists]
        self.fetch = fetch
        self.attestations = _attestations(roots)

    def protection(self, node: Node, config: Mapping[str, Any], name: str) -> Protection:
        layers = [d.digest for d in node.layers]
        warnings: list[str] = []
        if self.base is not None and self.base != "none":
            matched = _longest_prefix(layers, self.base_lists)
            if matched:
                return Protection(matched, "--base", f"the first {matched} layers are {self.base}'s")
            warnings.append(
                f"{name}: it does not start with the layers of --base {self.base}; looking further"
            )
        if self.base_layers is not None:
            count = min(self.base_layers, len(layers))
            return Protection(count, "--base-layers", f"--base-layers {self.base_layers}", tuple(warnings))
        for rule in (self._annotation, self._provenance):
            found = rule(node, layers, name, warnings)
            if found is not None:
                return Protection(found[0], found[1], found[2], tuple(warnings))
        decided = history_base(config, len(layers))
        if decided is not None:
            return Protection(decided[0], "history", decided[1], tuple(warnings))
        count = min(1, len(layers))
        detail = "no rule decided: the first layer is kept (--base none optimizes every layer)"
        return Protection(count, "first-layer", detail, tuple(warnings))

    def _annotation(
        self, node: Node, layers: list[str], name: str, warnings: list[str]
    ) -> tuple[int, str, str] | None:
        annotations = node.document.get("annotations")
        if not isinstance(annotations, dict) or not annotations.get(ANNOTATION_BASE_DIGEST):
            return None
        digest = str(annotations[ANNOTATION_BASE_DIGEST])
        base_name = str(annotations.get(ANNOTATION_BASE_NAME, ""))
        found = self._layers_of(base_name, digest, node.descriptor.platform)
        label = f"{base_name or 'base'} {short(digest)}"
        if found is None:
            warnings.append(
                f"{name}: its base image {label} is named by annotation but its layers could not be read "
                "(not in the input, and the input is not a registry image); pass --base to name it"
            )
            return None
        if len(found) <= len(layers) and layers[: len(found)] == found:
            return len(found), "annotation", f"{ANNOTATION_BASE_DIGEST}: {label}"
        warnings.append(f"{name}: it does not start with the layers of its annotated base {label}")
        return None

    def _provenance(
        self, node: Node, layers: list[str], name: str, warnings: list[str]
    ) -> tuple[int, str, str] | None:
        best: tuple[int, str, str] | None = None
        for material, digest in self._materials(node, warnings):
            found = self._layers_of(material, digest, node.descriptor.platform) or []
            prefix = 0 < len(found) <= len(layers) and layers[: len(found)] == found
            if prefix and (best is None or len(found) > best[0]):
                best = (len(found), "provenance", f"BuildKit provenance material {material}@{short(digest)}")
        return best

    def _materials(self, node: Node, warnings: list[str]) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        for attestation in self.attestations.get(node.digest, []):
            for layer in attestation.layers:
                if "provenance" not in layer.annotations.get(PREDICATE_TYPE, ""):
                    continue
                try:
                    statement = parse_json(self.blobs.read(layer, "attestation"), "provenance attestation")
                except OptimizerError as error:
                    warnings.append(f"provenance attestation {short(layer.digest)} unreadable: {error}")
                    continue
                out.extend(provenance_materials(statement))
        return out

    def _layers_of(self, reference: str, digest: str, platform: Platform | None) -> list[str] | None:
        if self.blobs.has(digest):
            found = _layers_in(self.blobs, digest, platform)
            if found is not None:
                return found
        if self.fetch is not None and reference:
            return self.fetch(reference, digest, platform)
        return None


def _attestations(roots: Sequence[Node]) -> dict[str, list[Node]]:
    """image manifest digest -> the attestation manifests an index attaches to it (BuildKit's convention)."""
    found: dict[str, list[Node]] = {}
    for index in iter_nodes(roots):
        if index.kind is not NodeKind.INDEX:
            continue
        for child, raw in zip(index.children, index.child_descriptors, strict=True):
            annotations = raw.get("annotations") if isinstance(raw, dict) else None
            if isinstance(annotations, dict) and annotations.get(ATTESTATION_TYPE) == "attestation-manifest":
                subject = annotations.get(ATTESTATION_SUBJECT)
                if isinstance(subject, str) and child.kind in (NodeKind.IMAGE, NodeKind.MANIFEST):
                    found.setdefault(subject, []).append(child)
    return found


def provenance_materials(statement: Any) -> list[tuple[str, str]]:
    """``(image reference, manifest digest)`` of every ``pkg:docker/...`` material of an in-toto statement
    (SLSA provenance v0.2 ``materials`` or v1 ``resolvedDependencies``)."""
    if not isinstance(statement, dict) or not isinstance(statement.get("predicate"), dict):
        return []
    predicate = statement["predicate"]
    entries = predicate.get("materials")
    definition = predicate.get("buildDefinition")
    if not isinstance(entries, list) and isinstance(definition, dict):
        entries = definition.get("resolvedDependencies")
    out = []
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict) or not isinstance(entry.get("digest"), dict):
            continue
        uri, hexdigest = entry.get("uri"), entry["digest"].get("sha256")
        if isinstance(uri, str) and uri.startswith("pkg:docker/") and isinstance(hexdigest, str):
            reference = unquote(uri[len("pkg:docker/") :].split("?", 1)[0])
            out.append((reference.split("@", 1)[0], "sha256:" + hexdigest))
    return out


def history_base(config: Mapping[str, Any], layer_count: int) -> tuple[int, str] | None:
    """The number of base layers the config history shows, with the evidence; None when it does not tell.

    The history must describe every layer (one entry without ``empty_layer`` per layer), else it decides
    nothing. The base ends at the last ``CMD``/``ENTRYPOINT`` entry that layer-creating steps follow (a base
    image's last instruction); else at the last jump of more than an hour in ``created`` between layers.
    """
    history = [h for h in config.get("history") or [] if isinstance(h, dict)]
    layer_entries = [i for i, h in enumerate(history) if not h.get("empty_layer")]
    if len(layer_entries) != layer_count or layer_count < 2:
        return None
    for position in range(len(history) - 1, -1, -1):
        entry = history[position]
        before = sum(1 for i in layer_entries if i < position)
        if _is_cmd(entry) and 0 < before < layer_count:
            step = str(entry.get("created_by", "")).strip()
            return before, f"history entry {position + 1} ({_shorten(step)}) ends the base"
    times = [_created(history[i]) for i in layer_entries]
    for number in range(layer_count - 1, 0, -1):
        earlier, later = times[number - 1], times[number]
        if earlier is not None and later is not None and later - earlier > HISTORY_JUMP_SECONDS:
            hours = (later - earlier) / 3600
            return number, f"history: layer {number + 1} was created {hours:.0f} h after layer {number}"
    return None


def _is_cmd(entry: Mapping[str, Any]) -> bool:
    step = str(entry.get("created_by", "")).strip()
    if "#(nop)" in step:
        step = step.split("#(nop)", 1)[1].strip()
    return step.startswith(("CMD", "ENTRYPOINT"))


def _created(entry: Mapping[str, Any]) -> float | None:
    value = entry.get("created")
    if isinstance(value, str) and value:
        with contextlib.suppress(ValueError):
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    return None


def _shorten(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _longest_prefix(layers: Sequence[str], bases: Sequence[Sequence[str]]) -> int:
    best = 0
    for base in bases:
        if 0 < len(base) <= len(layers) and list(layers[: len(base)]) == list(base):
            best = max(best, len(base))
    return best


def _layers_in(blobs: Blobs, digest: str, platform: Platform | None) -> list[str] | None:
    """The layer digests of the image a digest names in ``blobs`` (choosing ``platform`` in an index)."""
    try:
        data = blobs.read(Descriptor("", digest, blobs.stored_size(digest) or 0), "base manifest")
        document = parse_json(data, "base manifest")
    except OptimizerError:
        return None
    return layers_of_document(document, platform, lambda child: _layers_in(blobs, child, None))


def layers_of_document(
    document: Any, platform: Platform | None, child_layers: Callable[[str], list[str] | None]
) -> list[str] | None:
    """The layers an image manifest lists, or those of the ``platform`` child of an index."""
    if isinstance(document, dict) and isinstance(document.get("manifests"), list):
        for child in document["manifests"]:
            descriptor = Descriptor.from_json(child)
            if platform is None or descriptor.platform == platform:
                return child_layers(descriptor.digest)
        return None
    if isinstance(document, dict) and isinstance(document.get("layers"), list):
        return [str(layer.get("digest")) for layer in document["layers"]]
    return None


def base_layer_lists(path: str, open_tree: Callable[[str], tuple[Blobs, list[Node]]]) -> list[list[str]]:
    """The layer digests of every image in the input ``path`` names (the ``--base`` option)."""
    _, roots = open_tree(path)
    out = [
        [layer.digest for layer in node.layers]
        for node in iter_nodes(roots)
        if node.kind in (NodeKind.IMAGE, NodeKind.MANIFEST)
    ]
    if not out:
        raise UsageError(f"--base {path}: no image found in it")
    return out
