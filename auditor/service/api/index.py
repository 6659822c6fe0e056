"""GET /api: the index of the JSON API, its resources with their URLs and what each is, read off
the app's own OpenAPI schema and tags (auditor.service.api.TAGS), so it cannot drift from them, and
links to the documentation (Swagger UI at /api/docs, ReDoc at /api/redoc, the OpenAPI schema).

Like the docs it is a place people open in a browser: it takes the read scope from the key's
cookie (or ?key=) as the HTML pages do."""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from auditor.service.docs import DOCS_PATH, OPENAPI_PATH, REDOC_PATH

__all__ = ["ApiIndex", "add_index", "api_index"]


class Operation(BaseModel):
    method: str = Field(description="the HTTP method")
    path: str = Field(description="the path, with its {parameters}")
    summary: str = Field(description="what it does, in one line")


class Resource(BaseModel):
    name: str = Field(description="the resource (the tag of its operations in the docs)")
    url: str = Field(description="where it starts: its list, or the path of its first operation")
    description: str = Field(description="what it is, in one line")
    operations: list[Operation]


class ApiIndex(BaseModel):
    title: str
    version: str
    docs: str = Field(description="Swagger UI over the schema (served by the service, no external request)")
    redoc: str = Field(description="ReDoc over the schema (served by the service, no external request)")
    openapi: str = Field(description="the OpenAPI schema")
    resources: list[Resource]


def _resources(request: Request, base: str) -> list[dict]:
    """The schema's operations grouped by their tag, in the order of the app's tags."""
    schema = request.app.openapi()
    described = {tag["name"]: tag.get("description", "") for tag in schema.get("tags", [])}
    grouped: dict[str, list[dict]] = {name: [] for name in described}
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            grouped.setdefault(str((operation.get("tags") or ["other"])[0]), []).append(
                {"method": method.upper(), "path": path, "summary": operation.get("summary", "")})
    resources = []
    for name, operations in grouped.items():
        if not operations:
            continue
        plain = [op["path"] for op in operations if op["method"] == "GET" and "{" not in op["path"]]
        start = min(plain, key=len) if plain else operations[0]["path"]
        resources.append({"name": name, "url": base + start, "description": described.get(name, ""),
                          "operations": operations})
    return resources


def api_index(request: Request):
    """GET /api (and /api/): the index."""
    base = str(request.base_url).rstrip("/")
    return {"title": request.app.title, "version": request.app.version, "docs": base + DOCS_PATH,
            "redoc": base + REDOC_PATH, "openapi": base + OPENAPI_PATH, "resources": _resources(request, base)}


def add_index(router: APIRouter, **route) -> None:
    """The index's routes on `router`, the API's own (whose prefix is /api: an included router
    cannot have an empty path), with `route`'s dependencies and responses."""
    router.add_api_route("", api_index, methods=["GET"], response_model=ApiIndex, tags=["service"],
                         summary="This index: every resource of the API with its URL and what it is, and the "
                                 "documentation's links", **route)
    router.add_api_route("/", api_index, methods=["GET"], include_in_schema=False, **route)  # the pages' link
