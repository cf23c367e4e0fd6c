"""A local stand-in of the OpenCTI platform's connector-manager API.

OpenCTI needs Elasticsearch, Redis, RabbitMQ and S3 storage to run. The sandbox
stands in for it in tests and demos. It serves the part of the OpenCTI GraphQL
API that xtm-composer uses (`schema.graphql`, a subset of the OpenCTI schema),
with the platform's rules for catalog entries, contract hashes and encrypted
values. Tests and demos drive it as a platform user would, through
`SandboxAdmin` or the `xtm-composer sandbox` command.

    state = SandboxState()                      # bundled connector-test entry
    with SandboxServer(state, token="t") as server:
        ...                                     # point xtm-composer at server.url
"""

from xtm_composer.sandbox.admin import SandboxAdmin, SandboxAdminError
from xtm_composer.sandbox.catalog import CatalogEntry, CatalogError, load_catalog
from xtm_composer.sandbox.server import SandboxServer, create_app
from xtm_composer.sandbox.state import SandboxError, SandboxState, StateFileError

__all__ = [
    "CatalogEntry",
    "CatalogError",
    "SandboxAdmin",
    "SandboxAdminError",
    "SandboxError",
    "SandboxServer",
    "SandboxState",
    "StateFileError",
    "create_app",
    "load_catalog",
]
