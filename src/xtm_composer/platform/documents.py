"""GraphQL documents of the OpenCTI connector-manager API.

Tests validate each document against the OpenCTI schema.
"""

ABOUT = """
query XtmComposerAbout {
  about {
    version
  }
}
"""

REGISTER_MANAGER = """
mutation XtmComposerRegister($input: RegisterConnectorsManagerInput!) {
  registerConnectorsManager(input: $input) {
    id
    about_version
  }
}
"""

PING_MANAGER = """
mutation XtmComposerPing($input: UpdateConnectorManagerStatusInput!) {
  updateConnectorManagerStatus(input: $input) {
    id
    about_version
  }
}
"""

LIST_CONNECTORS = """
query XtmComposerConnectors {
  connectorsForManagers {
    id
    name
    manager_contract_image
    manager_contract_hash
    manager_current_status
    manager_requested_status
    manager_contract_configuration {
      key
      value
      encrypted
    }
  }
}
"""

UPDATE_CURRENT_STATUS = """
mutation XtmComposerStatus($input: CurrentConnectorStatusInput!) {
  updateConnectorCurrentStatus(input: $input) {
    id
    manager_current_status
  }
}
"""

UPDATE_LOGS = """
mutation XtmComposerLogs($input: LogsConnectorStatusInput!) {
  updateConnectorLogs(input: $input)
}
"""

UPDATE_HEALTH = """
mutation XtmComposerHealth($input: HealthConnectorStatusInput!) {
  updateConnectorHealth(input: $input)
}
"""

ALL = {
    "about": ABOUT,
    "register_manager": REGISTER_MANAGER,
    "ping_manager": PING_MANAGER,
    "list_connectors": LIST_CONNECTORS,
    "update_current_status": UPDATE_CURRENT_STATUS,
    "update_logs": UPDATE_LOGS,
    "update_health": UPDATE_HEALTH,
}
