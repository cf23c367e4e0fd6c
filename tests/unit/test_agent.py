"""Start-up wiring of the agent."""

from __future__ import annotations

from xtm_composer import agent, logs
from xtm_composer.settings.models import Settings


def test_platform_url_password_masked() -> None:
    """Credentials written in the platform URL never reach the logs."""
    settings = Settings.model_validate(
        {
            "manager": {"id": "a"},
            "opencti": {"url": "http://admin:Url%40Pass@127.0.0.1"},
        }
    )

    agent.register_settings_secrets(settings)

    assert "Url%40Pass" not in logs.mask_secrets("http://admin:Url%40Pass@127.0.0.1")
    assert "Url@Pass" not in logs.mask_secrets("user Url@Pass")
