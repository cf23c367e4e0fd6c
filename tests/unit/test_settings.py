"""Layered configuration loading and its error messages."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from xtm_composer.settings import ConfigurationError, Orchestrator, load_settings
from xtm_composer.settings.loader import unknown_keys
from xtm_composer.settings.models import Settings

REPO_CONFIG = Path(__file__).resolve().parents[2] / "config"


def write(path: Path, content: dict[str, object]) -> None:
    path.write_text(yaml.safe_dump(content))


def test_shipped_defaults_load() -> None:
    """config/default.yaml loads and agrees with the models' defaults."""
    settings = load_settings(REPO_CONFIG, {})
    model_defaults = Settings.model_validate({"manager": {"id": "x"}})

    assert "default-manager-id" == settings.manager.id
    assert model_defaults.manager.execute_schedule == settings.manager.execute_schedule
    assert model_defaults.opencti.logs_schedule == settings.opencti.logs_schedule
    assert model_defaults.opencti.daemon.selector == settings.opencti.daemon.selector
    assert (
        model_defaults.opencti.daemon.docker.restart_policy
        == settings.opencti.daemon.docker.restart_policy
    )


def test_environment_overrides_files(tmp_path: Path) -> None:
    """Environment variables win over both YAML files, which layer in order."""
    write(tmp_path / "default.yaml", {"manager": {"id": "a", "name": "from-default"}})
    write(tmp_path / "staging.yaml", {"manager": {"name": "from-staging"}})
    environ = {
        "COMPOSER_ENV": "staging",
        "MANAGER__EXECUTE_SCHEDULE": "3",
        "OPENCTI__DAEMON__REGISTRY__SERVER": "registry.example.com",
        "OPENCTI__DAEMON__SELECTOR": "docker",
    }
    settings = load_settings(tmp_path, environ)

    assert "a" == settings.manager.id
    assert "from-staging" == settings.manager.name
    assert 3 == settings.manager.execute_schedule
    assert settings.opencti.daemon.registry is not None
    assert "registry.example.com" == settings.opencti.daemon.registry.server
    assert Orchestrator.DOCKER == settings.opencti.daemon.selector


def test_missing_environment_file_is_fine(tmp_path: Path) -> None:
    """A COMPOSER_ENV file that does not exist is skipped."""
    write(tmp_path / "default.yaml", {"manager": {"id": "a"}})

    settings = load_settings(tmp_path, {"COMPOSER_ENV": "nowhere"})

    assert "a" == settings.manager.id


def test_json_list_and_map_from_environment(tmp_path: Path) -> None:
    """Lists and maps can be given as JSON in one variable."""
    environ = {
        "MANAGER__ID": "a",
        "OPENCTI__DAEMON__DOCKER__DNS": '["127.0.0.53", "127.0.0.54"]',
        "OPENCTI__DAEMON__DOCKER__SYSCTLS": '{"net.core.somaxconn": "1024"}',
    }
    docker = load_settings(tmp_path, environ).opencti.daemon.docker

    assert ["127.0.0.53", "127.0.0.54"] == docker.dns
    assert {"net.core.somaxconn": "1024"} == docker.sysctls


def test_indexed_map_becomes_list(tmp_path: Path) -> None:
    """`KEY__0`, `KEY__1` variables form a list in index order."""
    environ = {
        "MANAGER__ID": "a",
        "OPENCTI__HTTPS_PROXY_CA__1": "/second.pem",
        "OPENCTI__HTTPS_PROXY_CA__0": "/first.pem",
    }
    settings = load_settings(tmp_path, environ)

    assert ["/first.pem", "/second.pem"] == settings.opencti.https_proxy_ca


def test_invalid_json_names_variable(tmp_path: Path) -> None:
    """Broken JSON in a variable names the variable."""
    environ = {"MANAGER__ID": "a", "OPENCTI__DAEMON__DOCKER__DNS": "[not json"}

    with pytest.raises(ConfigurationError, match="OPENCTI__DAEMON__DOCKER__DNS"):
        load_settings(tmp_path, environ)


def test_invalid_value_names_key_value_and_fix(tmp_path: Path) -> None:
    """A bad value is reported with its key, the value and the variable to fix it."""
    environ = {"MANAGER__ID": "a", "OPENCTI__DAEMON__SELECTOR": "dockr"}

    with pytest.raises(ConfigurationError) as caught:
        load_settings(tmp_path, environ)

    message = str(caught.value)
    assert "opencti.daemon.selector" in message
    assert '"dockr"' in message
    assert "OPENCTI__DAEMON__SELECTOR" in message


def test_missing_manager_id_reported(tmp_path: Path) -> None:
    """A missing manager id is reported with how to set it."""
    with pytest.raises(
        ConfigurationError, match=r"manager\.id is missing.*MANAGER__ID"
    ):
        load_settings(tmp_path, {})


def test_secret_values_hidden_in_errors(tmp_path: Path) -> None:
    """An invalid secret-bearing value is not echoed in the error."""
    write(tmp_path / "default.yaml", {"manager": {"id": "a"}})
    environ = {"OPENCTI__DAEMON__REGISTRY__PASSWORD": '{"leaked": "hunter2-value"}'}

    with pytest.raises(ConfigurationError) as caught:
        load_settings(tmp_path, environ)

    assert "hunter2-value" not in str(caught.value)
    assert "<hidden>" in str(caught.value)


def test_yaml_must_be_mapping(tmp_path: Path) -> None:
    """A YAML file whose top level is not a mapping is rejected with its path."""
    (tmp_path / "default.yaml").write_text("- a\n- b\n")

    with pytest.raises(ConfigurationError, match=r"default\.yaml must contain a map"):
        load_settings(tmp_path, {})


def test_broken_yaml_reported(tmp_path: Path) -> None:
    """Invalid YAML is reported with the file name."""
    (tmp_path / "default.yaml").write_text("manager: [unclosed\n")

    with pytest.raises(ConfigurationError, match="not valid YAML"):
        load_settings(tmp_path, {})


def test_url_needs_scheme(tmp_path: Path) -> None:
    """A platform URL without scheme is rejected."""
    environ = {"MANAGER__ID": "a", "OPENCTI__URL": "opencti.example.com"}

    with pytest.raises(ConfigurationError, match=r"opencti\.url"):
        load_settings(tmp_path, environ)


def test_unknown_keys_are_kept(tmp_path: Path) -> None:
    """Keys of the reference configuration this version ignores do not fail."""
    write(
        tmp_path / "default.yaml",
        {"manager": {"id": "a", "logger": {"directory": True, "console": True}}},
    )

    settings = load_settings(tmp_path, {})

    assert "info" == settings.manager.logger.level


def test_invalid_registry_server_fails_at_start(tmp_path: Path) -> None:
    """A registry server that cannot work is reported with its key at start."""
    environ = {"MANAGER__ID": "a", "OPENCTI__DAEMON__REGISTRY__SERVER": "host:99999"}

    with pytest.raises(ConfigurationError) as caught:
        load_settings(tmp_path, environ)

    assert "opencti.daemon.registry.server" in str(caught.value)
    assert "Value error" not in str(caught.value)


def test_non_utf8_file_reported(tmp_path: Path) -> None:
    """A configuration file that is not UTF-8 is one clear error, not a traceback."""
    (tmp_path / "default.yaml").write_bytes(b"manager:\n  id: \xff\n")

    with pytest.raises(ConfigurationError, match="not UTF-8"):
        load_settings(tmp_path, {})


def test_named_config_folder_must_exist(tmp_path: Path) -> None:
    """A configuration folder given by the operator must exist."""
    environ = {"COMPOSER_CONFIG_DIR": str(tmp_path / "absent"), "MANAGER__ID": "a"}

    with pytest.raises(ConfigurationError, match="does not exist"):
        load_settings(None, environ)


def test_empty_key_path_means_unset(tmp_path: Path) -> None:
    """An empty key file path is treated as not set."""
    environ = {"MANAGER__ID": "a", "MANAGER__CREDENTIALS_KEY_FILEPATH": ""}

    settings = load_settings(tmp_path, environ)

    assert settings.manager.credentials_key_filepath is None


def test_unknown_keys_listed(tmp_path: Path) -> None:
    """Misspelled keys are listed so that the agent can warn about them."""
    write(
        tmp_path / "default.yaml",
        {"manager": {"id": "a", "idd": "b", "logger": {"directory": True}}},
    )
    environ = {"MANAGER__EXECUT_SCHEDULE": "3", "OPENCTI__DAEMON__SELECTR": "docker"}

    settings = load_settings(tmp_path, environ)

    assert ["manager.execut_schedule", "manager.idd", "opencti.daemon.selectr"] == (
        sorted(unknown_keys(settings))
    )
