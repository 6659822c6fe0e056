"""Bounds shared by the JSON API, the HTML pages and `auditor serve`."""

#: the largest id, index, offset or step a route accepts: far beyond any store, well inside the
#: store's int64 columns (with room for offset + limit), so larger values answer 400, not 500
MAX_ID = 2**62

#: the largest pixel row or column (y, x) a route accepts: beyond any image side the engine samples
MAX_PIXEL = 2**16

#: the longest query string (bytes, percent-encoded as sent) of GET /api/sql: beyond it the
#: service answers 414 and points to POST /api/sql, which takes the statement in a JSON body
MAX_QUERY_STRING_BYTES = 32 * 2**10

#: httptools' (uvicorn's default HTTP parser) hard limit on a request's URL: its parser keeps
#: offsets in 16 bits, so a longer URL gets uvicorn's plain-text 400 before the app sees it
HTTPTOOLS_MAX_URL_BYTES = 2**16 - 1

#: the request head (request line and headers) that `auditor serve` lets uvicorn's h11 parser
#: buffer (h11_max_incomplete_event_size; h11's own default is 16 KiB): a URL as long as
#: httptools takes, plus 32 KiB of headers, so that both parsers hand the app the same URLs
MAX_REQUEST_HEAD_BYTES = HTTPTOOLS_MAX_URL_BYTES + 32 * 2**10
