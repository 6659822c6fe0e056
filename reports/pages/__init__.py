"""The report pages' data: one documented dataclass per page, built from store read models.

Each page module has a context class and the function that builds it from its read model
(auditor.store.read_models): sample (SampleReport), run (RunPage), training_image
(TrainingImagePage), index (IndexPage), sql (SqlPage), fidelity (FidelityListPage,
FidelityPage); common holds what they share (Picture, Pagination, Context, to_jsonable,
RunRecord). The HTML template (`documented_template`) and the JSON (`to_json()`) are two
renderings of the same object, so `.json` gives exactly what the page shows. Nothing here
opens the store: the service reads the read model and calls the builder.
"""
