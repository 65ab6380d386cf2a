"""Domain exceptions of the reward server, mapped to HTTP responses in one place (`install_error_handlers`)."""

from __future__ import annotations

from typing import Any, ClassVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

_MAX_ERRORS = 20
_MAX_MSG_CHARS = 300


class RewardServiceError(Exception):
    """Base of the errors the service answers itself; `status_code` is the HTTP status."""

    status_code = 500
    headers: ClassVar[dict[str, str] | None] = None


class PayloadTooLargeError(RewardServiceError):
    """A configured limit (batch size, string length, body size) was exceeded."""

    status_code = 413


class UnauthorizedError(RewardServiceError):
    """A bearer token is configured and the request did not carry it."""

    status_code = 401
    headers: ClassVar[dict[str, str] | None] = {"WWW-Authenticate": "Bearer"}


class PoolNotReadyError(RewardServiceError):
    """The scorer pool has not finished starting (or is shutting down)."""

    status_code = 503
    headers: ClassVar[dict[str, str] | None] = {"Retry-After": "1"}


class OverloadedError(RewardServiceError):
    """Too many items are already waiting for a worker."""

    status_code = 503
    headers: ClassVar[dict[str, str] | None] = {"Retry-After": "1"}


class RequestShapeError(RewardServiceError):
    """The body has the right types but is inconsistent (e.g. lists of different lengths); a 422 like a schema error."""

    status_code = 422

    def __init__(self, message: str, loc: tuple[str | int, ...] = ("body",)) -> None:
        super().__init__(message)
        self.loc = loc


def _clean_error(error: dict[str, Any]) -> dict[str, Any]:
    # Drop `input` (it can be a megabyte of client text) and `ctx` (may hold non-JSON objects).
    loc = [part if isinstance(part, int | str) else str(part) for part in error.get("loc", ())]
    return {"loc": loc, "msg": str(error.get("msg", ""))[:_MAX_MSG_CHARS], "type": str(error.get("type", ""))}


def summarize_validation_errors(errors: list[dict[str, Any]]) -> str:
    """One line naming each bad field, e.g. `body.items.3.response: Input should be a valid string`."""
    parts = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors[:5]]
    more = f" (+{len(errors) - 5} more)" if len(errors) > 5 else ""
    noun = "error" if len(errors) == 1 else "errors"
    return f"{len(errors)} validation {noun}: " + "; ".join(parts) + more


def _validation_response(errors: list[dict[str, Any]]) -> JSONResponse:
    cleaned = [_clean_error(e) for e in errors[:_MAX_ERRORS]]
    body = {"detail": cleaned, "message": summarize_validation_errors(cleaned)}
    return JSONResponse(status_code=422, content=body)


def _body_parse_message(cause: BaseException | None) -> str:
    if isinstance(cause, UnicodeDecodeError):
        return f"request body is not valid UTF-8 ({cause.reason} at byte {cause.start})"
    if isinstance(cause, RecursionError):
        return "request body JSON is nested too deeply"
    if cause is None:
        return "malformed request body"
    return f"request body could not be parsed as JSON: {type(cause).__name__}: {str(cause)[:_MAX_MSG_CHARS]}"


async def _on_service_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RewardServiceError)
    return JSONResponse(status_code=exc.status_code, content={"detail": str(exc)}, headers=exc.headers)


async def _on_shape_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestShapeError)
    return _validation_response([{"loc": exc.loc, "msg": str(exc), "type": "value_error"}])


async def _on_validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return _validation_response(list(exc.errors()))


async def _on_http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400:
        # FastAPI answers 400 for bodies json.loads rejects with something other than JSONDecodeError
        # (invalid UTF-8, nesting too deep); say which, and answer 422 like any other malformed request.
        message = _body_parse_message(exc.__cause__)
        error = {"loc": ["body"], "msg": message, "type": "body_unparseable"}
        return JSONResponse(status_code=422, content={"detail": [error], "message": message})
    return JSONResponse(status_code=exc.status_code, content={"detail": exc.detail}, headers=exc.headers)


def install_error_handlers(app: FastAPI) -> None:
    """Map every domain exception and framework error to its HTTP answer."""
    app.add_exception_handler(RewardServiceError, _on_service_error)
    app.add_exception_handler(RequestShapeError, _on_shape_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
