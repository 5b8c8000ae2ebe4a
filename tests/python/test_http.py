"""Streamable HTTP: both protocol eras, bearer token, Host/Origin allowlist, body limit."""

import httpx2
import pytest

from conftest import TOOL_NAMES, http_server, ids, ok
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

pytestmark = pytest.mark.anyio
TOKEN = "s3cret-token"
INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_http_both_eras_with_token(workspace, mode):
    with http_server(workspace, ["--token", TOKEN]) as srv:
        async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"}) as http:
            async with Client(streamable_http_client(srv.url, http_client=http), mode=mode,
                              read_timeout_seconds=60, cache=None) as c:
                assert c.protocol_version == ("2025-11-25" if mode == "legacy" else "2026-07-28")
                tools = await c.list_tools()
                assert [t.name for t in tools.tools] == TOOL_NAMES
                book = await ids(c)
                t = await ok(c, "read_table", {"workbook_id": book["sales.xlsx"], "sheet_name": "Sales", "limit": 2})
                assert t["returned"] == 2


async def test_http_rejects_missing_or_wrong_token(workspace):
    with http_server(workspace, ["--token", TOKEN]) as srv:
        async with httpx2.AsyncClient() as http:
            r = await http.post(srv.url, json=INIT, headers=HEADERS)
            assert r.status_code == 401 and "Bearer" in r.headers["www-authenticate"]
            assert "bearer token" in r.text
            r = await http.post(srv.url, json=INIT, headers={**HEADERS, "Authorization": "Bearer nope"})
            assert r.status_code == 401
            r = await http.post(srv.url, json=INIT, headers={**HEADERS, "Authorization": f"Bearer {TOKEN}"})
            assert r.status_code == 200


async def test_http_host_origin_and_body_limits(workspace):
    with http_server(workspace, ["--max-body-bytes", "65536"]) as srv:
        async with httpx2.AsyncClient() as http:
            r = await http.post(srv.url, json=INIT, headers=HEADERS)
            assert r.status_code == 200
            # DNS rebinding: a foreign Host or Origin is refused.
            r = await http.post(srv.url, json=INIT, headers={**HEADERS, "Host": "evil.example"})
            assert r.status_code == 403
            r = await http.post(srv.url, json=INIT, headers={**HEADERS, "Origin": "http://evil.example"})
            assert r.status_code == 403
            r = await http.post(srv.url, json=INIT, headers={**HEADERS, "Origin": "http://localhost:3000"})
            assert r.status_code == 200
            big = {**INIT, "params": {**INIT["params"], "pad": "x" * 100_000}}
            r = await http.post(srv.url, json=big, headers=HEADERS)
            assert r.status_code == 413
            assert "over 65536 bytes" in r.text and "--max-body-bytes" in r.text, r.text


async def test_a_body_that_is_not_json_rpc_gets_a_json_rpc_error_that_says_so(workspace):
    """rmcp answers a body it cannot read with 415 and plain text (as if the media type were
    wrong); gemba serve answers 400 with the JSON-RPC error the specifications name: -32700
    for text that is not JSON, -32600 for JSON that is no JSON-RPC message, each saying what
    was wrong. A wrong media type is still 415."""
    with http_server(workspace) as srv:
        async with httpx2.AsyncClient() as http:
            r = await http.post(srv.url, content=b'{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{}',
                                headers=HEADERS)
            assert r.status_code == 400, (r.status_code, r.text)
            err = r.json()
            assert err["jsonrpc"] == "2.0" and err["id"] is None and err["error"]["code"] == -32700, err
            said = err["error"]["message"]
            assert "not JSON (EOF while parsing an object at line 1 column 57)" in said, said

            r = await http.post(srv.url, json={"id": 2, "params": {}}, headers=HEADERS)
            assert r.status_code == 400, (r.status_code, r.text)
            err = r.json()
            assert err["error"]["code"] == -32600 and "no JSON-RPC message" in err["error"]["message"], err

            r = await http.post(srv.url, content=b'{"jsonrpc":"2.0"}', headers={**HEADERS, "Content-Type": "text/plain"})
            assert r.status_code == 415 and "Content-Type must be application/json" in r.text, r.text

            r = await http.post(srv.url, json=INIT, headers=HEADERS)
            assert r.status_code == 200
