"""Log formats and secret masking."""

from __future__ import annotations

import io
import json

from xtm_composer import logs


def capture(log_format: str) -> io.StringIO:
    stream = io.StringIO()
    logs.configure_logging("debug", log_format, stream)
    return stream


def test_pretty_format_matches_contract() -> None:
    """Pretty lines read `LEVEL key="value" message`."""
    stream = capture("pretty")

    logs.get_logger("t").info(
        "Successfully created imagePullSecret",
        orchestrator="kubernetes",
        secret="opencti-registry-auth",
    )

    line = stream.getvalue().strip()
    assert line.endswith(
        'INFO orchestrator="kubernetes" secret="opencti-registry-auth" '
        "Successfully created imagePullSecret"
    )


def test_json_format_is_one_object_per_line() -> None:
    """JSON lines carry level, message and fields."""
    stream = capture("json")

    logs.get_logger("t").warning("Something", connector_id="c1")

    record = json.loads(stream.getvalue())
    assert "warning" == record["level"]
    assert "Something" == record["message"]
    assert "c1" == record["connector_id"]


def test_registered_secret_masked_in_both_formats() -> None:
    """A registered secret is masked in messages, fields, nested values and errors."""
    logs.register_secret("hunter2-password")
    for log_format in ("json", "pretty"):
        stream = capture(log_format)
        log = logs.get_logger("t")

        log.error(
            "failed with hunter2-password",
            error=ValueError("auth hunter2-password rejected"),
            nested={"list": ["x-hunter2-password-y"]},
        )

        output = stream.getvalue()
        assert "hunter2-password" not in output
        assert logs.MASK in output


def test_short_values_not_masked() -> None:
    """Values too short to be secrets do not blank out ordinary text."""
    logs.register_secret("ab")

    assert "about" == logs.mask_secrets("about")


def test_debug_filtered_at_info() -> None:
    """Debug events are dropped at level info."""
    stream = io.StringIO()
    logs.configure_logging("info", "json", stream)

    logs.get_logger("t").debug("hidden")

    assert "" == stream.getvalue()


def test_pretty_renders_maps_as_json() -> None:
    """Maps and lists in pretty lines are JSON, not Python reprs."""
    stream = capture("pretty")

    logs.get_logger("t").info("Environment", environment={"KEY": "c'est"})

    assert 'environment={"KEY": "c\'est"}' in stream.getvalue()
