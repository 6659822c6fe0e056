"""Run kinds: THE table of what each stored `runs.kind` is, what readers call it, and whether
its images are outputs.

A run's kind says where its images come from and what its attribution means:

- 'pspc' and 'samples-only' are samples (kind 'sample'): the run's denoiser generated them
  (samples-only: a denoiser without posterior weights, so final images and no attribution);
- 'network-explained' is a network's own sample, with PSPC's posterior weights on the
  network's trajectory as its attribution: the network is the generator, PSPC the explainer;
- 'external-audit' is an audit (kind 'audit'): an image from outside (a file, whose name and
  sha256 runs.details['input'] keeps), attributed by 'inversion' or 'direct'
  (auditor.workflows.audit). Its image is nobody's output.

Outputs (samples and network-explained samples) are what a rights holder's usage counts
(auditor.store.attribution.image_usage, the training image's page and export, the API):
audits only when asked (include_audits). The CLI (`auditor runs --kind`), the API
(`/api/runs?kind=`) and the pages read kinds, labels and filters from here, and
schema.RUN_KINDS (what create_run accepts) is this table's keys.

- 'counterfactual' is a sample re-run (or an explained trajectory replayed) without some
  training images (auditor.workflows.counterfactual): nobody's output, so a rights holder's
  usage never counts it; its parent and removed set are in runs.details and the
  counterfactuals tables.

Adding a kind is one entry in RUN_KIND_TABLE.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePath

from auditor.errors import UserError

__all__ = ["KIND_NAMES", "RUN_KIND_TABLE", "STORED_KINDS", "RunKind", "describe_run", "image_source", "kind_choices",
           "run_kind", "stored_kinds", "usage_kinds"]


@dataclass(frozen=True, kw_only=True)
class RunKind:
    """What a stored run kind is to a reader.

    name: the public kind, what lists show and filters take ('sample', 'network-explained',
    'audit'); label: its display label; plural: the public kind's name in a filter ('samples');
    output: its final images are a generator's outputs
    (a rights holder's usage counts them); audit: an external image audited (counted only
    with include_audits); generator: what made the image: 'denoiser' (the run's own
    denoiser), 'network' (runs.details['network']) or 'external' (the audited file);
    attributed: whether its steps carry posterior weights; image_label: what a page calls the
    run's image; summary: one sentence under a page's title."""

    name: str
    label: str
    plural: str
    output: bool
    generator: str
    image_label: str
    summary: str
    audit: bool = False
    attributed: bool = True


RUN_KIND_TABLE: dict[str, RunKind] = {
    "pspc": RunKind(
        name="sample", label="PSPC sample", plural="samples", output=True, generator="denoiser",
        image_label="Generated sample",
        summary="Which training images, at which locations, built this generated image."),
    "samples-only": RunKind(
        name="sample", label="sample without attribution", plural="samples", output=True, generator="denoiser",
        attributed=False, image_label="Generated sample",
        summary="A sample of a denoiser without posterior weights: its final image only, no attribution."),
    "network-explained": RunKind(
        name="network-explained", label="network sample explained by PSPC", plural="network samples", output=True,
        generator="network", image_label="The network's sample",
        summary="A diffusion network's sample, and the training images PSPC composes it from along the network's "
                "own trajectory."),
    "external-audit": RunKind(
        name="audit", label="audit of an external image", plural="audits", output=False, audit=True,
        generator="external", image_label="Audited image",
        summary="An external image audited with PSPC: the training images its patches are composed from. It is "
                "not a generated sample."),
    "counterfactual": RunKind(
        name="counterfactual", label="counterfactual (training images removed)", plural="counterfactuals",
        output=False, generator="denoiser", image_label="Counterfactual image",
        summary="What a sample becomes when some training images are removed: the same noise, denoiser and sampler "
                "(or the same recorded trajectory), those images' weights exactly zero."),
}

STORED_KINDS = tuple(RUN_KIND_TABLE)  # what runs.kind may hold
KIND_NAMES = tuple(dict.fromkeys(k.name for k in RUN_KIND_TABLE.values()))  # what filters take: sample, ...


def kind_choices() -> list[tuple[str, str]]:
    """(public kind, its plural) of every public kind, in the table's order: a filter's choices."""
    return list(dict.fromkeys((k.name, k.plural) for k in RUN_KIND_TABLE.values()))


def run_kind(stored: str | None) -> RunKind:
    """The entry of a stored kind (NULL: 'pspc', as every run before kinds existed). A kind this
    version does not know (a newer writer's) is shown as itself and counted as no output."""
    stored = stored or "pspc"
    found = RUN_KIND_TABLE.get(stored)
    if found is not None:
        return found
    return RunKind(name=stored, label=stored, plural=stored, output=False, generator="denoiser", image_label="Image",
                   summary=f"A run of kind {stored!r}, which this version does not know.")


def stored_kinds(name: str) -> tuple[str, ...]:
    """The stored kinds a filter on the public kind `name` selects; UserError naming the kinds
    for any other name."""
    found = tuple(stored for stored, kind in RUN_KIND_TABLE.items() if kind.name == name)
    if not found:
        raise UserError(f"unknown run kind {name!r}; choose from {', '.join(KIND_NAMES)}")
    return found


def usage_kinds(include_audits: bool = False) -> tuple[str, ...]:
    """The stored kinds a rights holder's usage counts: the outputs, and the audits when asked."""
    return tuple(stored for stored, kind in RUN_KIND_TABLE.items() if kind.output or (include_audits and kind.audit))


def _audited_image(details: dict) -> dict | None:
    """The audited file as lists show it: its name (never the server's folder), sha256 and format."""
    source = details.get("input")
    if not isinstance(source, dict):
        return None
    path = source.get("path")
    return {"file": PurePath(str(path)).name if path else None, "sha256": source.get("sha256"),
            "format": source.get("format")}


def describe_run(kind: str | None, details: dict | None, denoiser: dict | None, sampler: dict | None) -> dict:
    """A run's kind as every list, page and API object shows it, from its stored columns:
    kind (public), kind_label, recorded_kind (runs.kind), output, generator (the denoiser's
    kind, the network's name, or None for an audited image), explainer (the PSPC denoiser
    whose weights are the attribution; None without any), method (an audit's 'inversion' or
    'direct', else the sampler's method), network ({id, name} where one was used) and
    audited_image ({file, sha256, format} of an audit's input, else None)."""
    entry = run_kind(kind)
    details, denoiser, sampler = details or {}, denoiser or {}, sampler or {}
    network = details.get("network") if isinstance(details.get("network"), dict) else None
    if entry.generator == "network":
        generator = (network or {}).get("name") or "network"
    elif entry.generator == "external":
        generator = None
    else:
        generator = denoiser.get("kind")
    method = details.get("method") if entry.audit else None
    return {"kind": entry.name, "kind_label": entry.label, "recorded_kind": kind or "pspc", "output": entry.output,
            "generator": generator, "explainer": denoiser.get("kind") if entry.attributed else None,
            "method": method or sampler.get("method"),
            "network": {"id": network.get("id"), "name": network.get("name")} if network else None,
            "audited_image": _audited_image(details) if entry.audit else None}


def image_source(facts: dict) -> str:
    """Where a run's image comes from, in plain text, from describe_run's dict (or a run
    summary): the audited file ('noise.png (sha256 95a9746de912...)'), the network
    ('network tiny') or the generating denoiser ('pspc-square')."""
    audited = facts.get("audited_image")
    if audited:
        sha = f" (sha256 {audited['sha256'][:12]}...)" if audited.get("sha256") else ""
        return f"{audited.get('file') or 'an image tensor'}{sha}"
    if facts.get("kind") == "network-explained":
        return f"network {facts.get('generator') or '?'}"
    return facts.get("generator") or ""
