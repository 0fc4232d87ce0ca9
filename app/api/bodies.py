"""JSON request bodies, bounded in structure before they are parsed.

A body is parsed on the event loop (and would be in a thread too: neither json nor orjson lets go
of the GIL while parsing), so what a parse costs is what every request of the process waits. The
cost is the objects made: 8 MB of nested empty lists are 1.7 million lists and a second of
parsing with either parser, while 8 MB of numbers parse in 40 ms with orjson. A request of this
API holds at most a few arrays and objects per example or input, so a body with more than
MAX_CONTAINERS of them is refused (422 `too_many_values`) from a count of its brackets, before
any is made; the rest is parsed by orjson (3-4x json on numbers), or by json where orjson refuses
(json takes NaN and Infinity, which the routes refuse naming the field).

The same routes take `multipart/form-data`, for images as files (`curl -F 'support[cat]=@cat.png'`): the
form becomes the JSON body it stands for (`as_json`), so it meets the same checks, limits and errors."""

from __future__ import annotations

import base64
import json
import re
from typing import Any

import orjson
from fastapi import Request
from fastapi.routing import APIRoute
from starlette.datastructures import UploadFile

from .errors import BodyRefused, invalid

# 1,000 inputs of a base whose input is a nested [3, 32, 32] array hold 100 arrays each
MAX_CONTAINERS = 200_000


class BoundedJSONRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            if body.count(b"[") + body.count(b"{") > MAX_CONTAINERS:
                message = f"the body holds more than {MAX_CONTAINERS} JSON arrays and objects"
                raise BodyRefused(invalid("too_many_values", message, "body"))
            try:
                self._json = orjson.loads(body)
            except orjson.JSONDecodeError:  # NaN and Infinity too: json takes them, for a 422 naming the field
                self._json = json.loads(body)  # or raises the JSONDecodeError FastAPI answers invalid_json
        return self._json


SUPPORT_FILE = re.compile(r"support\[(.+)\]")  # a support example's file, its label in the brackets
JSON_FIELDS = ("metadata",)  # form fields that hold JSON (an object), not text


async def as_json(request: Request) -> Request:
    """A multipart/form-data request as the JSON request it stands for: a file named
    `support[LABEL]` is a support example of that label, a file named `inputs` a query input
    (in the order sent), each {"image": its base64}; text fields are the body's other fields
    (`metadata` as a JSON object). Its size was bounded as it was read, like any body."""
    settings = request.app.state.settings
    try:
        form = await request.form(max_files=settings.max_support + settings.max_query, max_fields=100)
    except Exception as exc:  # a malformed form, or more parts than allowed
        raise BodyRefused(invalid("invalid_form", f"the multipart body could not be read: {exc}", "body")) from None
    body: dict[str, Any] = {}
    for name, value in form.multi_items():
        label = SUPPORT_FILE.fullmatch(name)
        if isinstance(value, UploadFile):
            image = {"image": base64.b64encode(await value.read()).decode()}
            if label:
                body.setdefault("support", []).append({"input": image, "label": label.group(1)})
            elif name == "inputs":
                body.setdefault("inputs", []).append(image)
            else:
                message = "a file must be named support[LABEL] (an example of LABEL) or inputs (a query)"
                raise BodyRefused(invalid("invalid_form", message, name))
        elif name in JSON_FIELDS:
            try:
                body[name] = json.loads(value)
            except ValueError:
                raise BodyRefused(invalid("invalid_form", f"{name} must be a JSON object", name)) from None
        else:
            body[name] = value
    await form.close()
    data = orjson.dumps(body)
    headers = [(k, v) for k, v in request.scope["headers"] if k not in (b"content-type", b"content-length")]
    headers += [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    sent, original = False, request.receive

    async def receive():
        nonlocal sent
        if sent:
            return await original()  # the body was read: what comes next is the client leaving
        sent = True
        return {"type": "http.request", "body": data, "more_body": False}

    return Request(dict(request.scope, headers=headers), receive)


class BoundedJSONRoute(APIRoute):
    """The route class of the routers that take JSON bodies (or forms that stand for them)."""

    def get_route_handler(self):
        handle = super().get_route_handler()

        async def bounded(request: Request):
            if request.headers.get("content-type", "").startswith("multipart/form-data"):
                request = await as_json(request)
            return await handle(BoundedJSONRequest(request.scope, request.receive))

        return bounded
