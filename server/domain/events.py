"""Event names a function may subscribe to (Appwrite 0.13.4's app/config/events.php)."""

EVENT_NAMES = frozenset(
    """
    account.create account.update.email account.update.name account.update.password
    account.update.prefs account.recovery.create account.recovery.update
    account.verification.create account.verification.update account.delete
    account.sessions.create account.sessions.delete account.sessions.update
    database.collections.create database.collections.update database.collections.delete
    database.attributes.create database.attributes.delete
    database.indexes.create database.indexes.delete
    database.documents.create database.documents.update database.documents.delete
    functions.create functions.update functions.delete
    functions.deployments.create functions.deployments.update functions.deployments.delete
    functions.executions.create functions.executions.update
    storage.files.create storage.files.update storage.files.delete
    storage.buckets.create storage.buckets.update storage.buckets.delete
    users.create users.update.prefs users.update.email users.update.name
    users.update.password users.update.status users.delete users.sessions.delete
    teams.create teams.update teams.delete
    teams.memberships.create teams.memberships.update teams.memberships.update.status
    teams.memberships.delete
    """.split()
)
