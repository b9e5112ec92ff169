"""The Oracle's HTTP server: an OpenAI-compatible chat API over dojo's checkpoints, and the learning-curve page.

    dojo serve [--host 127.0.0.1] [--port 8400]

Routes (every one but ``/health`` needs the key; ``docs/serving.md`` has curl and openai-client examples):

* ``GET /health`` — ``{"status": "ok"}``, no key, nothing else said;
* ``GET /v1/models``, ``GET /v1/models/{id}`` — the ids that resolve now (``dojo/oracle/models.py``);
* ``POST /v1/chat/completions`` — ``model``, ``messages``, ``temperature``, ``top_p``, ``max_tokens`` (or
  ``max_completion_tokens``), ``stop``, ``seed``, ``stream`` (SSE ``data: {chunk}`` … ``data: [DONE]``,
  ``stream_options.include_usage``), ``chat_template_kwargs`` (template variables, as vLLM), and dojo's
  ``apply_profile`` (default true: the checkpoint's own system prompt and logit processors). The response's
  ``model`` is the canonical name of the checkpoint that answered; its ``dojo`` field carries step, path, the id
  asked for, the LoRA base and the profile. Other OpenAI fields are accepted and ignored; ``n`` must be 1;
* ``GET /`` — the page (``dojo/oracle/page.py``): HTTP basic auth with the key as password, a Bearer header, or
  the cookie that ``POST /login`` (a small form) sets.

API routes take ``Authorization: Bearer KEY`` only, compared in constant time. Errors are OpenAI error objects
(``{"error": {"message", "type", "param", "code"}}``): 400 malformed, 401 key, 404 unknown model, 413 body too
big, 429 queue full, 500 without a traceback (it goes to the server log). Capacity: ``serve.max_resident``
models loaded, one generation at a time per model (others wait, first come first served), ``serve.max_queue``
requests in the server at once.
"""
from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import uuid
from typing import Any, AsyncIterator, Literal

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from dojo.oracle import auth, page
from dojo.oracle.models import Resident, ResidentModels, UnknownModel, checkpoints, resolve

log = logging.getLogger("dojo.oracle")

MAX_STOPS = 4
MAX_STOP_CHARS = 256


# ---------------------------------------------------------------- the request
class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]

    def as_dict(self) -> dict:
        text = self.content if isinstance(self.content, str) else "\n".join(p.text for p in self.content)
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str = Field(min_length=1, max_length=256)
    messages: list[Message] = Field(min_length=1, max_length=4096)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-(2 ** 63), le=2 ** 64 - 1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=1)
    chat_template_kwargs: dict[str, Any] | None = None
    apply_profile: bool = True

    @field_validator("stop")
    @classmethod
    def _stops(cls, value):
        stops = [value] if isinstance(value, str) else (value or [])
        if len(stops) > MAX_STOPS or any(not 1 <= len(s) <= MAX_STOP_CHARS for s in stops):
            raise ValueError(f"at most {MAX_STOPS} stop strings of 1-{MAX_STOP_CHARS} characters")
        return tuple(stops)


# ---------------------------------------------------------------- errors
class APIError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type_, code, param
        self.headers = headers

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def invalid(message: str, param: str | None = None) -> APIError:
    return APIError(400, message, param=param)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 past ``limit`` bytes (declared or actually sent)."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise APIError(413, f"the request body is larger than the {limit} bytes allowed (serve.max_body_bytes)",
                       code="body_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise APIError(413, f"the request body is larger than the {limit} bytes allowed (serve.max_body_bytes)",
                           code="body_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_chat(raw: bytes, max_tokens: int) -> ChatRequest:
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        raise invalid("the request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise invalid("the request body must be a JSON object")
    try:
        req = ChatRequest.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or None
        raise invalid(f"{where + ': ' if where else ''}{first['msg']}", where) from None
    asked = req.max_completion_tokens or req.max_tokens
    if asked is not None and asked > max_tokens:
        raise invalid(f"max_tokens {asked} is more than this server allows ({max_tokens}, serve.max_tokens)",
                      "max_tokens")
    return req


# ---------------------------------------------------------------- generation, one at a time per model
async def pieces(resident: Resident, prompt: str, sampling, processors) -> AsyncIterator:
    """The completion's pieces (``model.sampling.Piece``), generated in a worker thread while holding the model's
    lock. Leaving early (a client gone) stops the generation and waits for the thread before the lock is freed."""
    from model.sampling import generate_text

    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    stop = threading.Event()

    def put(item) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:            # the loop is gone (server shutting down)
            stop.set()

    def work() -> None:
        try:
            for piece in generate_text(resident.model, resident.tokenizer, prompt, sampling, processors, stop.is_set):
                put(piece)
        except BaseException as exc:  # noqa: BLE001 - handed to the request, which answers without a traceback
            put(exc)

    async with resident.lock:
        future = loop.run_in_executor(None, work)
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finish_reason:
                    return
        finally:
            stop.set()
            with anyio.CancelScope(shield=True):
                await asyncio.wait([future])


class CleanupStreamingResponse(StreamingResponse):
    """A stream that always closes its generator and runs ``cleanup``, even when the client left before the
    first byte (an unstarted generator never runs its own ``finally``)."""

    def __init__(self, content, cleanup, **kwargs):
        super().__init__(content, **kwargs)
        self.cleanup = cleanup

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self.body_iterator.aclose()
                await self.cleanup()


# ---------------------------------------------------------------- the app
def create_app(cfg, key: str) -> FastAPI:
    """The Oracle for the storage root of ``cfg``, guarded by ``key``."""
    from model.sampling import Sampling, chat_prompt

    serve = cfg.serve
    app = FastAPI(title="dojo Oracle", docs_url=None, redoc_url=None, openapi_url=None)
    models = ResidentModels(cfg, serve.max_resident)
    app.state.models = models
    app.state.inflight = 0

    def require_bearer(request: Request) -> None:
        if not auth.matches(auth.bearer(request.headers.get("authorization")), key):
            raise APIError(401, "invalid or missing API key: send Authorization: Bearer KEY ($DOJO_API_KEY or "
                                "state/serve.key on the server)", code="invalid_api_key",
                           headers={"WWW-Authenticate": "Bearer"})

    def page_allowed(request: Request) -> bool:
        header = request.headers.get("authorization")
        return (auth.matches(auth.basic_password(header), key) or auth.matches(auth.bearer(header), key)
                or auth.matches(request.cookies.get(auth.COOKIE), auth.cookie_value(key)))

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        return APIError(exc.status_code, str(exc.detail), "invalid_request_error" if exc.status_code < 500
                        else "server_error").response()

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("internal error on %s %s", request.method, request.url.path)
        return APIError(500, "internal server error (details are in the server log)", "server_error").response()

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    def model_card(path, model_id: str | None = None) -> dict:
        from model.checkpoint import parse_name

        return {"id": model_id or path.name, "object": "model", "created": int(path.stat().st_mtime),
                "owned_by": "dojo", "dojo": {"step": parse_name(path.name), "path": str(path)}}

    @app.get("/v1/models")
    async def list_models(request: Request):
        require_bearer(request)

        def cards():
            out = []
            for alias in ("promoted", "latest"):
                try:
                    resolved = resolve(cfg.root, alias)
                except UnknownModel:
                    continue
                card = model_card(resolved.path, alias)
                card["dojo"]["resolves_to"] = resolved.name
                out.append(card)
            return out + [model_card(p) for p in checkpoints(cfg.root)]

        return {"object": "list", "data": await anyio.to_thread.run_sync(cards)}

    @app.get("/v1/models/{model_id}")
    async def get_model(model_id: str, request: Request):
        require_bearer(request)
        resolved = await resolve_or_404(model_id)
        card = model_card(resolved.path, model_id)
        card["dojo"]["resolves_to"] = resolved.name
        return card

    async def resolve_or_404(model_id: str):
        try:
            return await anyio.to_thread.run_sync(resolve, cfg.root, model_id)
        except UnknownModel as exc:
            shown = ", ".join(exc.available) or "none (no checkpoint yet)"
            raise APIError(404, f"{exc}; there is no fallback. Available ids: {shown}", code="model_not_found",
                           param="model") from None

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        require_bearer(request)
        req = parse_chat(await read_body(request, serve.max_body_bytes), serve.max_tokens)
        if app.state.inflight >= serve.max_queue:
            raise APIError(429, f"the server is busy: {app.state.inflight} requests are in line (serve.max_queue); "
                                f"try again shortly", "rate_limit_error", code="queue_full")
        app.state.inflight += 1        # counted before any await: concurrent requests cannot all pass the check
        try:
            resolved = await resolve_or_404(req.model)
        except BaseException:
            app.state.inflight -= 1
            raise
        resident, handed_over = None, False

        async def done() -> None:
            app.state.inflight -= 1
            if resident is not None:
                await models.release(resident)

        try:
            try:
                resident = await models.acquire(resolved)
            except (ValueError, OSError) as exc:
                raise APIError(500, f"checkpoint {resolved.name} could not be loaded: {exc}", "server_error",
                               code="model_load_failed") from None
            system_prompt = resident.system_prompt if req.apply_profile else None
            processors = resident.profile.logit_processors(resident.tokenizer) if req.apply_profile else []
            try:
                prompt = chat_prompt(resident.tokenizer, [m.as_dict() for m in req.messages], system_prompt,
                                     req.chat_template_kwargs)
            except Exception as exc:  # noqa: BLE001 - the template refused these messages (jinja raise, …)
                raise invalid(f"the chat template cannot render these messages: {str(exc)[:500]}", "messages") \
                    from None
            max_tokens = req.max_completion_tokens or req.max_tokens or serve.max_tokens
            prompt_tokens = len(resident.tokenizer(prompt, add_special_tokens=False)["input_ids"])
            if prompt_tokens + max_tokens > resident.context:
                raise invalid(f"the prompt is {prompt_tokens} tokens and max_tokens {max_tokens}: more than the "
                              f"model's context of {resident.context}", "messages")
            sampling = Sampling(max_tokens=max_tokens, temperature=req.temperature, top_p=req.top_p,
                                seed=req.seed, stop=req.stop or ())
            meta = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": resident.name,
                    "system_fingerprint": f"dojo-step-{resident.step}",
                    "dojo": {**resident.info(), "requested": req.model, "applied_profile": req.apply_profile,
                             "system_prompt": system_prompt}}
            generated = pieces(resident, prompt, sampling, processors)
            if req.stream:
                include_usage = bool(req.stream_options and req.stream_options.include_usage)
                handed_over = True          # the response releases the model when the stream ends, however
                return CleanupStreamingResponse(sse(generated, meta, include_usage), done,
                                                media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
            text, last = [], None
            async for piece in generated:
                text.append(piece.text)
                last = piece
            return {**meta, "object": "chat.completion",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(text)},
                                 "finish_reason": last.finish_reason, "logprobs": None}],
                    "usage": usage(last)}
        finally:
            if not handed_over:
                await done()

    @app.get("/", response_class=HTMLResponse)
    async def index(request: Request):
        if not page_allowed(request):
            return HTMLResponse(page.login_page(), status_code=401, headers={
                **page.SECURITY_HEADERS, "WWW-Authenticate": 'Basic realm="dojo oracle", charset="UTF-8"'})
        html = await anyio.to_thread.run_sync(page.render, cfg, models.names())
        return HTMLResponse(html, headers=page.SECURITY_HEADERS)

    @app.post("/login")
    async def login(request: Request):
        from urllib.parse import parse_qs

        raw = await read_body(request, 4096)
        given = parse_qs(raw.decode("utf-8", "replace")).get("key", [None])[0]
        if not auth.matches(given, key):
            return HTMLResponse(page.login_page("That is not the key."), status_code=401,
                                headers=page.SECURITY_HEADERS)
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(auth.COOKIE, auth.cookie_value(key), httponly=True, samesite="strict", path="/")
        return response

    return app


def usage(piece) -> dict:
    return {"prompt_tokens": piece.prompt_tokens, "completion_tokens": piece.completion_tokens,
            "total_tokens": piece.prompt_tokens + piece.completion_tokens}


async def sse(generated, meta: dict, include_usage: bool) -> AsyncIterator[str]:
    """Server-sent events in OpenAI's shape: a role chunk, content chunks, a finish chunk, (usage), [DONE]. An
    error after the stream began is sent as an ``error`` event (the openai client raises it), never a traceback."""
    def event(delta: dict, finish: str | None = None) -> str:
        chunk = {**meta, "object": "chat.completion.chunk",
                 "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}
        return f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"

    yield event({"role": "assistant", "content": ""})
    try:
        async for piece in generated:
            if piece.text:
                yield event({"content": piece.text})
            if piece.finish_reason:
                yield event({}, piece.finish_reason)
                if include_usage:
                    last = {**meta, "object": "chat.completion.chunk", "choices": [], "usage": usage(piece)}
                    yield f"data: {json.dumps(last)}\n\n"
    except Exception:  # noqa: BLE001 - the client gets an error event; the traceback goes to the server log
        log.exception("generation failed for %s", meta["model"])
        failed = APIError(500, "generation failed (details are in the server log)", "server_error")
        yield f"data: {json.dumps(failed.body())}\n\n"
        return
    finally:
        await generated.aclose()
    yield "data: [DONE]\n\n"


# ---------------------------------------------------------------- running it
def serve(cfg, host: str | None = None, port: int | None = None, log_line=print) -> None:
    """Run the Oracle in the foreground (uvicorn) until interrupted; see the module docstring."""
    import uvicorn

    host = host or cfg.serve.host
    port = port or cfg.serve.port
    if not 1 <= port <= 65535:
        raise ValueError(f"--port {port}: use a port number")
    key = auth.server_key(cfg.root, host)
    if key.created:
        log_line(f"created the Oracle's API key (shown once; it is stored in {key.source}, mode 0600):\n  {key.value}")
    else:
        log_line(f"API key: from {key.source}")
    log_line(f"the Oracle: http://{host}:{port}/ (page), http://{host}:{port}/v1 (OpenAI API)")
    uvicorn.run(create_app(cfg, key.value), host=host, port=port, log_level="info", access_log=False,
                timeout_graceful_shutdown=10)
