"""The STOW-RS multipart/related splitter (RFC 2046 5.1) and media-type parsing, on edge cases
the integration tests' clients do not produce."""

from __future__ import annotations

import pytest

from ortho_node.web.stow import MultipartError, media_type_and_params, split_multipart


def test_preamble_epilogue_and_binary_content_with_crlf_are_kept_exact() -> None:
    payload = b"\r\n--not-the-boundary\r\n\x00\xff" * 3
    body = (
        b"ignored preamble\r\n"
        b"--b0und\r\nContent-Type: application/dicom\r\nContent-ID: <1>\r\n\r\n" + payload + b"\r\n"
        b"--b0und\r\n\r\nsecond\r\n"  # no headers at all
        b"--b0und--\r\nepilogue"
    )
    (first_headers, first), (second_headers, second) = split_multipart(body, "b0und")
    assert bytes(first) == payload
    assert first_headers == {"content-type": "application/dicom", "content-id": "<1>"}
    assert bytes(second) == b"second" and second_headers == {}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"no delimiter here", "no multipart boundary"),
        (b"--b\r\nContent-Type: application/dicom\r\n\r\ndata with no end", "no closing multipart boundary"),
        (b"--b\r\nContent-Type: application/dicom\r\n--b--", "no blank line after its headers"),
        (b"--b", "truncated"),
    ],
)
def test_malformed_bodies_are_refused_with_a_reason(body: bytes, message: str) -> None:
    with pytest.raises(MultipartError, match=message):
        split_multipart(body, "b")


def test_media_type_parameters_are_parsed_case_insensitively_and_unquoted() -> None:
    media_type, params = media_type_and_params('Multipart/Related; TYPE="application/dicom"; boundary="a b"')
    assert media_type == "multipart/related"
    assert params == {"type": "application/dicom", "boundary": "a b"}
