"""Render-server input hardening (issue #19 items 4 and 8): JSON nesting and size are bounded before
parsing, JSON fields are strictly typed, and only ``application/json`` bodies are read (415 otherwise)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
from helpers.serve_scenes import gazebo_pose, make_build
from helpers.server import Server

from simgen.serve.api import MAX_JSON_DEPTH, ApiError, json_depth, parse_json_body
from simgen.serve.app import create_app
from simgen.serve.config import ServeConfig
from simgen.serve.scene import load_render_scene

NESTED = b"[" * 100_000


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_build(tmp_path_factory.mktemp("harden") / "build")


@pytest.fixture(scope="module")
def client(folder):
    return create_app(load_render_scene(folder), ServeConfig(max_body_bytes=1 << 20)).test_client()


def body(**extra) -> dict:
    return {"pose": gazebo_pose(), "width": 32, "height": 24, "outputs": ["depth"], **extra}


def error(r) -> tuple[int, str | None, str]:
    data = json.loads(r.data)
    return r.status_code, data["field"], data["error"]


# ----------------------------------------------------------------------------- nesting and size


@pytest.mark.parametrize(
    "text, depth",
    [
        (b"", 0),
        (b"{}", 1),
        (b'{"a": [[1], {"b": []}]}', 4),
        (b'{"s": "' + b"[" * 100 + b'"}', 1),  # brackets inside a string do not count
        (b'{"s": "\\"' + b"[" * 100 + b'"}', 1),  # an escaped quote does not end the string
        (b'{"s": "\\\\"' + b", " + b"[" * 40 + b"]" * 40 + b"}", 41),  # an escaped backslash does
        (b"[" * 100_000, 100_000),
    ],
)
def test_json_depth(text: bytes, depth: int) -> None:
    assert json_depth(text) == depth


@pytest.mark.parametrize("path", ["/render", "/render/batch"])
@pytest.mark.parametrize(
    "raw", [NESTED, b'{"pose": ' + b"{" * 50_000, b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1)]
)
def test_deeply_nested_json_is_400_naming_body(client, path: str, raw: bytes) -> None:
    status, field, message = error(client.post(path, data=raw, content_type="application/json"))
    assert (status, field) == (400, "body") and "nested" in message


def test_nesting_at_the_limit_is_parsed(client) -> None:
    raw = b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH
    status, field, message = error(client.post("/render", data=raw, content_type="application/json"))
    assert (status, field) == (400, "body") and message == "must be a JSON object"


def test_over_long_integer_is_400(client) -> None:
    raw = b'{"width": ' + b"9" * 10_000 + b"}"
    assert error(client.post("/render", data=raw, content_type="application/json"))[:2] == (400, "body")


def test_body_over_the_size_limit_is_413(client) -> None:
    raw = json.dumps(body(pad=" " * (1 << 20))).encode()
    assert error(client.post("/render", data=raw, content_type="application/json"))[:2] == (413, "body")


# ----------------------------------------------------------------------------- content type


@pytest.mark.parametrize(
    "ctype", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None]
)
def test_non_json_content_types_are_415(client, ctype: str | None) -> None:
    headers = {} if ctype is None else {"Content-Type": ctype}
    r = client.post("/render", data=json.dumps(body()), headers=headers)
    status, field, message = error(r)
    assert (status, field) == (415, "body") and "application/json" in message


def test_json_with_charset_is_accepted(client) -> None:
    r = client.post(
        "/render", data=json.dumps(body()), headers={"Content-Type": "application/json; charset=utf-8"}
    )
    assert r.status_code == 200


def test_parse_json_body_direct() -> None:
    with pytest.raises(ApiError) as e:
        parse_json_body(b"{}", "text/plain;charset=UTF-8")
    assert e.value.status == 415
    assert parse_json_body(b'{"a": 1}', "Application/JSON") == {"a": 1}


# ----------------------------------------------------------------------------- strict types


@pytest.mark.parametrize(
    "extra, field",
    [
        ({"width": "32"}, "width"),
        ({"height": "24"}, "height"),
        ({"fx": "30"}, "fx"),
        ({"hfov_deg": "60"}, "hfov_deg"),
        ({"width": True}, "width"),
        ({"width": 32.5}, "width"),
        ({"outputs": "depth"}, "outputs"),
        ({"pose": gazebo_pose() | {"x": "0"}}, "pose.x"),
        ({"pose": {"matrix": [["1", 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]}}, "pose.matrix"),
    ],
)
def test_json_fields_are_strictly_typed(client, extra: dict, field: str) -> None:
    status, got, _ = error(client.post("/render", json=body(**extra)))
    assert (status, got) == (400, field)


def test_integral_float_is_an_integer(client) -> None:
    """JSON Schema's "integer" holds 32.0: writers that only have doubles keep working."""
    assert client.post("/render", json=body(width=32.0)).status_code == 200


def test_query_strings_still_take_text_numbers(client) -> None:
    p = gazebo_pose()
    q = "&".join(f"{k}={v}" for k, v in p.items()) + "&width=32&height=24&hfov_deg=60"
    assert client.get(f"/render/depth.png?{q}").status_code == 200


def test_openapi_declares_415(client) -> None:
    spec = json.loads(client.get("/openapi.json").data)
    for path in ("/render", "/render/batch"):
        assert "415" in spec["paths"][path]["post"]["responses"]


# ----------------------------------------------------------------------------- over real HTTP


@pytest.mark.slow
def test_real_server_answers_nested_json_400_without_a_traceback(folder) -> None:
    """The issue's probe against ``simgen serve`` (waitress on 127.0.0.1): 400 naming ``body``, not a
    500 with a RecursionError traceback in the log; then text/plain gets 415 and the server still works."""
    server = Server(folder).wait()
    try:

        def post(raw: bytes, ctype: str) -> tuple[int, dict]:
            req = urllib.request.Request(server.url + "/render", data=raw, headers={"Content-Type": ctype})
            try:
                with urllib.request.urlopen(req, timeout=60) as r:
                    return r.status, {}
            except urllib.error.HTTPError as e:
                return e.code, json.loads(e.read())

        status, data = post(NESTED, "application/json")
        assert status == 400 and data["field"] == "body"
        status, data = post(json.dumps(body()).encode(), "text/plain")
        assert status == 415 and data["field"] == "body"
        assert post(json.dumps(body()).encode(), "application/json")[0] == 200
    finally:
        server.stop()
    log = "".join(server.log)
    assert "Traceback" not in log and "RecursionError" not in log, log
