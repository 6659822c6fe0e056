"""Read models: what the report pages need from the store, read in short read-only
transactions and returned as plain dataclasses, dicts of rows and numpy arrays.

The presentation layer (reports/) builds its pages from these; it never opens the store.

- common: training image metadata (ImageMeta, image_metadata) and id checks;
- patches: the geometry of stored patch sets (boxes, membership, coverage), cached;
- sample: one sample's provenance (SampleProvenance) and the per-process cache of what is
  built from a complete run's sample (build_cached);
- runs: a run's page (record, gallery of samples, their largest source);
- counterfactual: a counterfactual's origin and outcome, and a sample's counterfactual runs;
- training_images: a training image's page (its rows and every use of it, the usage map);
- index: the search for training images by id or source URI;
- sql: the read-only SQL page's statement check.
"""
