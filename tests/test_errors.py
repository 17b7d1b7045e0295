"""Secrets never reach a message; ordinary words about keys are left as written."""

from __future__ import annotations

import pytest

from bria_dagster.errors import BriaError, redact


@pytest.mark.parametrize(
    "text",
    [
        "sent Authorization: Key 1b2c3d4e-aaaa-bbbb-cccc-0123456789ab:9f8e7d6c5b4a",
        "headers={'authorization': 'Key ab12cd34:secretpart'}",
        "Key test-key-0 was refused",
    ],
)
def test_an_echoed_credential_is_redacted(text, monkeypatch):
    monkeypatch.delenv("FAL_KEY", raising=False)
    out = redact(text)
    assert "Key ***" in out or "key ***" in out.lower()
    assert "secretpart" not in out and "9f8e7d6c5b4a" not in out and "test-key-0" not in out


@pytest.mark.parametrize(
    "text",
    [
        "the key is read from the FAL_KEY environment variable",
        "remove `fal_key` from `resource`; set FAL_KEY instead",
        "a key in YAML would be shown",
    ],
)
def test_prose_about_keys_is_left_alone(text, monkeypatch):
    monkeypatch.delenv("FAL_KEY", raising=False)
    assert redact(text) == text


def test_the_environment_key_and_both_halves_are_redacted_everywhere(monkeypatch):
    monkeypatch.setenv("FAL_KEY", "my-key-id-123:my-key-secret-456")
    error = BriaError("failed with my-key-id-123:my-key-secret-456 and my-key-secret-456 alone")
    assert "my-key" not in str(error)
    assert str(error).count("***") == 2
