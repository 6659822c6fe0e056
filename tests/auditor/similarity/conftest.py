"""Fixtures of the similarity tests: `one_torch_thread` (the workflow tests'), for modules that train or
embed tiny batches: `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""

from tests.auditor.workflows.conftest import one_torch_thread  # noqa: F401 - a fixture, found by name
