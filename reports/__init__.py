"""Attribution reports over the provenance store: page contexts, maps, plots and rendering.

Presentation only: reports takes read models (auditor.store.read_models) and returns HTML,
JSON, CSV and PNG; it never opens the store. The service reads the store and calls it.

- reports.pages: one documented dataclass per page (SampleReport, RunPage,
  TrainingImagePage, IndexPage, SqlPage, FidelityListPage, FidelityPage), each built from
  its read model by its module's build function; `to_json()` on each.
- reports.maps: dominant-source and concentration maps, nearest enlargement, outlined
  training thumbnails, PNG bytes.
- reports.plots: matplotlib (Agg) plots of a report's steps and of fidelity studies.
- reports.render: Jinja2 templates (reports/templates), the self-contained HTML export,
  JSON and CSV.

The service mounts the HTML pages from auditor/service/pages.py.
"""
