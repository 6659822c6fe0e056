"""Attribution reports over the provenance store: page contexts, maps, plots and rendering.

- reports.context: one documented dataclass per page (SampleReport, RunPage,
  TrainingImagePage, IndexPage, SqlPage, FidelityListPage, FidelityPage), built from the
  store; `to_json()` on each.
- auditor.store.provenance: one sample's rows read in one short transaction, as numpy arrays.
- reports.maps: dominant-source and concentration maps, nearest enlargement, outlined
  training thumbnails, PNG bytes.
- reports.plots: matplotlib (Agg) plots of a report's steps and of fidelity studies.
- reports.render: Jinja2 templates (reports/templates), the self-contained HTML export,
  JSON and CSV.

The service mounts the HTML pages from auditor/routers/pages.py.
"""
