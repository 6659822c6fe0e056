"""Bounds shared by the JSON API and the HTML pages."""

#: the largest id, index, offset or step a route accepts: far beyond any store, well inside the
#: store's int64 columns (with room for offset + limit), so larger values answer 400, not 500
MAX_ID = 2**62
