"""Exports that third parties' tools read and verify: C2PA manifests (content credentials)
embedded in a sample's PNG, and W3C PROV documents of how the sample was made.

- assertion: the attribution assertion (top sources, captured mass, regions of interest, the
  run's and store's identity), THE record both formats and the verifier share;
- c2pa_manifest: the C2PA manifest definition; the signed PNG or the unsigned manifest archive;
- signing: certificates and keys (checks, the signing algorithm) and the local CA;
- verification: reading a PNG's manifest back, its signature, image hash and trust;
- prov_document: the W3C PROV document (PROV-JSON, PROV-N);
- files: writing an export: mode 0600, atomically.

Built from auditor.store.read_models.exports.ExportRecord; the use cases (open the store,
refuse incomplete runs, write the file) are auditor.workflows.export.
"""
