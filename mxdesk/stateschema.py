"""The schema of the state database: script N brings it to PRAGMA user_version N."""

SCHEMA = [
    """
    CREATE TABLE tenants (
        slug TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        plan TEXT NOT NULL CHECK (plan IN ('basic', 'plus', 'premium')),
        created REAL NOT NULL
    );
    CREATE TABLE domains (
        name TEXT PRIMARY KEY,
        tenant TEXT NOT NULL REFERENCES tenants(slug),
        kind TEXT NOT NULL CHECK (kind IN ('hosted', 'own')),
        status TEXT NOT NULL CHECK (status IN ('pending', 'active', 'disabled')),
        created REAL NOT NULL
    );
    CREATE TABLE mailboxes (
        address TEXT PRIMARY KEY,
        tenant TEXT NOT NULL REFERENCES tenants(slug),
        name TEXT NOT NULL,
        default_inbox INTEGER NOT NULL DEFAULT 0,
        active INTEGER NOT NULL DEFAULT 1,
        created REAL NOT NULL
    );
    CREATE INDEX mailboxes_tenant ON mailboxes(tenant);
    """,
    """
    CREATE TABLE dkim_keys (
        domain TEXT NOT NULL,
        selector TEXT NOT NULL,
        algorithm TEXT NOT NULL CHECK (algorithm IN ('rsa-sha256', 'ed25519-sha256')),
        path TEXT NOT NULL,
        created REAL NOT NULL,
        PRIMARY KEY (domain, selector)
    );
    """,
    """
    CREATE TABLE operators (
        tenant TEXT NOT NULL REFERENCES tenants(slug),
        name TEXT NOT NULL,
        signature TEXT NOT NULL DEFAULT '',
        created REAL NOT NULL,
        PRIMARY KEY (tenant, name)
    );
    CREATE TABLE generic_signatures (
        tenant TEXT PRIMARY KEY REFERENCES tenants(slug),
        signature TEXT NOT NULL
    );
    ALTER TABLE mailboxes ADD COLUMN operator_signatures INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE mailboxes ADD COLUMN generic_signature INTEGER NOT NULL DEFAULT 1;
    """,
    """
    CREATE TABLE outboxes (
        tenant TEXT PRIMARY KEY REFERENCES tenants(slug),
        host TEXT NOT NULL,
        port INTEGER NOT NULL CHECK (port BETWEEN 1 AND 65535),
        security TEXT NOT NULL CHECK (security IN ('ssl', 'starttls', 'none')),
        user TEXT NOT NULL,
        password BLOB NOT NULL,
        address TEXT NOT NULL,
        sender_name TEXT NOT NULL DEFAULT '',
        verify INTEGER NOT NULL DEFAULT 1,
        ca_file TEXT NOT NULL DEFAULT '',
        updated REAL NOT NULL
    );
    """,
    # The domain lifecycle: pending -> publishing -> propagating -> active (SQLite cannot
    # change a CHECK constraint, so the table is rebuilt). Domains active before keep it.
    """
    CREATE TABLE domains_new (
        name TEXT PRIMARY KEY,
        tenant TEXT NOT NULL REFERENCES tenants(slug),
        kind TEXT NOT NULL CHECK (kind IN ('hosted', 'own')),
        status TEXT NOT NULL CHECK (status IN
            ('pending', 'publishing', 'propagating', 'active', 'disabled')),
        created REAL NOT NULL,
        token TEXT NOT NULL DEFAULT '',
        last_error TEXT NOT NULL DEFAULT '',
        served INTEGER NOT NULL DEFAULT 0,
        expected INTEGER NOT NULL DEFAULT 0,
        checked REAL,
        next_action REAL NOT NULL DEFAULT 0,
        attempts INTEGER NOT NULL DEFAULT 0,
        activated REAL,
        forced INTEGER NOT NULL DEFAULT 0,
        owner_notified INTEGER NOT NULL DEFAULT 0
    );
    INSERT INTO domains_new (name, tenant, kind, status, created, activated, owner_notified)
        SELECT name, tenant, kind, status, created,
               CASE WHEN status = 'active' THEN created END, 1 FROM domains;
    DROP TABLE domains;
    ALTER TABLE domains_new RENAME TO domains;
    CREATE INDEX domains_status ON domains(status, next_action);
    """,
    # A tenant can be disabled: its addresses answer 550 and it may not send; nothing is lost.
    """
    ALTER TABLE tenants ADD COLUMN status TEXT NOT NULL DEFAULT 'active'
        CHECK (status IN ('active', 'disabled'));
    """,
    # Company mailboxes read over IMAP or POP3 (channels). The secret is the password, or for
    # OAuth 2.0 the refresh token, encrypted (mxdesk.secrets) and bound to the channel's name;
    # the access token is kept encrypted too, with its expiry, so a restart does not refresh.
    """
    CREATE TABLE channels (
        name TEXT PRIMARY KEY,
        tenant TEXT NOT NULL REFERENCES tenants(slug),
        address TEXT NOT NULL UNIQUE,
        protocol TEXT NOT NULL CHECK (protocol IN ('imap', 'pop3')),
        security TEXT NOT NULL CHECK (security IN ('ssl', 'starttls', 'none')),
        host TEXT NOT NULL,
        port INTEGER NOT NULL CHECK (port BETWEEN 1 AND 65535),
        user TEXT NOT NULL,
        auth TEXT NOT NULL CHECK (auth IN ('password', 'oauth2')),
        oauth_provider TEXT NOT NULL DEFAULT '',
        secret BLOB NOT NULL,
        access_token BLOB NOT NULL DEFAULT x'',
        access_expires REAL NOT NULL DEFAULT 0,
        folder TEXT NOT NULL DEFAULT 'INBOX',
        after TEXT NOT NULL DEFAULT 'keep',
        since_days INTEGER NOT NULL DEFAULT 0,
        verify INTEGER NOT NULL DEFAULT 1,
        ca_file TEXT NOT NULL DEFAULT '',
        paused INTEGER NOT NULL DEFAULT 0,
        created REAL NOT NULL,
        updated REAL NOT NULL
    );
    """,
    # An outbox may log in with the OAuth 2.0 grant of one of the tenant's channels (Microsoft
    # 365 takes no password over SMTP AUTH either).
    """
    ALTER TABLE outboxes ADD COLUMN oauth_channel TEXT NOT NULL DEFAULT '';
    """,
    # Drift of an active domain (mxdesk.dns.drift): its health, the consecutive checks that
    # found a record missing or different, since when and what, and whether the owner was told.
    """
    ALTER TABLE domains ADD COLUMN health TEXT NOT NULL DEFAULT 'ok'
        CHECK (health IN ('ok', 'drift', 'healing'));
    ALTER TABLE domains ADD COLUMN drift_misses INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE domains ADD COLUMN drift_since REAL;
    ALTER TABLE domains ADD COLUMN drift_detail TEXT NOT NULL DEFAULT '';
    ALTER TABLE domains ADD COLUMN last_recheck REAL;
    ALTER TABLE domains ADD COLUMN drift_notified INTEGER NOT NULL DEFAULT 0;
    """,
    # DKIM rotation (mxdesk.dns.rotation): a key is pending (published, not signing yet), active
    # (signing), retiring (published, no longer signing), revoked (published as an empty p=)
    # or removing (its record being deleted); the times each phase began. An own domain may
    # keep its keys behind CNAMEs into [dns] dkim_zone (dkim_delegated).
    """
    ALTER TABLE dkim_keys ADD COLUMN state TEXT NOT NULL DEFAULT 'active'
        CHECK (state IN ('pending', 'active', 'retiring', 'revoked', 'removing'));
    ALTER TABLE dkim_keys ADD COLUMN served_since REAL;
    ALTER TABLE dkim_keys ADD COLUMN activated REAL;
    ALTER TABLE dkim_keys ADD COLUMN retired REAL;
    ALTER TABLE dkim_keys ADD COLUMN note TEXT NOT NULL DEFAULT '';
    UPDATE dkim_keys SET activated = created;
    ALTER TABLE domains ADD COLUMN dkim_delegated INTEGER NOT NULL DEFAULT 0;
    """,
]
