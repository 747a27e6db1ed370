-- The credit ledger. Amounts are BIGINT micro-credits (1 credit = 1,000,000).
-- Invariant: accounts.balance = sum(credit_grants.amount) - sum(charges.credits)
--            accounts.held    = sum(holds.amount)

CREATE TABLE accounts (
    id            BIGSERIAL PRIMARY KEY,
    name          TEXT NOT NULL UNIQUE,
    group_name    TEXT NOT NULL DEFAULT 'default',
    balance       BIGINT NOT NULL DEFAULT 0,
    held          BIGINT NOT NULL DEFAULT 0 CHECK (held >= 0),
    disabled      BOOLEAN NOT NULL DEFAULT false,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_used_at  TIMESTAMPTZ
);

CREATE TABLE api_keys (
    id          BIGSERIAL PRIMARY KEY,
    account_id  BIGINT NOT NULL REFERENCES accounts (id),
    key_hash    BYTEA NOT NULL UNIQUE,      -- SHA-256 of the key; the key itself is never stored
    prefix      TEXT NOT NULL,              -- enough to recognise a key in a listing
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    revoked_at  TIMESTAMPTZ
);
CREATE INDEX api_keys_account ON api_keys (account_id);

CREATE TABLE credit_grants (
    id          BIGSERIAL PRIMARY KEY,
    account_id  BIGINT NOT NULL REFERENCES accounts (id),
    amount      BIGINT NOT NULL,
    source      TEXT NOT NULL CHECK (source IN ('starter', 'purchase', 'admin')),
    reference   TEXT UNIQUE,                -- external reference: a grant happens at most once
    reason      TEXT,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX credit_grants_account ON credit_grants (account_id);

-- An open hold is a pending deduction: credit reserved for a request in flight.
CREATE TABLE holds (
    request_id  TEXT PRIMARY KEY,
    account_id  BIGINT NOT NULL REFERENCES accounts (id),
    amount      BIGINT NOT NULL CHECK (amount >= 0),
    model       TEXT NOT NULL,
    provider    TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at  TIMESTAMPTZ NOT NULL      -- renewed while its process serves it
);
CREATE INDEX holds_account ON holds (account_id);
CREATE INDEX holds_expiry ON holds (expires_at);

CREATE TABLE charges (
    request_id        TEXT PRIMARY KEY,    -- one charge per request, whatever retries happen
    account_id        BIGINT NOT NULL REFERENCES accounts (id),
    model             TEXT NOT NULL,
    provider          TEXT NOT NULL,
    upstream_model    TEXT NOT NULL DEFAULT '',
    input_tokens      BIGINT NOT NULL DEFAULT 0,
    output_tokens     BIGINT NOT NULL DEFAULT 0,
    cached_tokens     BIGINT NOT NULL DEFAULT 0,
    reasoning_tokens  BIGINT NOT NULL DEFAULT 0,
    images            BIGINT NOT NULL DEFAULT 0,
    credits           BIGINT NOT NULL,     -- what the caller paid
    provider_cost     BIGINT NOT NULL,     -- what the provider charges the operator (micro-units)
    price_input       TEXT NOT NULL DEFAULT '',  -- the rates that applied, per 1M tokens
    price_output      TEXT NOT NULL DEFAULT '',
    usage_source      TEXT NOT NULL CHECK (usage_source IN ('upstream', 'counted', 'none')),
    outcome           TEXT NOT NULL,
    http_status       INTEGER NOT NULL DEFAULT 0,
    started_at        TIMESTAMPTZ NOT NULL,
    ended_at          TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX charges_account_time ON charges (account_id, ended_at);
