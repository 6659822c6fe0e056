"""Fixtures shared by every test folder: the Fashion-MNIST slice, and the hostile recorded store
(used by the report tests and by the service's page tests).

`random_store`: random 8x8 RGB data with x-flips whose ids and rights metadata contain
HTML (to check escaping): run 1 complete (3 samples, 4 steps of 3x3 patches, full
weights), run 2 failed after its first 2 steps (an interrupted writer).
"""

import os

import pytest

pytest.register_assert_rewrite("tests.support")  # the helpers' asserts explain their failures too
# starlette's TestClient sends "Host: testserver": a name the service answers only when told to
os.environ.setdefault("AUDITOR_TRUSTED_HOSTS", "testserver")
# no descriptor cache in ~/.cache from the tests (auditor.similarity.descriptor_cache; its tests set their own)
os.environ.setdefault("PSPC_CACHE_DIR", "off")

from auditor.workflows.options import SamplingOptions  # noqa: E402
from auditor.workflows.sampling import record_sampling_run  # noqa: E402
from pspc.data.loaders import load_fashion_mnist  # noqa: E402
from pspc.data.training_set import TrainingSet  # noqa: E402
from tests.support.data import FASHION_MNIST_ROOT, hostile_set  # noqa: E402
from tests.support.store import Interrupt, Store, record  # noqa: E402


@pytest.fixture(scope="session")
def fashion_slice() -> TrainingSet:
    """The first 24 Fashion-MNIST training images (skip if the Debian package is absent)."""
    if not os.path.isdir(FASHION_MNIST_ROOT):
        pytest.skip("Fashion-MNIST not installed: apt-get install -y dataset-fashion-mnist")
    return load_fashion_mnist("train", limit=24)


@pytest.fixture(scope="session")
def random_store(tmp_path_factory) -> Store:
    data = hostile_set()
    db = tmp_path_factory.mktemp("reports-random") / "provenance.duckdb"
    recorded = record(db, data, num_samples=3, steps=4, seed=5, patch_size=3, top_k=64, mass=1.0)

    def stop(step, t, z, denoised, weights):
        if step == 1:
            raise Interrupt("stopped after step 1")

    with pytest.raises(Interrupt):
        record_sampling_run(db, data, options=SamplingOptions(num_samples=2, steps=4, seed=9, patch_size=3, top_k=8,
                                                              mass=0.9), callback=stop)
    return Store(db, data, recorded.run_id, recorded.run_id + 1)
