"""A sample's provenance as a W3C PROV document (PROV-DM, built with the `prov` library;
serialised as PROV-JSON or PROV-N).

Entities: the sample (the final image); each recorded step's state z_t; the training images
its attribution names, members of the training set (a prov:Collection); the network of a
network-explained or audit run. Activities: the sampling run, each denoising step (started by
the run; step k uses state k and generates state k + 1, the last step generates the sample)
and this export. Agents: the tool (a prov:SoftwareAgent) and whoever asked for the export,
by user or API key name (never the key).

Attribution weights are qualified influences (prov:wasInfluencedBy): the sample was
influenced by each training image with its share of the final image (pspc:share,
pspc:flip_share, pspc:trajectory_share), and each step by its top training images with their
share of that step's D(z_t).

Identifiers are URNs that do not depend on where the store lives: the run's by its
fingerprint (auditor.store.read_models.exports.run_fingerprint), the training set's by its
content fingerprint, the network's by its file's sha256.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from urllib.parse import quote

from prov.model import PROV, ProvDocument

from auditor.exports.assertion import TOOL_NAME, dataset_uri
from auditor.store.read_models.exports import ExportRecord
from auditor.store.read_models.sample import SampleProvenance
from pspc.record import own_version

__all__ = ["PROV_FORMATS", "Requester", "prov_document", "prov_images", "serialize"]

PSPC_NAMESPACE = "urn:pspc-auditor:ns:"
PROV_FORMATS = ("prov-json", "prov-n")


@dataclass(frozen=True)
class Requester:
    """Who asked for the export: a user name (kind 'user') or an API key's name and id (kind
    'api-key'); never a key itself."""

    name: str
    kind: str = "user"
    key_id: int | None = None


def prov_images(data: SampleProvenance, top: int | None, step_top: int) -> list[int]:
    """The training images the document names: the final image's top `top` sources (None: all)
    and each step's top `step_top`."""
    final = data.final_shares()
    images = set() if final is None else set(final.image_index[:top].tolist())
    for shares in data.all_step_shares().values():
        images.update(shares.image_index[:step_top].tolist())
    return sorted(images)


def _attributes(**values) -> dict:
    """pspc:-prefixed attributes, leaving out missing values."""
    return {f"pspc:{k}": v for k, v in values.items() if v is not None}


def _add_training(doc: ProvDocument, record: ExportRecord, images) -> tuple:
    """The training set (a collection), its named images and the network: (set, {index: entity}, network)."""
    dataset = record.dataset
    data = doc.add_namespace("data", f"urn:pspc-auditor:dataset:sha256:{dataset['fingerprint']}:")
    collection = doc.collection(data["set"], {"prov:type": doc.valid_qualified_name("pspc:TrainingSet"),
                                              "prov:label": dataset["name"],
                                              **_attributes(fingerprint=dataset["fingerprint"],
                                                            source=dataset["source"] or None,
                                                            uri=dataset_uri(dataset["source"]),
                                                            images=int(dataset["count"]))})
    entities = {}
    for index in images:
        meta = record.provenance.images.get(index)
        entity = doc.entity(data[f"image-{index}"], {
            "prov:type": doc.valid_qualified_name("pspc:TrainingImage"),
            **_attributes(image_index=int(index), image_id=meta.image_id if meta else None,
                          sha256=record.image_sha256.get(index), label_name=meta.label_name if meta else None,
                          source_uri=meta.source_uri if meta else None, owner=meta.owner if meta else None,
                          license=meta.license if meta else None)})
        doc.hadMember(collection, entity)
        entities[index] = entity
    network = None
    if record.network is not None:
        net = record.network
        network = doc.entity(f"pspc:network-{net['sha256']}", {
            "prov:type": doc.valid_qualified_name("pspc:Network"), "prov:label": net["name"],
            **_attributes(sha256=net["sha256"], kind=net["kind"], fingerprint=net["fingerprint"])})
    return collection, entities, network


def _add_steps(doc: ProvDocument, run_ns, record: ExportRecord, run_activity, sample, images: dict,
               step_top: int) -> None:
    """The denoising steps, the states between them, and each step's top sources as influences."""
    data = record.provenance
    prefix = f"sample{data.sample_index}"
    state = doc.entity(run_ns[f"{prefix}-state0"], {"prov:type": doc.valid_qualified_name("pspc:State"),
                                                    **_attributes(step=data.steps[0].step, t=data.steps[0].t)})
    doc.wasGeneratedBy(state, run_activity)  # the initial noise, drawn from the sample's seed
    shares = data.all_step_shares()
    last = len(data.steps) - 1
    for i, row in enumerate(data.steps):
        step = doc.activity(run_ns[f"{prefix}-step{row.step}"], other_attributes={
            "prov:type": doc.valid_qualified_name("pspc:DenoisingStep"),
            **_attributes(step=row.step, t=row.t, t_next=row.t_next, patch_set=data.geometry[row.patch_set_id].label)})
        doc.wasStartedBy(step, starter=run_activity)
        doc.used(step, state)
        if i == last:
            doc.wasGeneratedBy(sample, step)
        else:
            state = doc.entity(run_ns[f"{prefix}-state{i + 1}"], {
                "prov:type": doc.valid_qualified_name("pspc:State"),
                **_attributes(step=data.steps[i + 1].step, t=data.steps[i + 1].t)})
            doc.wasGeneratedBy(state, step)
        top = shares[row.step]
        for image, share in zip(top.image_index[:step_top].tolist(), top.share[:step_top].tolist()):
            doc.influence(step, images[image], other_attributes=_attributes(share=float(share), step=row.step))


def prov_document(record: ExportRecord, requester: Requester, *, top: int | None = None,
                  step_top: int = 5) -> ProvDocument:
    """The document of a complete sample (see the module docstring); the images of prov_images
    must have been fetched into record.provenance.images."""
    data, run = record.provenance, record.run
    doc = ProvDocument()
    doc.add_namespace("pspc", PSPC_NAMESPACE)
    run_ns = doc.add_namespace("run", f"urn:pspc-auditor:run:{record.run_fingerprint}:")
    user_ns = doc.add_namespace("user", "urn:pspc-auditor:user:")
    collection, images, network = _add_training(doc, record, prov_images(data, top, step_top))
    final, trajectory = data.final_shares(), data.trajectory_shares().as_dict()
    sample = doc.entity(run_ns[f"sample{data.sample_index}"], {
        "prov:type": doc.valid_qualified_name("pspc:Sample"),
        "prov:label": f"run {run['id']} sample {data.sample_index}",
        **_attributes(run_id=int(run["id"]), sample_index=int(data.sample_index), seed=int(data.seed),
                      sha256=record.sample_sha256, shape="x".join(map(str, data.shape)),
                      captured_mass=float(final.share.sum()))})
    sampling = doc.activity(run_ns["sampling"], run["created_at"], run["finished_at"], {
        "prov:type": doc.valid_qualified_name("pspc:SamplingRun"),
        **_attributes(run_id=int(run["id"]), kind=run["kind"], fingerprint=record.run_fingerprint,
                      denoiser=(run["denoiser"] or {}).get("kind"), sampler=(run["sampler"] or {}).get("method"),
                      num_steps=(run["sampler"] or {}).get("num_steps"), seed=int(run["seed"]),
                      top_k=int(run["top_k"]), mass_threshold=float(run["mass_threshold"]))})
    doc.used(sampling, collection)
    if network is not None:
        doc.used(sampling, network)
    _add_steps(doc, run_ns, record, sampling, sample, images, step_top)
    for image, share, flip_share in zip(final.image_index[:top].tolist(), final.share[:top].tolist(),
                                        final.flip_share[:top].tolist()):
        doc.influence(sample, images[image], other_attributes={
            "prov:type": doc.valid_qualified_name("pspc:Attribution"),
            **_attributes(share=float(share), flip_share=float(flip_share),
                          trajectory_share=float(trajectory.get(image, 0.0)))})
    tool = doc.agent(f"pspc:{TOOL_NAME}", {"prov:type": PROV["SoftwareAgent"], "prov:label": TOOL_NAME,
                                           **_attributes(version=own_version())})
    person = doc.agent(user_ns[quote(requester.name, safe="") or "anonymous"], {
        "prov:type": PROV["Person"] if requester.kind == "user" else doc.valid_qualified_name("pspc:ApiKeyHolder"),
        "prov:label": requester.name, **_attributes(api_key_id=requester.key_id)})
    export = doc.activity(run_ns[f"sample{data.sample_index}-export"], datetime.datetime.now(datetime.timezone.utc),
                          None, {"prov:type": doc.valid_qualified_name("pspc:Export")})
    doc.wasAssociatedWith(sampling, tool)
    doc.wasAssociatedWith(export, tool)
    doc.wasAssociatedWith(export, person)
    doc.actedOnBehalfOf(tool, person, export)
    doc.used(export, sample)
    doc.wasAttributedTo(sample, tool)
    return doc


def serialize(doc: ProvDocument, fmt: str) -> bytes:
    """PROV-JSON (fmt 'prov-json') or PROV-N ('prov-n') as UTF-8 bytes."""
    if fmt == "prov-json":
        return doc.serialize(format="json", indent=1).encode()
    if fmt == "prov-n":
        return doc.get_provn().encode()
    raise ValueError(f"unknown PROV format {fmt!r}; one of {', '.join(PROV_FORMATS)}")
