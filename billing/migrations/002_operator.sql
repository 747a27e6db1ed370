-- Service Provider Mode: running totals for the operator's view, the rate group of each
-- charge, runtime settings, and the Stripe events received.

ALTER TABLE accounts
    ADD COLUMN total_granted   BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN total_purchased BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN total_spent     BIGINT NOT NULL DEFAULT 0;

UPDATE accounts SET
    total_granted = COALESCE((SELECT sum(amount) FROM credit_grants g
                              WHERE g.account_id = accounts.id), 0),
    total_purchased = COALESCE((SELECT sum(amount) FROM credit_grants g
                                WHERE g.account_id = accounts.id AND g.source = 'purchase'), 0),
    total_spent = COALESCE((SELECT sum(credits) FROM charges c
                            WHERE c.account_id = accounts.id), 0);

ALTER TABLE charges ADD COLUMN group_name TEXT NOT NULL DEFAULT 'default';
CREATE INDEX charges_time ON charges (ended_at, request_id);
CREATE INDEX accounts_group ON accounts (group_name);

-- Settings an operator changes at runtime; config.yaml gives the values until then.
CREATE TABLE settings (
    name        TEXT PRIMARY KEY,
    value       TEXT NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Every Stripe event received, once: what it was and what creditgate did with it.
CREATE TABLE stripe_events (
    event_id     TEXT PRIMARY KEY,
    type         TEXT NOT NULL,
    session_id   TEXT,
    account_ref  TEXT,                 -- the checkout's client_reference_id
    amount       BIGINT,               -- in the currency's minor unit
    currency     TEXT,
    credits      BIGINT,               -- micro-credits granted, if any
    status       TEXT NOT NULL,        -- granted, duplicate, pending, ignored, unknown_account, unconvertible
    detail       TEXT,
    received_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX stripe_events_status ON stripe_events (status, received_at);
