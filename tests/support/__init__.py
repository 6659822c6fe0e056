"""Helpers shared by the tests: data factories, slow references, recorded stores, tiny
networks, CLI and page helpers. Test modules import from here, never from each other or
from a conftest.py (which holds only the fixtures, built from these helpers).

  paths      REPO, the repository root
  data       small training sets (random, hostile, the Fashion-MNIST slice) and forward noise
  reference  the slow, obviously-correct PSPC (Eq. 9-11 in float64 loops)
  store      recorded stores, plain-SQL stores and their hand-checked views, a lock holder,
             a study result, SQL fetches
  networks   tiny networks (the EDM U-Net, a fast random denoiser, a Gaussian one, SSCD stand-ins)
  cli        running `auditor` in-process
  jobs       waiting for a report-service job to finish
  pages      HTML page checks and where artifacts go
"""
