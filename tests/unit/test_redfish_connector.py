"""Pure parts of the Redfish connector: error-body parsing, Retry-After, backoff, URL joining under
a path prefix, credential resolution and the log redaction of auth headers."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgefleet.errors import BmcError
from edgefleet.inventory.model import BmcTls, CredentialsRef
from edgefleet.redfish import Connector, RetryPolicy, error_from_response, resolve_password
from edgefleet.redfish.responses import parse_retry_after as _parse_retry_after
from edgefleet.redfish.transport import _RedactAuthHeaders


def make(url: str) -> Connector:
    return Connector(base_url=url, bmc="n1", username="u", password="hunter2-zz", client=httpx.AsyncClient(),
                     tls=BmcTls())


def test_error_body_extended_info_is_parsed() -> None:
    body = {"error": {"code": "Base.1.8.GeneralError", "message": "A general error has occurred.",
                      "@Message.ExtendedInfo": [
                          {"MessageId": "Base.1.8.PropertyValueNotInList",
                           "Message": "The value Foo for the property ResetType is not in the list.",
                           "Resolution": "Choose a value from the enumeration list."},
                          {"MessageId": "Base.1.8.Other"}]}}
    e = error_from_response(400, json.dumps(body).encode(), bmc="n1", operation="reset", method="POST",
                            url="https://b/redfish/v1/x")
    assert isinstance(e, BmcError) and e.status == 400 and not e.transient
    assert e.bmc == "n1" and e.operation == "reset"
    text = str(e)
    assert text.startswith("BMC n1: reset: POST https://b/redfish/v1/x -> HTTP 400: A general error")
    assert "not in the list. (resolution: Choose a value" in text and "Base.1.8.Other" in text


@pytest.mark.parametrize("status, transient", [(500, True), (502, True), (503, True), (504, True),
                                               (501, False), (400, False), (401, False), (404, False),
                                               (412, False), (429, True)])
def test_transient_by_status(status: int, transient: bool) -> None:
    e = error_from_response(status, b"", bmc="n1", operation="op", method="GET", url="u")
    assert e.transient is transient and e.status == status and "(empty body)" in str(e)


def test_non_json_error_body_is_quoted_briefly() -> None:
    e = error_from_response(502, b"<html>" + b"x" * 1000, bmc="n1", operation="op", method="GET", url="u")
    assert "<html>xxx" in str(e) and len(str(e)) < 400


@given(st.binary(max_size=300), st.integers(min_value=400, max_value=599))
def test_error_parsing_never_raises(content: bytes, status: int) -> None:
    e = error_from_response(status, content, bmc="b", operation="o", method="GET", url="u")
    assert isinstance(e, BmcError) and e.status == status


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                    lambda c: st.lists(c, max_size=3) | st.dictionaries(
                        st.sampled_from(["error", "message", "@Message.ExtendedInfo", "Message", "x"]), c,
                        max_size=3), max_leaves=10))
def test_error_parsing_survives_odd_shapes(body: object) -> None:
    e = error_from_response(500, json.dumps(body).encode(), bmc="b", operation="o", method="GET", url="u")
    assert e.transient


def test_retry_after_forms() -> None:
    assert _parse_retry_after("7", 0.0) == 7.0
    assert _parse_retry_after(None, 0.0) is None
    assert _parse_retry_after("soon", 0.0) is None
    now = 1_700_000_000.0
    assert _parse_retry_after("Tue, 14 Nov 2023 22:13:30 GMT", now) == pytest.approx(10.0)
    assert _parse_retry_after("Tue, 14 Nov 2023 22:13:00 GMT", now) == 0.0


def test_backoff_grows_and_is_capped() -> None:
    r = RetryPolicy(backoff_s=0.5, backoff_max_s=3)
    assert [r.delay(i) for i in (1, 2, 3, 4, 5)] == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_url_joining_with_and_without_prefix() -> None:
    plain = make("https://bmc.example:8443/")
    assert plain.url("/redfish/v1/Systems/1") == "https://bmc.example:8443/redfish/v1/Systems/1"
    assert plain.url("redfish/v1/") == "https://bmc.example:8443/redfish/v1/"
    pre = make("http://127.0.0.1:9000/bmc/node-a")
    assert pre.url("/redfish/v1/") == "http://127.0.0.1:9000/bmc/node-a/redfish/v1/"
    assert pre.url("/bmc/node-a/redfish/v1/Systems/1") == "http://127.0.0.1:9000/bmc/node-a/redfish/v1/Systems/1"
    assert pre.url("http://127.0.0.1:9000/bmc/node-a/x") == "http://127.0.0.1:9000/bmc/node-a/x"
    with pytest.raises(BmcError, match="outside the BMC"):
        pre.url("http://198.51.100.7/redfish/v1/")
    with pytest.raises(BmcError, match="not an http"):
        make("ftp://x")


def test_password_from_env_and_file(tmp_path: Path) -> None:
    ref = CredentialsRef(username="admin", password_env="BMC_PW")
    assert resolve_password("n1", ref, environ={"BMC_PW": "pw"}) == "pw"
    with pytest.raises(BmcError) as ei:
        resolve_password("n1", ref, environ={})
    assert "BMC_PW" in str(ei.value) and ei.value.bmc == "n1" and not ei.value.transient
    (tmp_path / "pw.txt").write_text("from-file\n")
    fref = CredentialsRef(username="admin", password_file="pw.txt")
    assert resolve_password("n1", fref, base_dir=tmp_path) == "from-file"
    with pytest.raises(BmcError, match="cannot read password_file"):
        resolve_password("n1", CredentialsRef(username="a", password_file=str(tmp_path / "nope")))
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(BmcError, match="is empty"):
        resolve_password("n1", CredentialsRef(username="a", password_file=str(tmp_path / "empty")))


def test_password_is_not_in_repr() -> None:
    assert "hunter2-zz" not in repr(make("https://b"))


def test_redaction_of_auth_headers_in_trace_logs() -> None:
    rec = logging.LogRecord("httpcore.http11", logging.DEBUG, "f", 1,
                            "receive_response_headers.complete return_value=(b'HTTP/1.1', 201, b'Created', "
                            "[(b'X-Auth-Token', b'secret-token'), (b'Location', b'/s/1')])", None, None)
    assert _RedactAuthHeaders().filter(rec)
    msg = rec.getMessage()
    assert "secret-token" not in msg and "<redacted>" in msg and "/s/1" in msg
